"""Stage 5 `evaluate`: checkpoints of a real run converted and fine-tuned; re-runs skip; vanished ones warn."""

from __future__ import annotations

import json
import shutil

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("matplotlib")

from kobert_pretrain.checkpoint import CheckpointManager  # noqa: E402
from kobert_pretrain.config import EvaluateConfig, FinetuneConfig  # noqa: E402
from kobert_pretrain.errors import UserError  # noqa: E402
from kobert_pretrain.finetune import checkpoint_eval as evaluate_module  # noqa: E402
from kobert_pretrain.finetune import evaluate  # noqa: E402
from kobert_pretrain.finetune.checkpoint_eval import select_steps, write_summary  # noqa: E402
from kobert_pretrain.finetune.demo_task import write_demo_task  # noqa: E402
from kobert_pretrain.finetune.metrics import summarize  # noqa: E402
from kobert_pretrain.train import train  # noqa: E402

from conftest import assert_one_line_error, read_metrics, run_cli, train_config  # noqa: E402


@pytest.fixture(scope="module")
def run(tmp_path_factory, debug_shards):
    run = tmp_path_factory.mktemp("ev") / "run"
    train(train_config(debug_shards, run, f"--train.eval_shards={debug_shards}", "--train.max_steps=20",
                       "--train.lr=1e-2", "--train.eval_batches=2", "--train.eval_interval=10",
                       "--checkpoint.interval=10"))
    return run


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    return write_demo_task(tmp_path_factory.mktemp("ev") / "task")


def recipe(task, **kw):
    base = dict(train=str(task / "train.tsv"), dev=str(task / "dev.tsv"), epochs=1, batch_size=16, lr=1e-3,
                seeds=[1, 2], from_scratch=True, max_train_examples=48, cpu_threads=1)
    return FinetuneConfig(**{**base, **kw})


@pytest.mark.slow  # about 2.5 minutes on 2 busy cores: a training run, 3 conversions, 6 small fine-tunes
def test_evaluate_curve_rerun_and_vanished_checkpoints(run, task, tmp_path, monkeypatch, capsys):
    out = tmp_path / "ev"
    assert evaluate(EvaluateConfig(run_dir=str(run), out=str(out), every=10), recipe(task)) == out
    summary = json.loads((out / "evaluate.json").read_text())
    manager = CheckpointManager(run)
    states = {s: manager.verify(run / "checkpoints" / f"step-{s:08d}").training_state() for s in (10, 20)}
    losses = {r["step"]: r["eval_mlm_loss"] for r in read_metrics(run, "eval")}
    assert [p["step"] for p in summary["points"]] == [10, 20]
    for point in summary["points"]:
        assert point["tokens_seen"] == states[point["step"]]["tokens_seen"] > 0
        assert point["eval_mlm_loss"] == losses[point["step"]]
        assert point["dev"]["accuracy"]["n"] == 2 and point["test"] is None
    assert summary["points"][0]["model_sha256"] != summary["points"][1]["model_sha256"]
    assert summary["from_scratch"]["dev"]["accuracy"]["n"] == 2 and summary["primary_metric"] == "accuracy"
    assert summary["heldout_mlm_loss"] == [{"step": s, "eval_mlm_loss": v} for s, v in sorted(losses.items())]
    assert (out / "evaluate.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in out.iterdir()) == ["evaluate.json", "evaluate.png", "from_scratch",
                                                     "step-00000010", "step-00000020"]
    step10 = json.loads((out / "step-00000010" / "results.json").read_text())
    assert step10["pretraining"]["step"] == 10 and step10["release"]["step"] == 10
    assert list(step10["models"]) == ["pretrained"]

    # Re-running converts nothing: every step and the baseline are there.
    def no_conversion(*args):
        raise AssertionError("converted again")

    monkeypatch.setattr(evaluate_module, "_convert", no_conversion)
    evaluate(EvaluateConfig(run_dir=str(run), out=str(out), every=10), recipe(task))
    assert json.loads((out / "evaluate.json").read_text()) == summary

    # Another recipe into the same directory is refused, naming what differs.
    with pytest.raises(UserError, match=r"was evaluated with another recipe \(different finetune.epochs, "
                                         r"finetune.seeds\)"):
        evaluate(EvaluateConfig(run_dir=str(run), out=str(out)), recipe(task, epochs=2, seeds=[1]))

    # Retention deletes step 10 while it is converted: a warning, the step skipped, the rest kept.
    shutil.rmtree(out / "step-00000010")
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    monkeypatch.undo()  # the real conversion again

    def retention_meanwhile(checkpoint, release, vocab, manager):
        shutil.rmtree(checkpoint)
        return original(checkpoint, release, vocab, manager)

    original = evaluate_module._convert
    monkeypatch.setattr(evaluate_module, "_convert", retention_meanwhile)
    capsys.readouterr()
    evaluate(EvaluateConfig(run_dir=str(copy), out=str(out), steps=[10, 20]), recipe(task))
    err = capsys.readouterr().err
    assert f"evaluate: checkpoint {copy / 'checkpoints' / 'step-00000010'} was deleted while it was converted" in err
    assert [p["step"] for p in json.loads((out / "evaluate.json").read_text())["points"]] == [20]
    assert not list(out.glob(".release-*"))

    # Gone before evaluate starts: a warning for the requested step; none of them left is an error.
    evaluate(EvaluateConfig(run_dir=str(copy), out=str(out), steps=[10, 20]), recipe(task))
    assert f"{copy} has no checkpoint at step 10 (deleted by retention?); skipped" in capsys.readouterr().err
    with pytest.raises(UserError, match=r"has no checkpoint at step\(s\) 10, 15 \(kept: 20\)"):
        evaluate(EvaluateConfig(run_dir=str(copy), out=str(out), steps=[10, 15]), recipe(task))


