"""Text inputs shared by the offline stages: resolve paths, stream decoded lines.

Input is UTF-8 text, one sentence per line, a blank line between documents
(the BERT convention). Lines that are not valid UTF-8 are skipped and counted,
never fatal on their own: one bad line in a 10 GB crawl must not cost a day.
Files that start with a UTF-16 byte-order mark are skipped whole, and files
with CR-only (classic Mac) line endings are flagged: both are counted so that
a stage that finds too little text can say why.
"""

from __future__ import annotations

import glob
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Iterator

from kobert_pretrain.errors import UserError

_BOM = b"\xef\xbb\xbf"
_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")


def resolve_inputs(patterns: list[str]) -> list[Path]:
    """Files named by paths, globs or directories (searched recursively), sorted and deduplicated.

    Raises UserError for a path or glob that matches nothing, a directory with no
    files, or inputs that hold no bytes at all.
    """
    if not patterns:
        raise UserError("no input given: pass --input FILE, GLOB or DIRECTORY")
    files: list[Path] = []
    for pattern in patterns:
        path = Path(pattern)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
            if not found:
                raise UserError(f"input directory {pattern} holds no files")
            files.extend(found)
        elif path.is_file():
            files.append(path)
        elif glob.has_magic(pattern):
            found = sorted(Path(p) for p in glob.glob(pattern, recursive=True) if Path(p).is_file())
            if not found:
                raise UserError(f"input glob {pattern!r} matches no files")
            files.extend(found)
        elif path.exists():
            raise UserError(f"input {pattern} is not a regular file or directory")
        else:
            raise UserError(f"input not found: {pattern}")
    unique = list(dict.fromkeys(p.resolve() for p in files))
    for p in unique:
        if not os.access(p, os.R_OK):
            raise UserError(f"input {p} is not readable (permission denied)")
    if sum(p.stat().st_size for p in unique) == 0:
        raise UserError(f"all {len(unique)} input file(s) are empty: there is no text to learn from")
    return unique


@dataclass
class ReadStats:
    """What a pass over the inputs saw."""

    files: int = 0
    empty_files: list[str] = field(default_factory=list)
    lines: int = 0
    blank_lines: int = 0
    undecodable_lines: int = 0
    undecodable_by_file: dict[str, int] = field(default_factory=dict)
    utf16_files: list[str] = field(default_factory=list)
    cr_files: list[str] = field(default_factory=list)
    bytes: int = 0

    @property
    def text_lines(self) -> int:
        """Lines read that are neither blank nor undecodable."""
        return self.lines - self.blank_lines - self.undecodable_lines

    def warnings(self, dropped_text: bool = True) -> list[str]:
        """One line per kind of input skipped; `dropped_text=False` leaves out the lines and files
        whose text was lost (undecodable, UTF-16, CR line endings), for a caller that states them itself."""
        notes = []
        if self.empty_files:
            notes.append(f"skipped {len(self.empty_files)} empty file(s), e.g. {self.empty_files[0]}")
        if not dropped_text:
            return notes
        if self.undecodable_lines:
            worst = max(self.undecodable_by_file, key=self.undecodable_by_file.get)
            notes.append(
                f"skipped {self.undecodable_lines} line(s) that are not valid UTF-8 "
                f"({self.undecodable_by_file[worst]} in {worst}); "
                "convert legacy Korean encodings first, e.g. iconv -f cp949 -t utf-8"
            )
        if self.utf16_files:
            notes.append(f"skipped {len(self.utf16_files)} UTF-16 file(s), e.g. {self.utf16_files[0]}; "
                         "convert them first, e.g. iconv -f utf-16 -t utf-8")
        if self.cr_files:
            notes.append(f"{len(self.cr_files)} file(s) hold carriage returns (CR, classic Mac line endings) "
                         f"inside lines, e.g. {self.cr_files[0]}; only \\n ends a line: convert them first, "
                         "e.g. tr '\\r' '\\n'")
        return notes


def iter_lines(paths: list[Path], stats: ReadStats, progress=None) -> Iterator[str]:
    """Yield every decodable line (without its line ending) of every file, in order.

    A blank line (whitespace only) is yielded as "" so callers can see document
    boundaries; a file boundary is also a document boundary and yields "".
    `progress`, if given, is called with the number of bytes consumed.

    Lines are split at "\\n" only, as `shards` splits them; a carriage return
    inside a line (CR-only line endings) is recorded in `stats.cr_files`. A line
    holding a NUL byte is binary data (or UTF-16 without a byte-order mark),
    not text, and is counted as undecodable.
    """
    for path in paths:
        stats.files += 1
        size = path.stat().st_size
        if size == 0:
            stats.empty_files.append(str(path))
            continue
        with open(path, "rb") as f:
            first = True
            for raw in f:
                stats.bytes += len(raw)
                if progress is not None:
                    progress(len(raw))
                if first:
                    first = False
                    if raw.startswith(_UTF16_BOMS):
                        stats.utf16_files.append(str(path))
                        if progress is not None:
                            progress(size - len(raw))
                        stats.bytes += size - len(raw)
                        break
                    if raw.startswith(_BOM):
                        raw = raw[len(_BOM):]
                stats.lines += 1
                try:
                    line = raw.decode("utf-8") if b"\0" not in raw else None
                except UnicodeDecodeError:
                    line = None
                if line is None:
                    stats.undecodable_lines += 1
                    stats.undecodable_by_file[str(path)] = stats.undecodable_by_file.get(str(path), 0) + 1
                    continue
                if "\r" in line.rstrip("\r\n") and (not stats.cr_files or stats.cr_files[-1] != str(path)):
                    stats.cr_files.append(str(path))
                line = line.strip()
                if not line:
                    stats.blank_lines += 1
                yield line
        yield ""


def warn(message: str) -> None:
    """One-line warning on stderr."""
    print(f"kobert-pretrain: warning: {message}", file=sys.stderr, flush=True)


# Sentence ends for documents given one per line (`shards --input-format documents`, and `prepare`'s
# rule splitter): . ? ! (or full-width ．？！, ideographic 。, its half-width form ｡, or …), optional
# closing quotes or brackets (full- and half-width too), then whitespace. Korean prose ends sentences
# with "다." and the like; "3.14" and "1.5배" have no whitespace after the dot and stay whole.
_SENTENCE_END = re.compile(r"[.?!．？！。｡…][\"'”’)\]」』＂＇）］｣]*\s+")


def split_sentences(text: str) -> list[str]:
    """Sentences of `text` by the rule above (stripped, none empty)."""
    sentences, start = [], 0
    for match in _SENTENCE_END.finditer(text):
        sentences.append(text[start:match.end()].strip())
        start = match.end()
    sentences.append(text[start:].strip())
    return [s for s in sentences if s]


def record_boundary(f: BinaryIO, pos: int, size: int, by_line: bool) -> int:
    """The first record boundary at or after byte `pos` of binary file `f` (of `size` bytes): the end of a
    line (by_line: one record per line) or of a blank line (records separated by blank lines), or `size`."""
    f.seek(pos - 1)
    if f.read(1) != b"\n":
        f.readline()  # finish the line `pos` falls in
    if by_line:
        return min(f.tell(), size)
    while True:
        line = f.readline()
        if not line:
            return size
        if not line.strip():
            return f.tell()
