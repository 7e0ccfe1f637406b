"""Stage 3 on CPU, one process: golden losses, learning, exact resume, phases, eval, validation."""

from __future__ import annotations

import json

import numpy as np
import pytest

from kobert_pretrain.errors import ConfigError, UserError
from kobert_pretrain.train import Trainer, train

from conftest import final_params, read_metrics, run_cli, shards_config, train_config

# configs/debug.toml (2 x 64 model, LAMB lr 5e-3, dropout 0.1, micro batch 16, seed 0) on the debug demo
# shards, one process, CPU: MLM and NSP loss of each of the first 6 steps (log.interval=1).
GOLDEN_MLM = [6.893633, 6.939808, 6.922064, 6.931777, 6.916365, 6.910876]
GOLDEN_NSP = [0.6918641, 0.6956864, 0.6938304, 0.6940596, 0.6954222, 0.6934462]


def test_golden_losses(tmp_path, debug_shards):
    train(train_config(debug_shards, tmp_path / "run", "--train.max_steps=6", "--log.interval=1"))
    records = read_metrics(tmp_path / "run")
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 6]
    mlm = [r["mlm_loss"] for r in records]
    nsp = [r["nsp_loss"] for r in records]
    np.testing.assert_allclose(mlm, GOLDEN_MLM, rtol=1e-4)
    np.testing.assert_allclose(nsp, GOLDEN_NSP, rtol=1e-4)


def test_metrics_records(tmp_path, debug_shards):
    train(train_config(debug_shards, tmp_path / "run", "--train.max_steps=4", "--log.interval=2"))
    records = read_metrics(tmp_path / "run")
    assert [r["step"] for r in records] == [2, 4]
    for r in records:
        for key in ("mlm_loss", "nsp_loss", "mlm_acc", "nsp_acc", "lr", "grad_norm", "tokens_per_s",
                    "sequences_per_s", "eta_s", "tokens_seen", "phase", "loss_scale"):
            assert key in r, key
        assert r["tokens_per_s"] > 0 and 6.0 < r["mlm_loss"] < 7.5
    assert records[0]["lr"] == pytest.approx(5e-3 * 2 / 10)  # warm-up step index 1 of 10
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["train"]["max_steps"] == 4 and config["model"]["preset"] == "debug"


def test_the_model_learns_korean(tmp_path, debug_shards):
    train(train_config(debug_shards, tmp_path / "run", "--train.max_steps=300", "--train.lr=1e-2",
                       "--train.warmup_steps=20", "--log.interval=50", "--checkpoint.interval=0"))
    records = read_metrics(tmp_path / "run")
    first, last = records[0]["mlm_loss"], records[-1]["mlm_loss"]
    # Uniform guessing over 1,000 pieces is ln(1000) = 6.91; after 300 steps the debug model is far below.
    assert first > 6.4 and last < 6.0 and records[-1]["mlm_acc"] > 0.10, (first, last)


def test_resumed_equals_uninterrupted(tmp_path, debug_shards):
    args = ["--train.max_steps=30", "--train.micro_batch_size=64", "--log.interval=1", "--checkpoint.interval=0"]
    train(train_config(debug_shards, tmp_path / "full", *args))
    # 1,429 instances // 64 = 22 steps per epoch: stop mid-epoch at step 13, resume across the epoch end.
    first = Trainer(train_config(debug_shards, tmp_path / "split", *args))
    first.run(until=13)
    first.close()
    train(train_config(debug_shards, tmp_path / "split", *args))
    full, split = read_metrics(tmp_path / "full"), read_metrics(tmp_path / "split")
    assert [r["step"] for r in split] == list(range(1, 31))
    for a, b in zip(full, split):
        assert (a["mlm_loss"], a["nsp_loss"], a["grad_norm"], a["lr"]) == (b["mlm_loss"], b["nsp_loss"],
                                                                            b["grad_norm"], b["lr"])
    pa, pb = final_params(tmp_path / "full"), final_params(tmp_path / "split")
    assert pa.keys() == pb.keys()
    assert all(np.array_equal(pa[k], pb[k]) for k in pa)  # bit for bit


def test_two_phases_switch_at_the_configured_step(tmp_path, demo_corpus, debug_vocab, debug_shards):
    from kobert_pretrain.shards import build_shards

    long = build_shards(shards_config(demo_corpus, debug_vocab, tmp_path / "s128", "--shards.max_seq_length=128",
                                      "--shards.max_predictions_per_seq=20"))
    args = [f"--train.phase2_shards={long}", "--train.phase2_start_step=4", "--train.phase2_micro_batch_size=8",
            "--train.max_steps=8", "--log.interval=1", "--checkpoint.interval=0"]
    train(train_config(debug_shards, tmp_path / "full", *args))
    records = read_metrics(tmp_path / "full")
    assert [r["phase"] for r in records] == [1, 1, 1, 1, 2, 2, 2, 2]
    assert records[3]["sequences_per_s"] > 0 and records[4]["tokens_seen"] > records[3]["tokens_seen"]
    # Resume exactly at the phase boundary and inside phase 2.
    for stop in (4, 6):
        run = tmp_path / f"split{stop}"
        t = Trainer(train_config(debug_shards, run, *args))
        t.run(until=stop)
        t.close()
        train(train_config(debug_shards, run, *args))
        assert [r["mlm_loss"] for r in read_metrics(run)] == [r["mlm_loss"] for r in records]