def test_evaluate_cli_errors(tmp_path, task):
    result = run_cli("evaluate", tmp_path / "nothing", "--train", task / "train.tsv", "--dev", task / "dev.tsv")
    assert_one_line_error(result, f"{tmp_path / 'nothing'} is not a run directory of `kobert-pretrain train`")
    result = run_cli("evaluate", tmp_path, "--every", "10", "--steps", "10,20")
    assert_one_line_error(result, "give --every K or --steps N,M,..., not both")
    assert not (tmp_path / "evaluate").exists()


def test_step_selection(tmp_path, capsys):
    for step in (10, 20, 30, 40):
        (tmp_path / "checkpoints" / f"step-{step:08d}").mkdir(parents=True)
    (tmp_path / "checkpoints" / "step-00000050.tmp-123").mkdir()
    (tmp_path / "checkpoints" / "step-00000060.damaged").mkdir()
    assert select_steps(tmp_path, EvaluateConfig()) == [10, 20, 30, 40]
    assert select_steps(tmp_path, EvaluateConfig(every=20)) == [20, 40]
    assert select_steps(tmp_path, EvaluateConfig(steps=[40, 5, 10])) == [10, 40]
    assert "has no checkpoint at step 5 (deleted by retention?); skipped" in capsys.readouterr().err
    with pytest.raises(UserError, match=r"has no checkpoint at a multiple of 25 \(kept: 10, 20, 30, 40\)"):
        select_steps(tmp_path, EvaluateConfig(every=25))


def test_summary_and_plot_from_step_results(tmp_path):
    run, out = tmp_path / "run", tmp_path / "out"
    run.mkdir()
    records = [{"kind": "train", "step": 10, "mlm_loss": 7.0}, {"kind": "eval", "step": 10, "eval_mlm_loss": 6.5},
               {"kind": "eval", "step": 20, "eval_mlm_loss": 6.0}, {"kind": "eval", "step": 30, "eval_mlm_loss": None}]
    (run / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n{\"kind\": \"ev")  # cut short
    for step, tokens, accuracies in ((10, 1000, [0.6, 0.7]), (20, 2100, [0.7, 0.8])):
        seeds = [{"accuracy": a, "macro_f1": a - 0.1} for a in accuracies]
        results = {"task": "sentence-classification", "metrics": ["accuracy", "macro_f1"],
                   "release": {"model_sha256": f"sha{step}"}, "pretraining": {"step": step, "tokens_seen": tokens},
                   "models": {"pretrained": {"dev": summarize(seeds), "test": None, "chosen_epochs": [1, 2]}}}
        (out / f"step-{step:08d}").mkdir(parents=True)
        (out / f"step-{step:08d}" / "results.json").write_text(json.dumps(results))
    (out / "from_scratch").mkdir()
    baseline = {"dev": summarize([{"accuracy": 0.5, "macro_f1": 0.4}] * 2), "test": None, "chosen_epochs": [1, 1]}
    (out / "from_scratch" / "results.json").write_text(json.dumps({"models": {"from_scratch": baseline}}))
    summary = write_summary(out, run)
    assert summary == json.loads((out / "evaluate.json").read_text())
    assert [(p["step"], p["tokens_seen"], p["eval_mlm_loss"]) for p in summary["points"]] == [(10, 1000, 6.5),
                                                                                               (20, 2100, 6.0)]
    assert summary["points"][1]["dev"]["accuracy"]["mean"] == pytest.approx(0.75)
    assert summary["from_scratch"]["dev"]["accuracy"]["mean"] == 0.5 and summary["primary_metric"] == "accuracy"
    assert summary["heldout_mlm_loss"] == [{"step": 10, "eval_mlm_loss": 6.5}, {"step": 20, "eval_mlm_loss": 6.0}]
    assert (out / "evaluate.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
