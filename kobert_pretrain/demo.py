"""The demo corpus: real Korean text that ships inside an installed package.

konlpy's wheel carries the Constitution of the Republic of Korea
(`kolaw/constitution.txt`) and ten National Assembly bills (`kobill/*.txt`)
as plain UTF-8 files. We read them as files (konlpy's Java taggers are never
started) and write them in the BERT input convention: one sentence per line,
a blank line between documents. Each bill is a document; the constitution is
split into one document per chapter (제N장), so next-sentence pairs have
several documents to draw from.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

from kobert_pretrain.errors import UserError
from kobert_pretrain.fsutil import atomic_write_text, check_parents_are_dirs

_CHAPTER = re.compile(r"^제\s*\d+\s*장")
# Korean sentence end: a Hangul syllable, then . ? or !, then whitespace.
_SENTENCE_END = re.compile(r"(?<=[\uac00-\ud7a3][.?!])\s+")


def konlpy_corpus_dir() -> Path:
    spec = importlib.util.find_spec("konlpy")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("the demo corpus comes from the konlpy package: pip install --no-deps konlpy==0.6.0")
    root = Path(list(spec.submodule_search_locations)[0]) / "data" / "corpus"
    if not (root / "kolaw" / "constitution.txt").is_file():
        raise UserError(f"konlpy is installed but its corpus is missing under {root}")
    return root


def demo_documents() -> list[list[str]]:
    """The demo corpus as documents, each a list of sentences."""
    root = konlpy_corpus_dir()
    documents: list[list[str]] = []
    current: list[str] = []
    for line in (root / "kolaw" / "constitution.txt").read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if _CHAPTER.match(line) and current:
            documents.append(current)
            current = []
        if line:
            current.extend(s for s in _SENTENCE_END.split(line) if s)
    if current:
        documents.append(current)
    for bill in sorted((root / "kobill").glob("*.txt")):
        lines = [ln.strip() for ln in bill.read_text(encoding="utf-8").splitlines()]
        documents.append([ln for ln in lines if ln and not re.fullmatch(r"-\s*\d+\s*-", ln)])
    return [d for d in documents if d]


def write_demo_corpus(path: str | Path) -> Path:
    """Write the demo corpus to `path` (atomically, never over an existing file) and return it."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"--out {path} is a directory; give a file name, e.g. {path / 'corpus.txt'}")
    if path.exists() or path.is_symlink():
        raise UserError(f"--out {path} already exists; demo-corpus never overwrites: choose a new file or remove it")
    check_parents_are_dirs(path, "--out")
    text = "\n\n".join("\n".join(doc) for doc in demo_documents()) + "\n"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create {path.parent}: {e.strerror}") from None
    atomic_write_text(path, text, overwrite=False)
    return path
