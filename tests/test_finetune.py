"""Stage 5 `finetune`: the loop, dev-only selection, one test pass, determinism, outputs, CLI errors.

The release here is a tiny BertForPreTraining with random weights and the debug vocabulary's tokenizer, written
as `convert` lays a release out; the real pretrained-beats-scratch check is in test_finetune_learning.py.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("sklearn")

from kobert_pretrain.config import FinetuneConfig  # noqa: E402
from kobert_pretrain.errors import UserError  # noqa: E402
from kobert_pretrain.finetune import finetune, trainer  # noqa: E402
from kobert_pretrain.finetune.demo_task import demo_task_rows, write_demo_task  # noqa: E402
from kobert_pretrain.fsutil import sha256_file  # noqa: E402

from conftest import assert_one_line_error, run_cli  # noqa: E402


def make_release(vocab_dir, out, step=7):
    from transformers import BertConfig, BertForPreTraining

    from kobert_pretrain.convert.tokenizer import build_tokenizer
    from kobert_pretrain.vocab import Vocab

    torch.manual_seed(0)
    config = BertConfig(vocab_size=1000, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128, pad_token_id=1)
    BertForPreTraining(config).save_pretrained(str(out))
    build_tokenizer(Vocab.load(vocab_dir), 128).save_pretrained(str(out))
    (out / "conversion_report.json").write_text(json.dumps({"step": step, "checkpoint": "/runs/x/step-7"}))
    return out


@pytest.fixture(scope="module")
def release(tmp_path_factory, debug_vocab):
    return make_release(debug_vocab, tmp_path_factory.mktemp("ft") / "release")


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    return write_demo_task(tmp_path_factory.mktemp("ft") / "task")


def config(release, task, out, **kw):
    base = dict(release=str(release), out=str(out), train=str(task / "train.tsv"), dev=str(task / "dev.tsv"),
                test=str(task / "test.tsv"), epochs=3, batch_size=16, lr=1e-3, seeds=[1], cpu_threads=1)
    return FinetuneConfig(**{**base, **kw})


def test_demo_task_is_a_four_chapter_split():
    rows = demo_task_rows()
    assert {k: len(v) for k, v in rows.items()} == {"train": 162, "dev": 55, "test": 55}
    labels = {label for split in rows.values() for _, label in split}
    assert labels == {"rights", "assembly", "executive", "courts"}
    texts = [t for split in rows.values() for t, _ in split]
    assert len(set(texts)) == len(texts) == 272  # no sentence in two splits
    assert not [t for t in texts if re.match(r"제\s*\d+\s*조|[①-⑳]", t)]  # the numbers that give the chapter away
    assert demo_task_rows() == rows


def test_results_files_identity_and_structure(release, task, tmp_path):
    out = finetune(config(release, task, tmp_path / "out", seeds=[1, 2], from_scratch=True, epochs=2,
                          max_train_examples=64))
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "results.json", "results.md"]
    results = json.loads((out / "results.json").read_text())
    assert results["release"] == {"path": str(release.resolve()), "step": 7, "checkpoint": "/runs/x/step-7",
                                  "model_sha256": sha256_file(release / "model.safetensors")}
    assert results["task"] == "sentence-classification" and results["labels"] == ["assembly", "courts", "executive",
                                                                                  "rights"]
    assert results["files"]["train"]["examples"] == 64 and results["files"]["test"]["examples"] == 55
    assert set(results["models"]) == {"pretrained", "from_scratch"}
    for entry in results["models"].values():
        assert [s["seed"] for s in entry["seeds"]] == [1, 2]
        for run in entry["seeds"]:
            assert [e["epoch"] for e in run["epochs"]] == [1, 2]
            assert set(run["dev"]) == set(run["test"]) == {"accuracy", "macro_f1"}
        accuracies = [s["dev"]["accuracy"] for s in entry["seeds"]]
        assert entry["dev"]["accuracy"]["mean"] == pytest.approx(np.mean(accuracies))
        assert entry["dev"]["accuracy"]["sd"] == pytest.approx(np.std(accuracies, ddof=1))
        assert entry["chosen_epochs"] == [s["chosen_epoch"] for s in entry["seeds"]]
    table = (out / "results.md").read_text()
    assert "| pretrained, step 7 |" in table and "| from scratch (same architecture, random init) |" in table
    assert json.loads((out / "config.json").read_text())["seeds"] == [1, 2]


def test_dev_chooses_the_epoch_and_test_is_scored_once_with_that_state(release, task, tmp_path, monkeypatch):
    calls = []
    real_predict = trainer.predict

    def spy(model, encoded, *args, **kw):
        fingerprint = float(sum(p.detach().double().sum() for p in model.parameters()))
        calls.append((len(encoded), fingerprint))
        return real_predict(model, encoded, *args, **kw)

    monkeypatch.setattr(trainer, "predict", spy)
    # A fresh task whose dev and test files differ in size, so the calls tell which file was scored.
    dev_rows = (task / "dev.tsv").read_text().splitlines()
    (tmp_path / "dev.tsv").write_text("\n".join(dev_rows[:41]) + "\n")
    out = finetune(config(release, task, tmp_path / "out", dev=str(tmp_path / "dev.tsv"), epochs=4, seeds=[3],
                          max_train_examples=64))
    run = json.loads((out / "results.json").read_text())["models"]["pretrained"]["seeds"][0]
    assert [n for n, _ in calls] == [40, 40, 40, 40, 55]  # dev after each epoch, test once at the end
    accuracies = [e["dev"]["accuracy"] for e in run["epochs"]]
    assert run["chosen_epoch"] == int(np.argmax(accuracies)) + 1  # the first best epoch on dev
    assert run["dev"] == run["epochs"][run["chosen_epoch"] - 1]["dev"]
    assert calls[-1][1] == calls[run["chosen_epoch"] - 1][1]  # the test saw the chosen epoch's weights


def test_same_seed_same_numbers_other_seed_other_numbers(release, task, tmp_path):
    runs = [json.loads((finetune(config(release, task, tmp_path / name, seeds=[seed], epochs=2, max_train_examples=64))
                        / "results.json").read_text())["models"]["pretrained"]["seeds"][0]
            for name, seed in (("a", 5), ("b", 5), ("c", 6))]
    for run in runs:
        run.pop("train_examples_per_s")
    assert runs[0] == runs[1]
    assert runs[0]["epochs"][0]["train_loss"] != runs[2]["epochs"][0]["train_loss"]


def test_a_learnable_task_is_learned_from_scratch(release, tmp_path):
    """Label = whether the sentence mentions 국회: the loop must fit that (chance is 0.5 on a balanced dev)."""
    rng = np.random.default_rng(0)
    words = ["대통령은", "법률로", "국민은", "정한다", "법원은", "권리를", "가진다", "의무를", "진다", "국가는"]
    lines = ["id\tdocument\tlabel"]
    for i in range(400):
        sentence = list(rng.choice(words, 5))
        label = i % 2
        if label:
            sentence.insert(int(rng.integers(0, 5)), "국회는")
        lines.append(f"{i}\t{' '.join(sentence)}\t{label}")
    (tmp_path / "train.tsv").write_text("\n".join(lines[:301]) + "\n")
    (tmp_path / "dev.tsv").write_text("\n".join([lines[0]] + lines[301:]) + "\n")
    cfg = config(release, tmp_path, tmp_path / "out", test="", epochs=4, lr=2e-3, seeds=[1], from_scratch=True)
    results = json.loads((finetune(cfg) / "results.json").read_text())
    for entry in results["models"].values():
        assert entry["dev"]["accuracy"]["mean"] >= 0.9, entry["seeds"][0]["epochs"]
        assert entry["test"] is None


def test_regression_task_runs_and_reports_correlations(release, tmp_path):
    rows = ["score\tsentence1\tsentence2"]
    for i in range(40):
        rows.append(f"{i % 6}.0\t국회는 법률을 정한다 {i}\t대통령은 법률을 공포한다 {i % 6}")
    (tmp_path / "sts.tsv").write_text("\n".join(rows) + "\n")
    sts = str(tmp_path / "sts.tsv")
    results = json.loads((finetune(config(release, tmp_path, tmp_path / "out", train=sts, dev=sts, test="",
                                          epochs=1)) / "results.json").read_text())
    assert results["task"] == "pair-regression" and results["labels"] is None
    assert set(results["models"]["pretrained"]["dev"]) == {"pearson", "spearman"}


def test_refusals_write_nothing(release, task, tmp_path):
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="already holds files"):
        finetune(config(release, task, taken))
    assert [p.name for p in taken.iterdir()] == ["notes.txt"]
    with pytest.raises(UserError, match="has no config.json, model.safetensors, tokenizer.json; give the --out of"):
        finetune(config(tmp_path, task, tmp_path / "o1"))
    with pytest.raises(UserError, match="max_seq_length=512: the release has 128 positions"):
        finetune(config(release, task, tmp_path / "o2", max_seq_length=512))
    with pytest.raises(UserError, match=r"invalid config \(2 problems\): finetune.out: .*; finetune.train"):
        finetune(FinetuneConfig(release=str(release), dev=str(task / "dev.tsv")))
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o2").exists()


def test_cli_finetune_end_to_end(release, task, tmp_path):
    out = tmp_path / "cli"
    result = run_cli("finetune", release, "--train", task / "train.tsv", "--dev", task / "dev.tsv", "--out", out,
                     "--epochs", "1", "--from-scratch", "--finetune.cpu_threads=1", "--finetune.max_train_examples=64")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(out)
    lines = [ln for ln in result.stderr.splitlines() if ln.startswith("finetune: ")]
    assert len(lines) == 2 and lines[0].startswith("finetune: pretrained, step 7: dev accuracy ")
    assert lines[1].startswith("finetune: from scratch (same architecture, random init): dev accuracy ")
    assert json.loads((out / "results.json").read_text())["files"]["train"]["examples"] == 64
    bad_dev = tmp_path / "dev.tsv"
    bad_dev.write_text("id\tdocument\tlabel\n1\t국회는 법률을 정한다.\tparliament\n")
    result = run_cli("finetune", release, "--train", task / "train.tsv", "--dev", bad_dev, "--out", tmp_path / "x")
    assert_one_line_error(result, f"{bad_dev}: line 2: label 'parliament' is not one of the training labels "
                                  "(assembly, courts, executive, rights)")
    assert not (tmp_path / "x").exists()
