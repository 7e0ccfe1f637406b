"""Data parallelism under real horovodrun (Gloo, 2 ranks): equals one process with the global batch."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from kobert_pretrain.train import train

from conftest import ROOT, final_params, read_metrics, train_config
from test_horovod_shards import horovodrun

pytestmark = pytest.mark.horovod

# Dropout off (masks would differ between layouts); a clip threshold far below the gradient norm
# (~2) so that clipping is active in every step; accumulation on the 2-rank side too.
COMMON = ["--model.dropout=0", "--train.clip_grad_norm=0.05", "--train.max_steps=5", "--log.interval=1",
          "--checkpoint.interval=0", "--train.bucket_window=1"]


@pytest.fixture(scope="module")
def one_process(tmp_path_factory, debug_shards):
    run = tmp_path_factory.mktemp("hvd") / "single"
    train(train_config(debug_shards, run, *COMMON, "--train.micro_batch_size=16", "--train.global_batch_size=32"))
    return run


@pytest.mark.parametrize("averaged", ["0", "1"], ids=["horovod-sums", "horovod-averages"])
def test_two_ranks_equal_one_process_with_the_global_batch(tmp_path, debug_shards, one_process, averaged):
    run = tmp_path / "two"
    env_before = os.environ.get("KOBERT_HOROVOD_AVERAGE")
    os.environ["KOBERT_HOROVOD_AVERAGE"] = averaged
    try:
        result = horovodrun("localhost:2", 2, "train", "--config", "configs/debug.toml", "--shards", debug_shards,
                            "--out", run, *COMMON, "--train.micro_batch_size=8", "--train.global_batch_size=32")
    finally:
        if env_before is None:
            os.environ.pop("KOBERT_HOROVOD_AVERAGE")
        else:
            os.environ["KOBERT_HOROVOD_AVERAGE"] = env_before
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    single, double = read_metrics(one_process), read_metrics(run)
    assert [r["step"] for r in double] == [1, 2, 3, 4, 5]
    for a, b in zip(single, double):
        assert a["grad_norm"] > 0.05  # clipping was active
        np.testing.assert_allclose([b["mlm_loss"], b["nsp_loss"], b["grad_norm"]],
                                   [a["mlm_loss"], a["nsp_loss"], a["grad_norm"]], rtol=2e-5)
    pa, pb = final_params(one_process), final_params(run)
    assert pa.keys() == pb.keys()
    for name in pa:
        np.testing.assert_allclose(pb[name], pa[name], rtol=1e-4, atol=2e-6, err_msg=name)
    moved = max(float(np.abs(pa[k]).max()) for k in pa)
    assert moved > 0


def rank_lines(output: str) -> dict[int, list[str]]:
    """What each rank printed, without Gloo's `[rank]<stderr>:` prefix."""
    import re

    lines: dict[int, list[str]] = {}
    for line in output.splitlines():
        match = re.match(r"\[(\d+)\]<std(?:out|err)>:(.*)", line)
        if match:
            lines.setdefault(int(match.group(1)), []).append(match.group(2))
    return lines


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, debug_shards):
    """A run directory whose newest checkpoint is at step 2."""
    run = tmp_path_factory.mktemp("hvd") / "finished"
    train(train_config(debug_shards, run, "--train.max_steps=2"))
    assert (run / "checkpoints" / "step-00000002").is_dir()
    return run


def test_refused_resume_prints_one_line_per_rank_and_no_atexit_traceback(finished_run, debug_shards):
    # Horovod's atexit shutdown used to fail the still-queued parameter broadcast, and MXNet's own
    # atexit engine drain then printed "Exception ignored in atexit callback ... MXNetError:
    # Horovod has been shut down" with a traceback on every rank.
    result = horovodrun("localhost:2", 2, "train", "--config", "configs/debug.toml", "--shards", debug_shards,
                        "--out", finished_run, "--train.max_steps=1")
    output = result.stdout + result.stderr
    error = (f"kobert-pretrain: error: cannot resume {finished_run} from step-00000002: it is at step 2, "
             "past train.max_steps=1; raise max_steps to train further")
    assert result.returncode == 1, output  # horovodrun's status for a failed job
    assert "Exit code: 2" in output, output  # the first rank to stop did so on the user error
    assert "Exception ignored" not in output and "MXNetError" not in output, output
    ranks = rank_lines(output)
    assert ranks, output
    # horovodrun terminates the other rank once the first exits; its shell may say "Terminated".
    for rank, lines in ranks.items():
        assert set(lines) <= {error, "Terminated"}, (rank, output)
    assert any(lines == [error] for lines in ranks.values()), output


def test_rerunning_a_finished_run_under_launch_exits_0_quietly(finished_run, debug_shards):
    result = subprocess.run([sys.executable, "-m", "kobert_pretrain", "launch", "-np", "2", "-H", "localhost:2",
                             "--", "train", "--config", "configs/debug.toml", "--shards", str(debug_shards),
                             "--out", str(finished_run), "--train.max_steps=2"],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "Traceback" not in output and "Exception ignored" not in output, output
    ranks = rank_lines(output)
    assert ranks.get(1, []) == [], output  # rank 1 logs nothing
    assert ranks[0][-1] == f"train: resumed from {finished_run}/checkpoints/step-00000002 at step 2", output
    assert output.splitlines()[-1].startswith("launch: job finished after "), output
