"""Helpers shared by the benchmark scripts (not a test module)."""

from __future__ import annotations

import os
import platform
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED_CORPUS = ROOT.parent / "shared" / "corpus"


def machine() -> str:
    cpu = "unknown cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{platform.node() or 'host'}: {os.cpu_count()} cores, {cpu}, Python {platform.python_version()}"


def corpus_files(corpus: str | None) -> list[Path]:
    """The benchmark corpus: --corpus, else ../shared/corpus, else the konlpy demo corpus."""
    if corpus:
        root = Path(corpus)
        return sorted(p for p in root.rglob("*.txt")) if root.is_dir() else [root]
    if SHARED_CORPUS.is_dir():
        return sorted(SHARED_CORPUS.rglob("*.txt"))
    from kobert_pretrain.demo import write_demo_corpus

    return [write_demo_corpus(Path("runs/bench/demo-corpus.txt"))]
