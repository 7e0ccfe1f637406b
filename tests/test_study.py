"""`kobert-pretrain study vocab`: bits per character, tokenization statistics, and a whole study end to end.

The end-to-end study runs two small vocabularies (1,200 and 1,600 pieces: the fairy tale of the shared corpus
needs 1,135 for its characters at coverage 0.9995) through the debug recipe, 20 steps each, with a short
fine-tune on the demo task. It is run by the CLI as a user would, first with one size, then with both (the
first candidate re-used), then once more after deleting the second candidate's release, measurements and
last checkpoint, as a study killed in training leaves it (resumed == uninterrupted).
"""

from __future__ import annotations

import json
import math
import shutil
import unicodedata

import numpy as np
import pytest

from kobert_pretrain.config import VocabConfig
from kobert_pretrain.study.report import at_equal_text, bits_at
from kobert_pretrain.study.tokenization import tokenization_stats
from kobert_pretrain.vocab import WORD_START, Vocab, build_vocab

from conftest import ROOT, SHARED_CORPUS, assert_one_line_error, final_params, run_cli  # noqa: E402

FAIRY_TALE = SHARED_CORPUS / "boddari" / "fairytale01.txt"
SIZES = (1200, 1600)
STEPS = 20


# ---------------------------------------------------------------------------------------- tokenization


def test_two_vocabularies_count_the_same_characters(debug_vocab, tmp_path, demo_corpus):
    """Over the same text, vocabularies of other sizes and types give the same character count: the text's."""
    small = Vocab.load(debug_vocab)
    other = Vocab.load(build_vocab(VocabConfig(input=[str(demo_corpus)], out=str(tmp_path / "bpe"), vocab_size=1500,
                                               model_type="bpe", num_threads=1)))
    sentences = [s for s in demo_corpus.read_text(encoding="utf-8").splitlines() if s][:300]
    counts = [tokenization_stats(v, sentences, 64) for v in (small, other)]
    assert counts[0]["characters"] == counts[1]["characters"]
    assert counts[0]["tokens"] != counts[1]["tokens"]
    normalized = sum(len(unicodedata.normalize("NFKC", s).replace(" ", "")) for s in sentences)
    assert abs(counts[0]["characters"] - normalized) <= counts[0]["unk_rate"] * counts[0]["tokens"] * 3


def test_tokenization_statistics_exact(debug_vocab):
    vocab = Vocab.load(debug_vocab)
    sentences = ["대한민국은 민주공화국이다.", "모든 국민은 법 앞에 평등하다."]
    stats = tokenization_stats(vocab, sentences, 64)
    pieces = [vocab.sp.encode(s, out_type=str) for s in sentences]
    tokens = sum(map(len, pieces))
    chars = sum(len(p.replace(WORD_START, "")) for ps in pieces for p in ps)
    assert stats["tokens"] == tokens and stats["eojeols"] == 2 + 5 and stats["characters"] == chars
    assert stats["pieces_per_eojeol"] == tokens / 7 and stats["pieces_per_character"] == tokens / chars
    syllables = sum(len(p.replace(WORD_START, "")) == 1 and "가" <= p.replace(WORD_START, "") <= "힣"
                    for ps in pieces for p in ps)
    assert stats["single_syllable_token_share"] == syllables / tokens
    assert stats["characters_per_instance"] == 61 * chars / tokens
    assert stats["sentence_tokens"]["max"] == max(map(len, pieces)) and stats["sentences_longer_than_instance"] == 0
    ids = [i for s in sentences for i in vocab.encode(s)]
    p = np.array([ids.count(i) for i in sorted(set(ids))]) / len(ids)
    assert stats["unigram_bits_per_char"] == pytest.approx(-(p * np.log2(p)).sum() * tokens / chars, rel=1e-12)


def test_learning_curves_are_compared_at_equal_text():
    curve = lambda *points: {"learning_curve": [{"characters_seen": x, "bits_per_char": y} for x, y in points],  # noqa
                             "final": {"characters_seen": points[-1][0]}}
    a, b = curve((100, 6.0), (300, 4.0)), curve((150, 5.0), (250, 3.0), (500, 2.0))
    assert at_equal_text([a, b]) == 300
    assert bits_at(a, 300) == 4.0 and bits_at(b, 300) == pytest.approx(2.8, rel=1e-15)  # 3.0 at 250, 2.0 at 500
    assert bits_at(b, 100) is None  # before its first evaluation: not extrapolated