def test_evaluation(tmp_path, debug_shards):
    train(train_config(debug_shards, tmp_path / "run", f"--train.eval_shards={debug_shards}", "--train.max_steps=4",
                       "--train.eval_interval=2", "--train.eval_batches=3"))
    evals = read_metrics(tmp_path / "run", kind="eval")
    assert [r["step"] for r in evals] == [2, 4]
    for r in evals:
        assert 5.0 < r["eval_mlm_loss"] < 7.5 and 0 <= r["eval_mlm_acc"] <= 1
        assert 0.5 < r["eval_nsp_loss"] < 1.0 and 0 <= r["eval_nsp_acc"] <= 1


def test_mlm_only(tmp_path, debug_shards):
    train(train_config(debug_shards, tmp_path / "run", "--model.use_nsp=false", "--train.max_steps=2",
                       "--log.interval=1"))
    records = read_metrics(tmp_path / "run")
    assert all(r["nsp_loss"] == 0.0 for r in records)
    assert not any("classifier" in k for k in final_params(tmp_path / "run"))


def test_bad_setups_are_reported_together(tmp_path, demo_corpus, debug_vocab, debug_shards):
    from kobert_pretrain.config import VocabConfig
    from kobert_pretrain.shards import build_shards
    from kobert_pretrain.vocab import build_vocab

    other_vocab = build_vocab(VocabConfig(input=[str(demo_corpus)], out=str(tmp_path / "v2"), vocab_size=900,
                                          num_threads=2))
    foreign = build_shards(shards_config(demo_corpus, other_vocab, tmp_path / "foreign"))
    with pytest.raises(ConfigError) as info:
        Trainer(train_config(debug_shards, tmp_path / "run", "--model.max_length=32",
                             "--train.global_batch_size=20", f"--train.eval_shards={foreign}",
                             "--train.optimizer=sgd"))
    problems = " | ".join(info.value.problems)
    assert "train.optimizer='sgd'" in problems
    assert "max_seq_length 64 but the model has only 32 positions" in problems
    assert "global batch 20 is not divisible by micro batch 16" in problems
    assert "train.eval_shards" in problems and "another vocabulary" in problems
    assert len(info.value.problems) == 4
    with pytest.raises(ConfigError, match="model.preset='huge'"):
        Trainer(train_config(debug_shards, tmp_path / "run", "--model.preset=huge"))
    assert not (tmp_path / "run").exists()


def test_resume_refuses_what_is_not_a_continuation_and_writes_nothing(tmp_path, demo_corpus, debug_vocab,
                                                                       debug_shards):
    from kobert_pretrain.shards import build_shards

    run = tmp_path / "run"
    train(train_config(debug_shards, run, "--train.max_steps=2"))
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    other = build_shards(shards_config(demo_corpus, debug_vocab, tmp_path / "other", "--shards.seed=7"))
    with pytest.raises(UserError) as info:
        Trainer(train_config(other, run, "--train.max_steps=4", "--model.units=32", "--train.seed=3",
                             "--train.optimizer=bertadam"))
    assert str(info.value) == (
        f"cannot resume {run} from step-00000002: the model differs: model.units 64 (checkpoint) vs 32 (now); "
        f"train.shards is another shard set than the one it was trained on ({debug_shards}); "
        "train.seed 3 vs 0 (the seed fixes data order and masks); "
        "train.optimizer bertadam vs lamb (its moments do not carry over)")
    with pytest.raises(UserError, match="it is at step 2, past train.max_steps=1; raise max_steps"):
        Trainer(train_config(debug_shards, run, "--train.max_steps=1"))
    with pytest.raises(UserError, match="already holds a run"):
        Trainer(train_config(debug_shards, run), resume="none")
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before  # config.json untouched


def test_cli_train_errors_are_one_line(tmp_path, debug_shards):
    result = run_cli("train", "--config", "configs/debug.toml", "--shards", tmp_path / "nope", "--out", tmp_path / "r")
    assert result.returncode == 2 and result.stderr.strip().splitlines() == [
        f"kobert-pretrain: error: shard directory not found: {tmp_path / 'nope'}"]
    result = run_cli("train", "--config", "configs/debug.toml", "--shards", debug_shards, "--out", tmp_path / "r",
                     "--train.micro_batch_size=0", "--log.interval=0")
    assert result.returncode == 2 and "2 problems" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_tensorboard_events_when_tensorboardx_is_installed(tmp_path, debug_shards):
    pytest.importorskip("tensorboardX")
    train(train_config(debug_shards, tmp_path / "run", "--train.max_steps=2", "--log.interval=1"))
    events = list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 100
