"""A small labelled Korean task derived from the demo corpus, for `make demo`: which chapter is a sentence from?

The Constitution in konlpy's wheel (kobert_pretrain.demo) has chapters on the people's rights and duties
(제2장 국민의 권리와 의무), the National Assembly (제3장 국회), the Executive (제4장 정부) and the Courts
(제5장 법원): 90, 65, 97 and 30 sentences. Each sentence is labelled with its chapter, which is a fact about
the text, not a judgement. The article numbers (제40조) and paragraph marks (①) are removed, since the
numbers alone would give the chapter away; section headings (제1절 대통령) are dropped. The sentences are
split 60/20/20 into train, dev and test by a seeded shuffle within each chapter, shuffled, written in the NSMC format
(`id  document  label`). The demo pretrains on the same text, so this checks what pretraining on a domain
gives a classifier of that domain, nothing more.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from kobert_pretrain.demo import demo_documents
from kobert_pretrain.errors import UserError
from kobert_pretrain.fsutil import atomic_output_dir

CHAPTERS = {"제2장 국민의 권리와 의무": "rights", "제3장 국회": "assembly", "제4장 정부": "executive",
            "제5장 법원": "courts"}
SPLITS = (("train", 0.6), ("dev", 0.2), ("test", 0.2))
_ARTICLE = re.compile(r"^(제\s*\d+\s*조(의\s*\d+)?\s*)?[①-⑳]?\s*")
_SECTION = re.compile(r"^제\s*\d+\s*(절|관)\b")


def demo_task_rows(seed: int = 0) -> dict[str, list[tuple[str, str]]]:
    """{split: [(sentence, chapter label)]}, every chapter split 60/20/20."""
    rows: dict[str, list[tuple[str, str]]] = {name: [] for name, _ in SPLITS}
    for document in demo_documents():
        label = CHAPTERS.get(document[0].strip())
        if label is None:
            continue
        chapter = list(CHAPTERS.values()).index(label)
        sentences = [_ARTICLE.sub("", s).strip() for s in document[1:] if not _SECTION.match(s.strip())]
        sentences = [s for s in sentences if len(s) >= 5]
        order = np.random.default_rng([seed, chapter]).permutation(len(sentences))
        start = 0
        for i, (name, share) in enumerate(SPLITS):
            end = len(sentences) if i == len(SPLITS) - 1 else start + round(share * len(sentences))
            rows[name].extend((sentences[j], label) for j in order[start:end])
            start = end
    if not rows["train"]:
        raise UserError("the demo corpus holds no constitution chapters: is konlpy's kolaw/constitution.txt intact?")
    # Chapters interleaved, as in a real task file: the first N training rows hold every label.
    for i, (name, _) in enumerate(SPLITS):
        order = np.random.default_rng([seed, len(CHAPTERS) + i]).permutation(len(rows[name]))
        rows[name] = [rows[name][j] for j in order]
    return rows


def write_demo_task(out: str | Path, seed: int = 0) -> Path:
    """train.tsv, dev.tsv, test.tsv (NSMC format) in a new directory `out`; returns it."""
    with atomic_output_dir(Path(out), "demo-task") as tmp:
        for name, rows in demo_task_rows(seed).items():
            lines = ["id\tdocument\tlabel"] + [f"{i}\t{text}\t{label}" for i, (text, label) in enumerate(rows, 1)]
            (tmp / f"{name}.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return Path(out)
