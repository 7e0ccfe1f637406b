"""The corpus as written: parts of bounded size in the shards' input convention, and what they hold.

Each part `text/part-NNNNN.txt` is UTF-8, one sentence per line, a blank line
after every document, and at most `part_mb` MB unless a single document is
longer (it then gets a part of its own). `--input OUT/text` feeds them to
`vocab` and `shards` as they are.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import numpy as np

TEXT_DIR = "text"
# Histogram bins: sentence length in characters, document length in sentences (the last bin is open).
SENTENCE_BINS = (0, 10, 20, 30, 40, 60, 80, 100, 150, 200, 300, 500, 1000)
DOCUMENT_BINS = (1, 2, 3, 5, 10, 20, 50, 100, 200, 500, 1000)
COVERAGE_TOP = (100, 500, 1000, 2000, 4000, 8002)


def part_name(index: int) -> str:
    return f"part-{index:05d}.txt"


class PartWriter:
    """Writes documents into text/part-NNNNN.txt files of at most `max_bytes` each (None: count only)."""

    def __init__(self, directory: Path | None, max_bytes: int):
        self.directory, self.max_bytes = directory, max_bytes
        self.parts: list[dict] = []
        self._file = None
        self._size = 0

    def write(self, sentences: list[str]) -> None:
        data = ("\n".join(sentences) + "\n\n").encode("utf-8")
        if not self.parts or (self._size and self._size + len(data) > self.max_bytes):
            self._open_next()
        if self._file is not None:
            self._file.write(data)
        self._size += len(data)
        self.parts[-1]["bytes"] = self._size
        self.parts[-1]["documents"] += 1

    def _open_next(self) -> None:
        self._close_file()
        name = part_name(len(self.parts))
        self.parts.append({"name": f"{TEXT_DIR}/{name}", "bytes": 0, "documents": 0})
        self._size = 0
        if self.directory is not None:
            self.directory.mkdir(exist_ok=True)
            self._file = open(self.directory / name, "wb")

    def _close_file(self) -> None:
        if self._file is not None:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            self._file = None

    def close(self) -> list[dict]:
        self._close_file()
        return self.parts


class OutputStats:
    """Counts of the written corpus: sizes, length histograms, character frequencies."""

    def __init__(self):
        self.documents = 0
        self.sentences = 0
        self.chars = 0
        self.sentence_hist = np.zeros(len(SENTENCE_BINS), dtype=np.int64)
        self.document_hist = np.zeros(len(DOCUMENT_BINS), dtype=np.int64)
        self.char_counts: Counter = Counter()

    def add(self, sentences: list[str]) -> None:
        self.documents += 1
        self.sentences += len(sentences)
        lengths = [len(s) for s in sentences]
        self.chars += sum(lengths)
        for n in lengths:
            self.sentence_hist[np.searchsorted(SENTENCE_BINS, n, side="right") - 1] += 1
        self.document_hist[max(0, np.searchsorted(DOCUMENT_BINS, len(sentences), side="right") - 1)] += 1
        for s in sentences:
            self.char_counts.update(s)

    def coverage(self) -> dict[str, float]:
        """Share of non-space characters covered by the N most frequent ones, for N in COVERAGE_TOP."""
        counts = sorted((n for ch, n in self.char_counts.items() if not ch.isspace()), reverse=True)
        total = sum(counts)
        cumulative = np.cumsum(counts) if counts else np.zeros(1)
        return {str(n): (float(cumulative[min(n, len(counts)) - 1]) / total if total else 0.0) for n in COVERAGE_TOP}

    def coverage_curve(self) -> list[float]:
        counts = sorted((n for ch, n in self.char_counts.items() if not ch.isspace()), reverse=True)
        total = sum(counts) or 1
        return (np.cumsum(counts) / total).round(6).tolist() if counts else []

    def to_dict(self) -> dict:
        distinct = sum(1 for ch in self.char_counts if not ch.isspace())
        return {
            "documents": self.documents,
            "sentences": self.sentences,
            "chars": self.chars,
            "distinct_chars": distinct,
            "sentence_length_bins": list(SENTENCE_BINS),
            "sentence_length_counts": self.sentence_hist.tolist(),
            "document_sentences_bins": list(DOCUMENT_BINS),
            "document_sentences_counts": self.document_hist.tolist(),
            "char_coverage": self.coverage(),
            "top_chars": [[ch, n] for ch, n in self.char_counts.most_common(30) if not ch.isspace()][:20],
        }
