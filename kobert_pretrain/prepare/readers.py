"""Raw inputs -> documents: plain text, JSONL and CSV, optionally gzip/bzip2/xz/zstd-compressed.

The input is cut into tasks (`plan_tasks`) that do not depend on the number of
workers: an uncompressed text or JSONL file is cut into byte ranges of about
`chunk_mb` at document boundaries, so one big file is shared by many workers;
an uncompressed CSV file is cut between records (a line end outside quotes; each
task reads the header row again); a compressed file cannot be entered in the
middle, so each is read whole by one task. Small files
are grouped until a task holds `chunk_mb`.

A bad record (a line that is not valid UTF-8, a malformed JSON line, a CSV row
the csv module rejects, a record without the text field) is counted by kind in
`ReadCounts` and skipped; it never stops the run.
"""

from __future__ import annotations

import bz2
import csv
import gzip
import io
import json
import lzma
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Iterator

from kobert_pretrain.errors import UserError
from kobert_pretrain.text import record_boundary

# Magic numbers, not file names: a mis-named file is still read right.
_MAGIC = (
    (b"\x1f\x8b", "gzip"),
    (b"BZh", "bzip2"),
    (b"\xfd7zXZ\x00", "xz"),
    (b"\x28\xb5\x2f\xfd", "zstd"),
)
_COMPRESSED_SUFFIXES = (".gz", ".bz2", ".xz", ".zst", ".zstd")
# A text field found under one of these names when --text-field is not given (Wikipedia-extractor
# JSON has "text"; ../shared/raw has 내용 and body).
DEFAULT_TEXT_FIELDS = ("text", "body", "content", "내용", "본문")
CSV_FIELD_LIMIT = 1 << 28  # 256 MiB: one record's field; the csv module's default (128 KiB) cuts long articles
_BOM = "\ufeff"


def compression_of(path: Path) -> str | None:
    """gzip, bzip2, xz, zstd, or None for an uncompressed file (by its first bytes)."""
    with open(path, "rb") as f:
        head = f.read(6)
    for magic, name in _MAGIC:
        if head.startswith(magic):
            return name
    return None


def format_of(path: Path, configured: str) -> str:
    """text, jsonl or csv/tsv: `configured` unless auto, else by the name less a compression suffix."""
    name = path.name.lower()
    for suffix in _COMPRESSED_SUFFIXES:
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    if configured != "auto":
        return "tsv" if configured == "csv" and name.endswith(".tsv") else configured
    if name.endswith((".jsonl", ".ndjson", ".json")):
        return "jsonl"
    if name.endswith(".csv"):
        return "csv"
    if name.endswith(".tsv"):
        return "tsv"
    return "text"


def open_binary(path: str | Path, compression: str | None) -> BinaryIO:
    """A binary stream of the file's decompressed bytes."""
    if compression is None:
        return open(path, "rb")
    if compression == "gzip":
        return gzip.open(path, "rb")
    if compression == "bzip2":
        return bz2.open(path, "rb")
    if compression == "xz":
        return lzma.open(path, "rb")
    try:
        import zstandard
    except ImportError:
        raise UserError(f"{path} is zstd-compressed: pip install zstandard") from None
    return io.BufferedReader(_ZstdReader(open(path, "rb"), zstandard))


class _ZstdReader(io.RawIOBase):
    """zstd frames, one after another, as a raw stream; a file that ends inside a frame raises EOFError,
    as gzip, bz2 and lzma do (zstandard's own stream reader just stops there)."""

    CHUNK = 1 << 20

    def __init__(self, f: BinaryIO, zstandard):
        self._f, self._zstd = f, zstandard
        self._decompressor = zstandard.ZstdDecompressor().decompressobj()
        self._pending = b""
        self._pos = 0  # read up to here in _pending

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while self._pos == len(self._pending):
            self._pending, self._pos = b"", 0
            data = self._f.read(self.CHUNK)
            if not data:
                if not self._decompressor.eof:
                    raise EOFError("zstd file ended before the end of its frame")
                return 0
            while data:
                if self._decompressor.eof:  # the next frame of a multi-frame file
                    self._decompressor = self._zstd.ZstdDecompressor().decompressobj()
                self._pending += self._decompressor.decompress(data)
                data = self._decompressor.unused_data if self._decompressor.eof else b""
        n = min(len(buffer), len(self._pending) - self._pos)
        buffer[:n] = self._pending[self._pos:self._pos + n]
        self._pos += n
        return n

    def close(self) -> None:
        self._f.close()
        super().close()


@dataclass(frozen=True)
class Segment:
    """Bytes [start, end) of one input file (end = -1: the whole, possibly compressed, file)."""

    path: str
    start: int
    end: int
    format: str
    compression: str | None


