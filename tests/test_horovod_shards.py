"""Shard generation split across Horovod ranks (real horovodrun, Gloo): same bytes as one process."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, tree_bytes

pytestmark = pytest.mark.horovod

HOROVODRUN = Path(sys.executable).with_name("horovodrun")


def horovodrun(hosts: str, np_: int, *args, timeout=300, env=None) -> subprocess.CompletedProcess:
    if not HOROVODRUN.exists():
        pytest.fail(f"{HOROVODRUN} is missing: run `make install`")
    cmd = [str(HOROVODRUN), "-np", str(np_), "-H", hosts, "--gloo", sys.executable, "-m", "kobert_pretrain", *map(str, args)]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env)


@pytest.mark.parametrize("hosts", ["localhost:2", "localhost:1,127.0.0.1:1"])
def test_two_ranks_write_the_same_bytes_as_one_process(tmp_path, demo_corpus, debug_vocab, debug_shards, hosts):
    out = tmp_path / "hvd"
    result = horovodrun(hosts, 2, "shards", "--config", "configs/debug.toml", "--input", demo_corpus,
                        "--vocab", debug_vocab, "--out", out)
    assert result.returncode == 0, result.stdout + result.stderr
    assert tree_bytes(out) == tree_bytes(debug_shards)


def test_ranks_resume_a_partial_set(tmp_path, demo_corpus, debug_vocab, debug_shards):
    out = tmp_path / "hvd"
    shutil.copytree(debug_shards, out)
    shutil.rmtree(out / "shard-00000")
    shutil.rmtree(out / "shard-00003")
    result = horovodrun("localhost:2", 2, "shards", "--config", "configs/debug.toml", "--input", demo_corpus,
                        "--vocab", debug_vocab, "--out", out)
    assert result.returncode == 0, result.stdout + result.stderr
    assert tree_bytes(out) == tree_bytes(debug_shards)
