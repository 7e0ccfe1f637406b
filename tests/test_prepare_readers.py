"""`prepare`'s readers: every input format, compressed and malformed inputs, and the task plan."""

from __future__ import annotations

import bz2
import gzip
import json
import lzma
from pathlib import Path

import pytest

from kobert_pretrain.prepare.readers import (
    ReadCounts,
    Segment,
    compression_of,
    format_of,
    iter_documents,
    plan_tasks,
)

DOCS = ["첫 문서의 첫 문단.\n둘째 문단.", "둘째 문서.", "셋째 문서는 \"따옴표\"와, 쉼표를 담는다."]


def read_all(path: Path, fmt: str = "auto", text_documents: str = "blank_line", text_field: str = ""):
    counts = ReadCounts()
    docs = []
    for task in plan_tasks([path], fmt, text_documents, chunk_bytes=1 << 30):
        for segment in task:
            docs.extend(iter_documents(segment, text_documents, text_field, counts))
    return docs, counts


def as_text(docs) -> bytes:
    return ("\n\n".join(docs) + "\n").encode()


def as_jsonl(docs, key="text") -> bytes:
    return "".join(json.dumps({"id": i, key: d}, ensure_ascii=False) + "\n" for i, d in enumerate(docs)).encode()


def as_csv(docs) -> bytes:
    rows = ["제목,내용"] + [f'"제목 {i}","{d.replace(chr(34), chr(34) * 2)}"' for i, d in enumerate(docs)]
    return ("\r\n".join(rows) + "\r\n").encode()


# The fastest settings (the tests compress about 1 MB): what is read back does not depend on them.
COMPRESSORS = {"": lambda b: b, ".gz": lambda b: gzip.compress(b, 1), ".bz2": lambda b: bz2.compress(b, 1),
               ".xz": lambda b: lzma.compress(b, preset=0)}


def zstd_compress(data: bytes) -> bytes:
    import zstandard

    return zstandard.ZstdCompressor().compress(data)


COMPRESSORS[".zst"] = zstd_compress


@pytest.mark.parametrize("suffix", list(COMPRESSORS))
@pytest.mark.parametrize("kind, encode", [("txt", as_text), ("jsonl", as_jsonl), ("csv", as_csv)])
def test_every_format_and_compression_reads_the_same_documents(tmp_path, kind, encode, suffix):
    path = tmp_path / f"input.{kind}{suffix}"
    path.write_bytes(COMPRESSORS[suffix](encode(DOCS)))
    docs, counts = read_all(path)
    assert docs == DOCS
    assert (counts.records, counts.bad) == (3, {})
    assert counts.input_bytes == len(encode(DOCS))
    assert compression_of(path) == {"": None, ".gz": "gzip", ".bz2": "bzip2", ".xz": "xz", ".zst": "zstd"}[suffix]


def test_compression_is_found_by_content_not_name(tmp_path):
    path = tmp_path / "mislabelled.txt"
    path.write_bytes(gzip.compress(as_text(DOCS)))
    assert read_all(path)[0] == DOCS


def test_format_by_name_and_forced():
    assert format_of(Path("a.jsonl.gz"), "auto") == "jsonl"
    assert format_of(Path("wiki.json"), "auto") == "jsonl"
    assert format_of(Path("a.CSV"), "auto") == "csv"
    assert format_of(Path("a.tsv.zst"), "auto") == "tsv"
    assert format_of(Path("a.txt"), "auto") == "text"
    assert format_of(Path("data.bin"), "jsonl") == "jsonl"