@dataclass
class ReadCounts:
    """What reading saw: records read and bad records by kind, with the first example of each kind."""

    input_bytes: int = 0
    records: int = 0
    bad: dict[str, int] = field(default_factory=dict)
    bad_examples: dict[str, str] = field(default_factory=dict)

    def bad_record(self, kind: str, where: str) -> None:
        self.bad[kind] = self.bad.get(kind, 0) + 1
        self.bad_examples.setdefault(kind, where)

    def merge(self, other: dict) -> None:
        self.input_bytes += other["input_bytes"]
        self.records += other["records"]
        for kind, n in other["bad"].items():
            self.bad[kind] = self.bad.get(kind, 0) + n
        for kind, where in other["bad_examples"].items():
            self.bad_examples.setdefault(kind, where)


def plan_tasks(paths: list[Path], fmt: str, text_documents: str, chunk_bytes: int) -> list[list[Segment]]:
    """The input as tasks of about `chunk_bytes` each, in input order; depends only on the files."""
    tasks: list[list[Segment]] = []
    current: list[Segment] = []
    current_bytes = 0

    def close() -> None:
        nonlocal current, current_bytes
        if current:
            tasks.append(current)
        current, current_bytes = [], 0

    for path in paths:
        size = path.stat().st_size
        if size == 0:
            continue
        compression = compression_of(path)
        file_format = format_of(path, fmt)
        if compression is not None:
            current.append(Segment(str(path), 0, -1, file_format, compression))
            current_bytes += size
            if current_bytes >= chunk_bytes:
                close()
            continue
        pos = 0
        with open(path, "rb") as f:
            while pos < size:
                need = chunk_bytes - current_bytes
                if size - pos <= need:
                    cut = size
                elif file_format in ("csv", "tsv"):
                    cut = _csv_record_boundary(f, pos, pos + need, size)
                else:
                    cut = record_boundary(f, pos + need, size, file_format == "jsonl" or text_documents == "line")
                current.append(Segment(str(path), pos, cut, file_format, None))
                current_bytes += cut - pos
                pos = cut
                if current_bytes >= chunk_bytes:
                    close()
    close()
    return tasks


def _csv_record_boundary(f: BinaryIO, start: int, pos: int, size: int) -> int:
    """The first line end at or after `pos` outside a quoted field, scanning from `start` (a record boundary).

    In RFC 4180 a quote inside a field is doubled, so a line end is inside quotes exactly when an odd
    number of quote characters came before it since the last boundary.
    """
    f.seek(start)
    quotes = 0
    while True:
        line = f.readline()
        if not line:
            return size
        quotes += line.count(b'"')
        if f.tell() >= pos and quotes % 2 == 0:
            return f.tell()


def iter_documents(segment: Segment, text_documents: str, text_field: str,
                   counts: ReadCounts) -> Iterator[str]:
    """The documents of one segment, as raw text (paragraphs separated by newlines)."""
    if segment.format in ("csv", "tsv"):
        yield from _csv_documents(segment, text_field, counts)
        return
    with open_binary(segment.path, segment.compression) as raw:
        if segment.end >= 0:
            raw.seek(segment.start)
            stream: BinaryIO = io.BytesIO(raw.read(segment.end - segment.start))
        else:
            stream = raw
        lines = _decoded_lines(stream, segment, counts)
        if segment.format == "jsonl":
            yield from _jsonl_documents(lines, segment, text_field, counts)
        else:
            yield from _text_documents(lines, text_documents, counts)


def _corrupt_errors() -> tuple[type[BaseException], ...]:
    """What a decompressor raises on a truncated or damaged file."""
    errors: tuple[type[BaseException], ...] = (EOFError, OSError, lzma.LZMAError, zlib.error)
    try:
        import zstandard

        errors += (zstandard.ZstdError,)
    except ImportError:
        pass
    return errors


def _corrupt(segment: Segment, counts: ReadCounts, error: BaseException) -> None:
    counts.bad_record("truncated or damaged compressed file (read up to the damage)",
                      f"{segment.path}: {type(error).__name__}: {error}")


def _decoded_lines(stream: BinaryIO, segment: Segment, counts: ReadCounts) -> Iterator[tuple[int, str]]:
    """(line number in the segment, text without its line end); undecodable lines are counted, not yielded.

    A compressed file that ends early or is damaged yields the lines before the damage, and is counted.
    """
    try:
        yield from _lines(stream, segment, counts)
    except _corrupt_errors() as e:
        if segment.compression is None:
            raise
        _corrupt(segment, counts, e)


def _lines(stream: BinaryIO, segment: Segment, counts: ReadCounts) -> Iterator[tuple[int, str]]:
    for number, raw in enumerate(stream, 1):
        counts.input_bytes += len(raw)
        if number == 1 and segment.start == 0 and raw.startswith(b"\xef\xbb\xbf"):
            raw = raw[3:]
        try:
            if b"\0" in raw:
                raise UnicodeDecodeError("utf-8", raw, 0, 1, "NUL byte")
            yield number, raw.decode("utf-8").rstrip("\r\n")
        except UnicodeDecodeError:
            counts.bad_record("undecodable line (not UTF-8)", f"{segment.path}, byte {segment.start} + line {number}")