# ---------------------------------------------------------------------------------------- the whole study


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    if not FAIRY_TALE.is_file():
        pytest.skip("../shared/corpus is not present")
    root = tmp_path_factory.mktemp("study")
    task = run_cli("demo-task", "--out", root / "task")
    assert task.returncode == 0, task.stderr
    out = root / "study"

    def study_vocab(*sizes: int):
        result = run_cli("study", "vocab", "--config", ROOT / "configs" / "debug.toml", "--input", FAIRY_TALE,
                         "--out", out, "--sizes", ",".join(map(str, sizes)), "--steps", STEPS,
                         "--train", root / "task" / "train.tsv", "--dev", root / "task" / "dev.tsv",
                         "--seeds", "1,2", "--epochs", "1", "--study.heldout_every=10", "--study.latency_repeats=3",
                         "--study.evaluations=4")
        assert result.returncode == 0, result.stderr[-3000:]
        return result

    first = study_vocab(SIZES[0])
    kept = (out / "candidates" / f"unigram-{SIZES[0]}" / "candidate.json").stat().st_mtime_ns
    second = study_vocab(*SIZES)
    return {"out": out, "first": first, "second": second, "kept_mtime": kept, "again": study_vocab}


def _numbers(obj, where=""):
    """Every number in a JSON tree, with its path."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _numbers(v, f"{where}.{k}")
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _numbers(v, f"{where}[{i}]")
    elif isinstance(obj, (int, float)) and not isinstance(obj, bool):
        yield where, obj


def test_study_writes_every_field_finite(study):
    out = study["out"]
    document = json.loads((out / "study.json").read_text())
    assert [c["name"] for c in document["candidates"]] == [f"unigram-{s}" for s in SIZES]
    for c in document["candidates"]:
        assert c["vocab_size"] == int(c["name"].split("-")[1]) and c["steps"] == STEPS
        for section in ("tokenization", "cost", "final", "downstream"):
            assert c[section], (c["name"], section)
        assert [p["step"] for p in c["learning_curve"]] == [5, 10, 15, 20]
        seen = [p["characters_seen"] for p in c["learning_curve"]]
        assert seen == sorted(seen) and seen[0] > 0
        for key in ("pieces_per_eojeol", "pieces_per_character", "unk_rate", "single_syllable_token_share",
                    "characters_per_instance", "unigram_bits_per_char"):
            assert key in c["tokenization"]
        for key in ("parameters", "vocabulary_share", "sequences_per_s", "tokens_per_s", "characters_per_s",
                    "release_bytes", "onnx_encoder"):
            assert key in c["cost"]
        assert c["downstream"]["pretrained"]["dev"]["accuracy"]["n"] == 2
    for path, value in _numbers(document):
        assert math.isfinite(value), path
    rows = document["comparison"]["rows"]
    assert all(r["bits_per_char_at_equal_text"] is not None and r["downstream_dev"]["pretrained"] for r in rows)
    assert rows[0]["parameters"] < rows[1]["parameters"]  # the larger vocabulary has the larger embedding
    table = (out / "study.md").read_text()
    assert all(f"| unigram-{s} |" in table for s in SIZES) and "bits/char at equal text" in table
    for png in ("bits_per_char.png", "cost_quality.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bits_per_char_recounted_independently(study):
    """The run's eval_masked_chars, recounted from the eval shards through the loader and the piece strings."""
    from kobert_pretrain.data import LoaderConfig, PretrainingLoader
    from kobert_pretrain.shards.format import ShardSet

    where = study["out"] / "candidates" / f"unigram-{SIZES[1]}"
    vocab = Vocab.load(where / "vocab")
    shard_set = ShardSet.open(where / "eval_shards")
    assert shard_set.index["whole_word_mask"] is True
    record = [json.loads(line) for line in (where / "run" / "metrics.jsonl").read_text().splitlines()
              if json.loads(line)["kind"] == "eval"][-1]
    loader = PretrainingLoader(shard_set, LoaderConfig(16, seed=0, bucket_window=1, prefetch=0),
                               spec=shard_set.masking_spec(vocab))
    chars = tokens = 0
    for r in range(loader.rounds_per_epoch):
        batch = loader.batch_at(0, r)
        for ids, weights in zip(batch["masked_ids"], batch["masked_weights"]):
            for i, w in zip(ids, weights):
                if w:
                    piece = vocab.sp.id_to_piece(int(i))
                    chars += 1 if piece == "[UNK]" else len(piece.replace(WORD_START, ""))
                    tokens += 1
    assert record["eval_masked_chars"] == chars and record["eval_masked_tokens"] == tokens
    assert record["eval_mlm_bits_per_char"] == pytest.approx(
        record["eval_mlm_loss"] * tokens / chars / math.log(2), rel=1e-12)


