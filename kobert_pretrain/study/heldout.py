"""The study's two texts: the documents every candidate trains on, and the held-out ones it is measured on.

Every `heldout_every`-th document (counted across the input files in order) is held out, up to
`heldout_max_mb` of text; all other documents are training text. Both are written once, in the BERT
input convention, to STUDY/data/ (an atomic directory: a killed split leaves nothing half-written),
so every candidate's vocabulary, shards and evaluation read the same bytes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from kobert_pretrain.errors import UserError
from kobert_pretrain.fsutil import atomic_output_dir, sha256_file
from kobert_pretrain.text import ReadStats, iter_lines, resolve_inputs, warn

TRAIN_FILE = "train.txt"
HELDOUT_FILE = "heldout.txt"
SPLIT_FILE = "split.json"


@dataclass(frozen=True)
class Split:
    train: Path
    heldout: Path
    meta: dict


def documents(paths: list[Path], input_format: str, stats: ReadStats) -> Iterator[list[str]]:
    """Documents as lists of lines: blank-line separated ("sentences"), or one per line ("documents")."""
    current: list[str] = []
    for line in iter_lines(paths, stats):
        if input_format == "documents":
            if line:
                yield [line]
            continue
        if line:
            current.append(line)
        elif current:
            yield current
            current = []
    if current:
        yield current


def split_corpus(inputs: list[str], out: Path, every: int, max_mb: float, input_format: str) -> Split:
    """STUDY/data: train.txt and heldout.txt from `inputs` (re-used when already written)."""
    if (out / SPLIT_FILE).is_file():
        return load_split(out)
    paths = resolve_inputs(inputs)
    stats = ReadStats()
    counts = {"train": [0, 0], "heldout": [0, 0]}  # documents, bytes
    cap = int(max_mb * 1e6)
    with atomic_output_dir(out, "study") as tmp:
        with open(tmp / TRAIN_FILE, "w", encoding="utf-8") as train, \
                open(tmp / HELDOUT_FILE, "w", encoding="utf-8") as heldout:
            for i, doc in enumerate(documents(paths, input_format, stats)):
                text = "\n".join(doc) + "\n\n"
                size = len(text.encode("utf-8"))
                held = i % every == every - 1 and counts["heldout"][1] + size <= cap
                (heldout if held else train).write(text)
                side = counts["heldout" if held else "train"]
                side[0] += 1
                side[1] += size
        for note in stats.warnings():
            warn(note)
        if counts["heldout"][0] == 0 or counts["train"][0] == 0:
            raise UserError(f"the input holds {counts['train'][0] + counts['heldout'][0]} document(s) (blank-line "
                            f"separated): the study needs at least {every} to hold every {every}-th out "
                            f"(lower --study.heldout_every, or check --shards.input_format)")
        meta = {"inputs": [str(p) for p in paths], "input_bytes": stats.bytes, "heldout_every": every,
                "heldout_max_mb": max_mb, "input_format": input_format,
                "train": {"documents": counts["train"][0], "bytes": counts["train"][1],
                          "sha256": sha256_file(tmp / TRAIN_FILE)},
                "heldout": {"documents": counts["heldout"][0], "bytes": counts["heldout"][1],
                            "sha256": sha256_file(tmp / HELDOUT_FILE)}}
        (tmp / SPLIT_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return load_split(out)


def load_split(out: Path) -> Split:
    try:
        meta = json.loads((out / SPLIT_FILE).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{out / SPLIT_FILE} is unreadable ({e}); remove {out} to split the corpus again") from None
    for name, key in ((TRAIN_FILE, "train"), (HELDOUT_FILE, "heldout")):
        path = out / name
        if not path.is_file() or path.stat().st_size != meta[key]["bytes"]:
            raise UserError(f"{path} is missing or was modified since the split; remove {out} to split again")
    return Split(train=out / TRAIN_FILE, heldout=out / HELDOUT_FILE, meta=meta)
