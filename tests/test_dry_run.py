"""`train --dry-run --world-size N`: the plan for N ranks, every problem at once, nothing built or written."""

from __future__ import annotations

import pytest

from conftest import ROOT, assert_one_line_error, run_cli, train_config
from kobert_pretrain.config import load_config
from kobert_pretrain.dry_run import dry_run
from kobert_pretrain.errors import ConfigError, UserError


@pytest.mark.parametrize("ranks,micro,accumulation", [(1, 64, 64), (8, 64, 8), (64, 64, 1)])
def test_the_cluster_config_plans_on_any_number_of_gpus(tmp_path, debug_shards, ranks, micro, accumulation):
    # configs/cluster-base.toml on the debug shards (seq 64); phase 1's global batch is 4096 on every size
    cfg = load_config(ROOT / "configs" / "cluster-base.toml",
                      [f"--train.shards={debug_shards}", "--train.global_batch_size=1024", "--train.dtype=float16"])
    text = dry_run(cfg, ranks)
    lines = text.splitlines()
    assert lines[0].startswith(f"dry run: {ranks} rank(s), float16, lamb lr 0.001768, 125,000 steps; model 12 x 768")
    per_rank = 1024 // ranks
    assert (f"micro batch {min(64, per_rank)}" + ("" if per_rank >= 64 else " (of at most 64)")
            + f" x accumulation {max(1, per_rank // 64)} x {ranks} rank(s) = global batch 1024") in lines[1]
    assert "up to 65,536 tokens per step" in lines[1] and "steps per epoch" in lines[1]
    assert lines[2].startswith("dry run: phase 1 memory: ~") and "GiB per GPU" in lines[2]
    assert not (tmp_path / "run").exists()


def test_every_problem_at_once(tmp_path, debug_shards):
    cfg = train_config(debug_shards, tmp_path / "run", "--train.global_batch_size=32", "--model.max_length=32",
                       "--train.optimizer=sgd")
    with pytest.raises(ConfigError) as e:
        dry_run(cfg, 3)
    assert e.value.problems[0].startswith("train.optimizer=")
    assert "global batch 32 is not divisible by 3 rank(s)" in str(e.value)
    assert "max_seq_length 64 but the model has only 32 positions" in str(e.value)
    assert str(e.value).startswith("this job cannot start on 3 rank(s)")
    with pytest.raises(UserError, match="at least 1"):
        dry_run(cfg, 0)


def test_cli_dry_run(tmp_path, debug_shards):
    ok = run_cli("train", "--config", "configs/debug.toml", "--shards", debug_shards, "--dry-run", "--world-size", "2")
    assert ok.returncode == 0, ok.stderr
    assert "micro batch 16 x accumulation 1 x 2 rank(s) = global batch 32" in ok.stdout
    bad = run_cli("train", "--config", "configs/debug.toml", "--shards", debug_shards, "--out", tmp_path / "r",
                  "--world-size", "2")
    assert_one_line_error(bad, "--world-size plans a job: use it with --dry-run")
    assert not (tmp_path / "r").exists()