def test_candidate_directories_are_ordinary_runs(study):
    from transformers import AutoTokenizer, BertForMaskedLM

    from kobert_pretrain.checkpoint import CheckpointManager

    where = study["out"] / "candidates" / f"unigram-{SIZES[0]}"
    assert CheckpointManager(where / "run").latest().step == STEPS
    assert json.loads((where / "run" / "config.json").read_text())["train"]["max_steps"] == STEPS
    inspect = run_cli("inspect", where / "shards", "--json", "--num", "1")
    assert inspect.returncode == 0 and json.loads(inspect.stdout)["num_instances"] > 0, inspect.stderr
    tokenizer = AutoTokenizer.from_pretrained(where / "release")
    model = BertForMaskedLM.from_pretrained(where / "release")
    assert model.config.vocab_size == SIZES[0] == len(tokenizer)
    assert (where / "finetune" / "results.json").is_file()


def test_a_second_run_reuses_finished_candidates(study):
    out, second = study["out"], study["second"].stderr
    assert (out / "candidates" / f"unigram-{SIZES[0]}" / "candidate.json").stat().st_mtime_ns == study["kept_mtime"]
    assert f"unigram-{SIZES[0]}: vocabulary" not in second and f"unigram-{SIZES[1]}: vocabulary" in second


def test_a_killed_study_resumes_to_the_same_numbers(study):
    out = study["out"]
    where = out / "candidates" / f"unigram-{SIZES[1]}"
    before = json.loads((where / "candidate.json").read_text())
    params = final_params(where / "run")
    # What a study killed during the second candidate's training leaves: no record, no release, no final step.
    (where / "candidate.json").unlink()
    for name in ("release", "cost", "finetune"):
        shutil.rmtree(where / name)
    last = sorted((where / "run" / "checkpoints").glob("step-*"))[-1]
    assert last.name == f"step-{STEPS:08d}"
    shutil.rmtree(last)
    result = study["again"](*SIZES)
    assert f"unigram-{SIZES[1]}: train" in result.stderr and f"unigram-{SIZES[1]}: vocabulary" not in result.stderr
    assert f"unigram-{SIZES[0]}: train" not in result.stderr
    after = json.loads((where / "candidate.json").read_text())
    resumed = final_params(where / "run")
    assert resumed.keys() == params.keys() and all(np.array_equal(resumed[k], params[k]) for k in params)
    assert after["learning_curve"] == before["learning_curve"] and after["tokenization"] == before["tokenization"]
    assert after["downstream"]["pretrained"] == before["downstream"]["pretrained"]


def test_a_study_with_other_settings_is_refused(study):
    result = run_cli("study", "vocab", "--config", ROOT / "configs" / "debug.toml", "--input", FAIRY_TALE,
                     "--out", study["out"], "--sizes", str(SIZES[0]), "--steps", STEPS + 1,
                     "--study.heldout_every=10")
    assert_one_line_error(result, "study.steps", "other settings")


def test_study_input_mistakes_are_one_line_errors(tmp_path):
    result = run_cli("study", "vocab", "--input", tmp_path / "missing.txt", "--out", tmp_path / "s")
    assert_one_line_error(result, "missing.txt")
    few = tmp_path / "few.txt"
    few.write_text("한 문장.\n\n두 문장.\n", encoding="utf-8")
    result = run_cli("study", "vocab", "--config", ROOT / "configs" / "debug.toml", "--input", few,
                     "--out", tmp_path / "s2", "--sizes", "1000")
    assert_one_line_error(result, "2 document(s)", "heldout_every")
    assert not (tmp_path / "s2" / "data").exists()
    (tmp_path / "file").write_text("x")
    result = run_cli("study", "vocab", "--input", few, "--out", tmp_path / "file")
    assert_one_line_error(result, "is a file")
    result = run_cli("study", "vocab", "--input", few, "--out", tmp_path / "s3", "--sizes", "4,8002",
                     "--model-type", "wordpiece")
    assert_one_line_error(result, "study.sizes", "study.model_types")