def _text_documents(lines: Iterator[tuple[int, str]], text_documents: str, counts: ReadCounts) -> Iterator[str]:
    current: list[str] = []
    for _, line in lines:
        if text_documents == "line":
            if line.strip():
                counts.records += 1
                yield line
            continue
        if line.strip():
            current.append(line)
        elif current:
            counts.records += 1
            yield "\n".join(current)
            current = []
    if current:
        counts.records += 1
        yield "\n".join(current)


def _pick_field(record: dict, text_field: str) -> str | None:
    if text_field:
        return text_field if text_field in record else None
    return next((name for name in DEFAULT_TEXT_FIELDS if name in record), None)


def _jsonl_documents(lines: Iterator[tuple[int, str]], segment: Segment, text_field: str,
                     counts: ReadCounts) -> Iterator[str]:
    for number, line in lines:
        if not line.strip():
            continue
        where = f"{segment.path}, byte {segment.start} + line {number}"
        try:
            record = json.loads(line)
        except ValueError:
            counts.bad_record("malformed JSON line", where)
            continue
        name = _pick_field(record, text_field) if isinstance(record, dict) else None
        if name is None:
            counts.bad_record(_missing_field_kind(text_field), where)
            continue
        if not isinstance(record[name], str):
            counts.bad_record(f"text field is not a string ({name})", where)
            continue
        counts.records += 1
        yield record[name]


def _missing_field_kind(text_field: str) -> str:
    wanted = repr(text_field) if text_field else "any of " + ", ".join(DEFAULT_TEXT_FIELDS)
    return f"record without the text field ({wanted}; set --text-field)"


def _csv_header(segment: Segment) -> list[str]:
    """The header row of a CSV file (for a task that starts in the middle of it)."""
    with open(segment.path, "rb") as raw:
        text = io.TextIOWrapper(raw, encoding="utf-8", errors="surrogateescape", newline="")
        return next(csv.reader(text, delimiter="\t" if segment.format == "tsv" else ","), [])


def _csv_documents(segment: Segment, text_field: str, counts: ReadCounts) -> Iterator[str]:
    csv.field_size_limit(CSV_FIELD_LIMIT)
    with open_binary(segment.path, segment.compression) as raw:
        if segment.end >= 0:  # a byte range of an uncompressed file, cut between records
            raw.seek(segment.start)
            raw = io.BytesIO(raw.read(segment.end - segment.start))
        counting = _CountingReader(raw, counts)
        # surrogateescape keeps undecodable bytes as lone surrogates: the row that holds them is
        # dropped and counted, the rest of the file is read.
        text = io.TextIOWrapper(counting, encoding="utf-8", errors="surrogateescape", newline="")
        reader = csv.reader(text, delimiter="\t" if segment.format == "tsv" else ",")
        origin = f"{segment.path}, byte {segment.start} + row" if segment.start else f"{segment.path}, row"
        header: list[str] | None = None
        column = None
        if segment.start:
            header = [h.lstrip(_BOM).strip() for h in _csv_header(segment)]
            name = _pick_field(dict.fromkeys(header), text_field)
            column = header.index(name) if name is not None else None
        row_number = 0
        while True:
            try:
                row = next(reader)
            except StopIteration:
                break
            except _corrupt_errors() as e:
                if segment.compression is None:
                    raise
                _corrupt(segment, counts, e)
                break
            except csv.Error as e:
                row_number += 1
                counts.bad_record("malformed CSV row", f"{origin} {row_number}: {e}")
                continue
            row_number += 1
            if header is None:
                header = [h.lstrip(_BOM).strip() for h in row]
                record = dict.fromkeys(header)
                name = _pick_field(record, text_field)
                column = header.index(name) if name is not None else None
                continue
            if not any(cell.strip() for cell in row):
                continue
            where = f"{origin} {row_number}"
            if column is None:
                counts.bad_record(_missing_field_kind(text_field), where)
                continue
            if len(row) <= column:
                counts.bad_record("malformed CSV row", f"{where}: {len(row)} of {len(header)} columns")
                continue
            value = row[column]
            if _has_surrogates(value):
                counts.bad_record("undecodable record (not UTF-8)", where)
                continue
            counts.records += 1
            yield value


def _has_surrogates(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


class _CountingReader(io.RawIOBase):
    """Counts the decompressed bytes a CSV reader consumes (for the report and the speed figures)."""

    def __init__(self, raw: BinaryIO, counts: ReadCounts):
        self.raw, self.counts = raw, counts

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        data = self.raw.read(len(buffer))
        n = len(data)
        buffer[:n] = data
        self.counts.input_bytes += n
        return n