def test_text_one_document_per_line(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("첫 문서.\n둘째 문서.\n\n셋째.\n", encoding="utf-8")
    assert read_all(path, text_documents="line")[0] == ["첫 문서.", "둘째 문서.", "셋째."]
    assert read_all(path)[0] == ["첫 문서.\n둘째 문서.", "셋째."]


def test_malformed_jsonl_lines_are_counted_not_fatal(tmp_path):
    path = tmp_path / "a.jsonl"
    lines = ['{"text": "좋은 줄."}', '{"text": "깨진 줄', "[1, 2]", '{"title": "본문 없음"}', '{"text": 5}',
             '{"text": "또 좋은 줄."}']
    path.write_bytes(("\n".join(lines) + "\n").encode() + b'{"text": "\xb0\xa1 cp949"}\n')
    docs, counts = read_all(path)
    assert docs == ["좋은 줄.", "또 좋은 줄."]
    assert counts.records == 2
    assert counts.bad == {
        "malformed JSON line": 1,
        "record without the text field (any of text, body, content, 내용, 본문; set --text-field)": 2,
        "text field is not a string (text)": 1,
        "undecodable line (not UTF-8)": 1,
    }
    assert counts.bad_examples["malformed JSON line"] == f"{path}, byte 0 + line 2"


def test_text_field_is_chosen_by_name(tmp_path):
    path = tmp_path / "wiki.jsonl"
    path.write_text(json.dumps({"title": "제목", "article": "본문이다."}, ensure_ascii=False) + "\n", encoding="utf-8")
    assert read_all(path, text_field="article")[0] == ["본문이다."]
    docs, counts = read_all(path, text_field="body")
    assert docs == [] and counts.bad == {"record without the text field ('body'; set --text-field)": 1}


def test_csv_quoted_newlines_bad_bytes_and_short_rows(tmp_path):
    path = tmp_path / "a.csv"
    path.write_bytes(b'\xef\xbb\xbftitle,body\n"t1","one\n\ntwo"\n"t2","\xb0\xa1"\n"t3"\n"t4","four"\n')
    docs, counts = read_all(path)
    assert docs == ["one\n\ntwo", "four"]
    assert counts.bad == {"undecodable record (not UTF-8)": 1, "malformed CSV row": 1}


def test_csv_without_the_text_column(tmp_path):
    path = tmp_path / "a.csv"
    path.write_text("a,b\n1,2\n3,4\n", encoding="utf-8")
    docs, counts = read_all(path)
    assert docs == [] and sum(counts.bad.values()) == 2


@pytest.mark.parametrize("suffix", [".gz", ".bz2", ".xz", ".zst"])
@pytest.mark.parametrize("kind, encode", [("txt", as_text), ("csv", as_csv)])
def test_truncated_compressed_file_keeps_what_was_read(tmp_path, suffix, kind, encode):
    path = tmp_path / f"a.{kind}{suffix}"
    # Numbers that differ from document to document: the compressed file is long enough to cut in the middle.
    docs = [f"{i}번 문서: " + " ".join(str(i * j % 9973) for j in range(100)) for i in range(1500)]
    # bzip2 level 1 has 100 kB blocks: the first half of the file holds whole blocks.
    whole = COMPRESSORS[suffix](encode(docs))
    path.write_bytes(whole[: len(whole) // 2])
    read, counts = read_all(path)
    assert 100 < len(read) < 1500 and read[:-1] == docs[:len(read) - 1]
    assert counts.bad.keys() == {"truncated or damaged compressed file (read up to the damage)"}


def test_undecodable_text_lines_are_dropped(tmp_path):
    path = tmp_path / "a.txt"
    path.write_bytes("좋은 줄.\n".encode() + b"\xb0\xa1\xb0\xa2\n" + b"nul\x00byte\n" + "끝.\n".encode())
    docs, counts = read_all(path)
    assert docs == ["좋은 줄.\n끝."]
    assert counts.bad == {"undecodable line (not UTF-8)": 2}


def test_plan_cuts_big_files_at_document_boundaries_and_groups_small_ones(tmp_path):
    big = tmp_path / "a.txt"
    big.write_text("".join(f"문서 {i} 첫 줄.\n둘째 줄.\n\n" for i in range(100)), encoding="utf-8")
    small = [tmp_path / f"s{i}.jsonl" for i in range(3)]
    for p in small:
        p.write_text('{"text": "작은 파일."}\n', encoding="utf-8")
    packed = tmp_path / "c.csv"
    packed.write_bytes(as_csv(DOCS))
    tasks = plan_tasks([big, *small, packed], "auto", "blank_line", chunk_bytes=500)
    segments = [s for t in tasks for s in t]
    pieces = [s for s in segments if s.path == str(big)]
    assert len(pieces) > 3 and pieces[0].start == 0 and pieces[-1].end == big.stat().st_size
    assert all(a.end == b.start for a, b in zip(pieces, pieces[1:]))
    data = big.read_bytes()
    assert all(data[s.start - 2:s.start] == b"\n\n" for s in pieces[1:])
    assert [s for s in segments if s.path == str(packed)] == [Segment(str(packed), 0, packed.stat().st_size, "csv",
                                                                      None)]
    counts = ReadCounts()
    docs = [d for s in segments for d in iter_documents(s, "blank_line", "", counts)]
    assert docs == [f"문서 {i} 첫 줄.\n둘째 줄." for i in range(100)] + ["작은 파일."] * 3 + DOCS
    assert plan_tasks([big, *small, packed], "auto", "blank_line", 500) == tasks  # depends on the files only


def test_plan_cuts_csv_between_records_and_every_piece_knows_the_header(tmp_path):
    path = tmp_path / "a.csv"
    docs = [f"{i}번 기사.\n\n\"인용\", 그리고 둘째 문단, 쉼표." * (1 + i % 3) for i in range(60)]
    path.write_bytes(as_csv(docs))
    tasks = plan_tasks([path], "auto", "blank_line", chunk_bytes=700)
    segments = [s for t in tasks for s in t]
    assert len(segments) > 5 and segments[0].start == 0 and segments[-1].end == path.stat().st_size
    counts = ReadCounts()
    assert [d for s in segments for d in iter_documents(s, "blank_line", "", counts)] == docs
    assert (counts.records, counts.bad, counts.input_bytes) == (60, {}, path.stat().st_size)
    gz = tmp_path / "a.csv.gz"
    gz.write_bytes(gzip.compress(path.read_bytes()))
    assert plan_tasks([gz], "auto", "blank_line", chunk_bytes=700) == [[Segment(str(gz), 0, -1, "csv", "gzip")]]
