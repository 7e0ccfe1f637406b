"""Config: TOML files load, CLI beats TOML beats defaults, every problem is reported at once."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kobert_pretrain.config import SECTIONS, VocabConfig, config_hash, field_help, load_config
from kobert_pretrain.errors import ConfigError, UserError

from conftest import ROOT, run_cli

CONFIGS = sorted((ROOT / "configs").glob("*.toml"))


def test_configs_exist():
    assert {p.name for p in CONFIGS} >= {"debug.toml", "base.toml"}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_config_file_loads_and_validates(path):
    cfg = load_config(path)
    # Paths are per run, not per config file: with them given, every section is valid.
    paths = ["--vocab.input=corpus.txt", "--vocab.out=out", "--shards.input=corpus.txt", "--shards.vocab=v",
             "--shards.out=s", "--train.shards=s", "--train.out=run", "--convert.source=run",
             "--convert.out=release", "--prepare.input=raw", "--prepare.out=corpus", "--study.input=corpus.txt",
             "--study.out=study"]
    if cfg.train.phase2_start_step:
        paths.append("--train.phase2_shards=s512")
    cfg = load_config(path, paths, validate=tuple(SECTIONS))
    assert cfg.vocab.vocab_size >= 6


def test_base_config_is_kobert_like():
    cfg = load_config(ROOT / "configs" / "base.toml")
    assert cfg.vocab.vocab_size == 8002
    assert cfg.vocab.model_type == "unigram"
    assert cfg.vocab.character_coverage == 0.9995


def test_precedence_cli_over_toml_over_defaults(tmp_path):
    toml = tmp_path / "c.toml"
    toml.write_text('[vocab]\nvocab_size = 500\nmodel_type = "bpe"\n')
    cfg = load_config(toml, ["--vocab.vocab_size=700"])
    assert cfg.vocab.vocab_size == 700  # CLI
    assert cfg.vocab.model_type == "bpe"  # TOML
    assert cfg.vocab.character_coverage == VocabConfig().character_coverage  # default
    cfg = load_config(toml, ["--vocab.vocab_size=900"], flags={"vocab.vocab_size": "800", "vocab.seed": "7"})
    assert cfg.vocab.vocab_size == 900 and cfg.vocab.seed == 7


def test_cli_value_types():
    cfg = load_config(None, [
        "--vocab.shuffle_input_sentence=false", "--vocab.character_coverage=1", "--vocab.input=a.txt,b/*.txt",
        "--vocab.input_sentence_size=1_000_000",
    ])
    assert cfg.vocab.shuffle_input_sentence is False
    assert cfg.vocab.character_coverage == 1.0
    assert cfg.vocab.input == ["a.txt", "b/*.txt"]
    assert cfg.vocab.input_sentence_size == 1_000_000


def test_all_problems_reported_together(tmp_path):
    toml = tmp_path / "bad.toml"
    toml.write_text('[vocab]\nvocab_size = 3\nmodel_type = "wordpiece"\nnot_a_field = 1\n[nonsense]\nx = 1\n')
    with pytest.raises(ConfigError) as info:
        load_config(toml, ["--vocab.character_coverage=2", "--vocab.seed=abc"], validate=("vocab",))
    problems = info.value.problems
    expected = [
        "unknown field vocab.not_a_field",
        "unknown section [nonsense]",
        "vocab.seed: expected an integer, got 'abc'",
        "vocab.input: give at least one --input",
        "vocab.out: give an output directory",
        "vocab.vocab_size=3: must be > 5",
        "vocab.model_type='wordpiece': must be one of unigram, bpe",
        "vocab.character_coverage=2.0: must be in [0.5, 1]",
    ]
    for text in expected:
        assert any(p.startswith(text) for p in problems), (text, problems)
    assert len(problems) == len(expected)
    assert "8 problems" in str(info.value)


def test_toml_type_errors_are_reported(tmp_path):
    toml = tmp_path / "t.toml"
    toml.write_text('[vocab]\nvocab_size = "big"\nshuffle_input_sentence = 1\n')
    with pytest.raises(ConfigError) as info:
        load_config(toml)
    assert info.value.problems == [
        "vocab.vocab_size: expected an integer, got 'big'",
        "vocab.shuffle_input_sentence: expected true or false, got 1",
    ]


def test_bad_files_and_overrides(tmp_path):
    with pytest.raises(UserError, match="config file not found"):
        load_config(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[vocab\n")
    with pytest.raises(UserError, match="is not valid TOML"):
        load_config(bad)
    with pytest.raises(UserError, match="write --section.field=value"):
        load_config(None, ["--vocab.vocab_size"])


def test_config_hash_tracks_content():
    a, b = VocabConfig(), VocabConfig()
    assert config_hash(a) == config_hash(b) and len(config_hash(a)) == 16
    b.vocab_size += 1
    assert config_hash(a) != config_hash(b)


def test_every_field_is_documented():
    for name, cls in SECTIONS.items():
        for key, _, _, help_text in field_help(cls):
            assert help_text, f"{name}.{key} has no help text"


def test_cli_reports_all_problems_on_one_line(tmp_path):
    result = run_cli("vocab", "--out", tmp_path / "v", "--vocab-size", "2", "--vocab.model_type=x")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("kobert-pretrain: error: invalid config (3 problems): ")
    assert "vocab.input" in lines[0] and "vocab.vocab_size=2" in lines[0] and "vocab.model_type='x'" in lines[0]
    assert not (tmp_path / "v").exists()


def test_cli_help_lists_every_field():
    result = run_cli("vocab", "--help")
    assert result.returncode == 0
    for key, *_ in field_help(VocabConfig):
        assert f"--vocab.{key}" in result.stdout


def test_resolved_config_written_beside_output(debug_vocab):
    resolved = json.loads(Path(debug_vocab, "config.json").read_text())
    assert resolved == {**resolved, "vocab_size": 1000, "seed": 42, "model_type": "unigram"}


MISSING = {
    "prepare": ["prepare.input: give at least one --input file, glob or directory",
                "prepare.out: give an output directory with --out"],
    "vocab": ["vocab.input: give at least one --input file, glob or directory",
              "vocab.out: give an output directory with --out"],
    "shards": ["shards.input: give at least one --input file, glob or directory",
               "shards.vocab: give the vocabulary directory with --vocab",
               "shards.out: give an output directory with --out"],
    "train": ["train.shards: give the shard directory with --shards", "train.out: give a run directory with --out"],
    "convert": ["convert.source: give a checkpoint or run directory",
                "convert.out: give an output directory with --out"],
    "study": ["study.input: give at least one --input file, glob or directory",
              "study.out: give a study directory with --out",
              "study.sizes: give at least one size, e.g. --sizes 4000,8002"],
}


@pytest.mark.parametrize("section", sorted(MISSING))
def test_missing_paths_are_named_first_in_field_order(section):
    cfg = SECTIONS[section]()
    if section == "study":
        cfg.sizes = []
    problems = cfg.validate()
    assert problems[:len(MISSING[section])] == MISSING[section]
    assert not any(p.endswith(("--out", "--vocab", "--shards", "directory")) for p in problems[len(MISSING[section]):])


def test_finetune_and_evaluate_bounds_are_checked_and_shown():
    from kobert_pretrain.config import EvaluateConfig, FinetuneConfig

    bad = FinetuneConfig(lr=0.0, warmup_ratio=1.0, clip_grad_norm=-1.0, epochs=0, device="gpu", cpu_threads=-2)
    assert bad.validate() == [
        "finetune.epochs=0: must be >= 1", "finetune.lr=0.0: must be > 0",
        "finetune.warmup_ratio=1.0: must be in [0, 1)",
        "finetune.clip_grad_norm=-1.0: must be >= 0", "finetune.device='gpu': must be one of auto, cpu, cuda",
        "finetune.cpu_threads=-2: must be >= 0 (0 = torch's default)"]
    assert EvaluateConfig(every=-1, steps=[5]).validate() == [
        "evaluate.every=-1: must be >= 0", "evaluate: give --every K or --steps N,M,..., not both"]
    help_text = {name: text for name, _, _, text in field_help(FinetuneConfig)}
    assert help_text["warmup_ratio"].endswith("[in [0, 1)]") and help_text["lr"].endswith("[> 0]")
