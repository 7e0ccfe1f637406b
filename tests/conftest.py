"""Shared fixtures: the demo corpus, a debug vocabulary, the CLI as a user runs it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_CORPUS = ROOT.parent / "shared" / "corpus"


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", help="also run tests marked slow")
    parser.addoption("--rungpu", action="store_true", help="also run tests that need a CUDA GPU")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "slow" in item.keywords and not config.getoption("--runslow"):
            item.add_marker(pytest.mark.skip(reason="slow: opt in with --runslow (make test-all)"))
        if "gpu" in item.keywords and not config.getoption("--rungpu"):
            item.add_marker(pytest.mark.skip(reason="needs a GPU: opt in with --rungpu"))


def run_cli(*args: str, cwd: str | Path | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run `kobert-pretrain ARGS` in a subprocess, as a user would."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.run(
        [sys.executable, "-m", "kobert_pretrain", *map(str, args)],
        cwd=cwd or ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def assert_one_line_error(result: subprocess.CompletedProcess, *needles: str) -> None:
    """A user mistake: exit status 2, one line on stderr naming the problem, no traceback."""
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kobert-pretrain: error: "), result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert "Traceback" not in result.stderr


@pytest.fixture(scope="session")
def demo_corpus(tmp_path_factory) -> Path:
    from kobert_pretrain.demo import write_demo_corpus

    return write_demo_corpus(tmp_path_factory.mktemp("demo") / "corpus.txt")


@pytest.fixture(scope="session")
def shared_corpus() -> Path:
    if not SHARED_CORPUS.is_dir():
        pytest.skip("../shared/corpus is not present")
    return SHARED_CORPUS


@pytest.fixture(scope="session")
def debug_vocab(tmp_path_factory, demo_corpus) -> Path:
    """The debug-config vocabulary of the demo corpus, built once per session."""
    from kobert_pretrain.config import load_config
    from kobert_pretrain.vocab import build_vocab

    out = tmp_path_factory.mktemp("vocab") / "debug"
    cfg = load_config(ROOT / "configs" / "debug.toml", [f"--vocab.input={demo_corpus}", f"--vocab.out={out}"])
    return build_vocab(cfg.vocab)


def shards_config(corpus, vocab, out, *overrides: str):
    from kobert_pretrain.config import load_config

    args = [f"--shards.input={corpus}", f"--shards.vocab={vocab}", f"--shards.out={out}", *overrides]
    return load_config(ROOT / "configs" / "debug.toml", args).shards


@pytest.fixture(scope="session")
def debug_shards(tmp_path_factory, demo_corpus, debug_vocab) -> Path:
    """Dynamic-masking shards of the demo corpus with configs/debug.toml (seq 64), built once."""
    from kobert_pretrain.shards import build_shards

    out = tmp_path_factory.mktemp("shards") / "debug"
    return build_shards(shards_config(demo_corpus, debug_vocab, out))


def tree_bytes(path: Path) -> dict[str, bytes]:
    """Every file under `path` by relative name, for byte-identity checks."""
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def train_config(shards, out, *overrides: str):
    from kobert_pretrain.config import load_config

    return load_config(ROOT / "configs" / "debug.toml", [f"--train.shards={shards}", f"--train.out={out}", *overrides])


def read_metrics(run_dir: Path, kind: str = "train") -> list[dict]:
    import json

    lines = (Path(run_dir) / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r.get("kind") == kind]


def final_params(run_dir: Path) -> dict:
    """Parameters of the newest checkpoint, as numpy arrays by name."""
    import mxnet as mx

    from kobert_pretrain.checkpoint import CheckpointManager

    ckpt = CheckpointManager(run_dir).latest()
    return {k: v.asnumpy() for k, v in mx.nd.load(str(ckpt.path / "model.params")).items()}


@pytest.fixture
def full_disk(tmp_path):
    """A 1 MiB tmpfs with 16 KiB left (needs root); unmounted afterwards."""
    import os
    import shutil
    import subprocess

    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("mounting a tmpfs needs root")
    mnt = tmp_path / "full"
    mnt.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True,
                             text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {mounted.stderr.strip()}")
    try:
        (mnt / "filler").write_bytes(b"\0" * (1024 - 16) * 1024)
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=True)
