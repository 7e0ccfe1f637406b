"""Input reading (text.py) as `kobert-pretrain vocab` meets it: success and every bad-input case."""

from __future__ import annotations

import pytest

from conftest import assert_one_line_error, run_cli

KOREAN = "대한민국은 민주공화국이다.\n모든 권력은 국민으로부터 나온다.\n"


def _no_partial(parent, name):
    """Neither the output directory nor a temporary sibling exists."""
    return not (parent / name).exists() and not any(p.name.startswith(f".{name}.tmp") for p in parent.iterdir())


def test_vocab_cli_builds_a_directory(tmp_path, demo_corpus):
    result = run_cli("vocab", "--config", "configs/debug.toml", "--input", demo_corpus, "--out", tmp_path / "v",
                     "--vocab-size", "800")
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (tmp_path / "v").iterdir()) == ["config.json", "spm.model", "vocab.json", "vocab.txt"]
    assert "800 pieces from 2,423 sentences" in result.stderr
    assert _no_partial(tmp_path, "x")


def test_missing_input(tmp_path):
    assert_one_line_error(run_cli("vocab", "-i", tmp_path / "nope.txt", "-o", tmp_path / "v"), "input not found", "nope.txt")
    assert _no_partial(tmp_path, "v")


def test_glob_matching_nothing(tmp_path):
    assert_one_line_error(run_cli("vocab", "-i", str(tmp_path / "*.txt"), "-o", tmp_path / "v"), "matches no files")


def test_empty_file_and_empty_directory(tmp_path):
    (tmp_path / "empty.txt").write_bytes(b"")
    assert_one_line_error(run_cli("vocab", "-i", tmp_path / "empty.txt", "-o", tmp_path / "v"), "empty")
    (tmp_path / "dir").mkdir()
    assert_one_line_error(run_cli("vocab", "-i", tmp_path / "dir", "-o", tmp_path / "v"), "holds no files")
    (tmp_path / "blank.txt").write_text("\n  \n\n")
    assert_one_line_error(run_cli("vocab", "-i", tmp_path / "blank.txt", "-o", tmp_path / "v"), "only blank lines")
    assert _no_partial(tmp_path, "v")


def test_legacy_encoding_is_explained(tmp_path):
    (tmp_path / "cp949.txt").write_bytes((KOREAN * 20).encode("cp949"))
    assert_one_line_error(run_cli("vocab", "-i", tmp_path / "cp949.txt", "-o", tmp_path / "v", "--vocab-size", "50"),
                    "no valid UTF-8 text", "iconv")
    assert _no_partial(tmp_path, "v")


def test_undecodable_lines_are_skipped_and_counted(tmp_path, demo_corpus):
    data = demo_corpus.read_bytes() + "잘못된 줄\n".encode("cp949") * 3 + b"\xff\xfe\n"
    (tmp_path / "mixed.txt").write_bytes(data)
    result = run_cli("vocab", "--config", "configs/debug.toml", "-i", tmp_path / "mixed.txt", "-o", tmp_path / "v")
    assert result.returncode == 0, result.stderr
    assert "skipped 4 line(s) that are not valid UTF-8" in result.stderr
    assert (tmp_path / "v" / "spm.model").is_file()


def test_corpus_too_small_for_vocab(tmp_path):
    (tmp_path / "small.txt").write_text(KOREAN * 10, encoding="utf-8")
    assert_one_line_error(run_cli("vocab", "-i", tmp_path / "small.txt", "-o", tmp_path / "v"),
                    "corpus too small for --vocab-size 8002", "lower --vocab-size")
    assert _no_partial(tmp_path, "v")


def test_existing_output_is_never_overwritten(tmp_path, demo_corpus):
    out = tmp_path / "v"
    out.mkdir()
    (out / "spm.model").write_bytes(b"precious")
    assert_one_line_error(run_cli("vocab", "-i", demo_corpus, "-o", out, "--vocab-size", "800"), "already holds files")
    assert (out / "spm.model").read_bytes() == b"precious"
    assert sorted(p.name for p in out.iterdir()) == ["spm.model"]


def test_empty_existing_output_dir_is_used(tmp_path, demo_corpus):
    (tmp_path / "v").mkdir()
    result = run_cli("vocab", "-i", demo_corpus, "-o", tmp_path / "v", "--vocab-size", "800", "--num-threads", "2")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "v" / "spm.model").is_file()


def test_directory_and_glob_inputs(tmp_path, demo_corpus):
    docs = demo_corpus.read_text(encoding="utf-8").split("\n\n")
    (tmp_path / "in" / "sub").mkdir(parents=True)
    (tmp_path / "in" / "a.txt").write_text("\n\n".join(docs[:10]), encoding="utf-8")
    (tmp_path / "in" / "sub" / "b.txt").write_text("\n\n".join(docs[10:]), encoding="utf-8")
    (tmp_path / "in" / "sub" / "c.txt").write_bytes(b"")
    for inputs in (["-i", tmp_path / "in"], ["-i", str(tmp_path / "in" / "**" / "*.txt")]):
        out = tmp_path / f"v{len(inputs[1].__str__())}"
        result = run_cli("vocab", *inputs, "-o", out, "--vocab-size", "800", "--num-threads", "2")
        assert result.returncode == 0, result.stderr
        assert "skipped 1 empty file(s)" in result.stderr
        assert "(3 file(s)" in result.stderr


def test_python_dash_m_and_version():
    result = run_cli("--version")
    assert result.returncode == 0 and result.stdout.startswith("kobert-pretrain ")


def test_unknown_argument_is_a_usage_error(tmp_path):
    result = run_cli("vocab", "--no-such-flag")
    assert result.returncode == 2 and "unrecognized arguments: --no-such-flag" in result.stderr


@pytest.mark.skipif(not __import__("os").path.exists("/dev/full"), reason="needs /dev/full")
def test_write_error_leaves_nothing(tmp_path, monkeypatch, capsys, demo_corpus):
    # An injected ENOSPC while the directory is being written: the error is one line
    # and no partial output is left under the final name.
    import errno
    from pathlib import Path

    from kobert_pretrain import cli

    real = Path.write_text

    def full(self, *a, **k):
        if self.name == "vocab.json":
            raise OSError(errno.ENOSPC, "No space left on device", str(self))
        return real(self, *a, **k)

    monkeypatch.setattr(Path, "write_text", full)
    code = cli.main(["vocab", "-i", str(demo_corpus), "-o", str(tmp_path / "v"), "--vocab-size", "800",
                     "--num-threads", "2"])
    assert code == 2
    assert _no_partial(tmp_path, "v")
    # The error names the file under its final name, not the temporary directory it was written in.
    assert capsys.readouterr().err.splitlines()[-1] == \
        f"kobert-pretrain: error: no space left on device while writing {tmp_path / 'v' / 'vocab.json'}"


# ------------------------------------------------- why the text was missing (SentencePiece failures)

LONG_LINE = "가나다라 " * 1400  # 19,600 UTF-8 bytes: over the default max_sentence_length of 16,384


def _stderr_lines(result):
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    return result.stderr.strip().splitlines()


def test_a_single_overlong_line_is_named_as_the_cause(tmp_path):
    (tmp_path / "one.txt").write_text(LONG_LINE + "\n", encoding="utf-8")
    result = run_cli("vocab", "-i", tmp_path / "one.txt", "-o", tmp_path / "v")
    assert _stderr_lines(result) == [
        "kobert-pretrain: error: no text left to train on: all 1 UTF-8 line(s) are longer than "
        "vocab.max_sentence_length=16384 bytes (one sentence per line expected)"]
    assert _no_partial(tmp_path, "v")


def test_cr_only_line_endings_are_named(tmp_path, demo_corpus):
    mac = tmp_path / "mac.txt"
    mac.write_bytes(demo_corpus.read_bytes().replace(b"\n", b"\r"))
    result = run_cli("vocab", "--config", "configs/debug.toml", "-i", mac, "-o", tmp_path / "v")
    assert _stderr_lines(result) == [
        f"kobert-pretrain: error: no text left to train on: 1 file(s) use CR (classic Mac) line endings, e.g. {mac}, "
        "and only \\n ends a line (convert them first, e.g. tr '\\r' '\\n'); all 1 UTF-8 line(s) are longer than "
        "vocab.max_sentence_length=16384 bytes (one sentence per line expected)"]
    assert _no_partial(tmp_path, "v")


def test_whole_cp949_corpus_says_how_many_lines_were_undecodable(tmp_path, demo_corpus):
    # The demo corpus in cp949: its 326 pure-ASCII lines (article numbers, dates) still decode as UTF-8.
    cp949 = tmp_path / "cp949.txt"
    cp949.write_bytes(demo_corpus.read_text(encoding="utf-8").encode("cp949", errors="replace"))
    result = run_cli("vocab", "--config", "configs/debug.toml", "-i", cp949, "-o", tmp_path / "v")
    [line] = _stderr_lines(result)
    assert line.startswith("kobert-pretrain: error: corpus too small for --vocab-size 1000: it supports at most ")
    assert line.endswith(" pieces; text was dropped: 2097 of 2423 line(s) are not valid UTF-8 (convert them first, "
                         "e.g. iconv -f cp949 -t utf-8); lower --vocab-size or add text")
    assert _no_partial(tmp_path, "v")


def test_utf16_file_is_named(tmp_path, demo_corpus):
    utf16 = tmp_path / "utf16.txt"
    utf16.write_bytes(demo_corpus.read_text(encoding="utf-8").encode("utf-16"))
    result = run_cli("vocab", "--config", "configs/debug.toml", "-i", utf16, "-o", tmp_path / "v")
    assert _stderr_lines(result) == [
        f"kobert-pretrain: error: no text left to train on: 1 file(s) are UTF-16, e.g. {utf16} "
        "(convert them first, e.g. iconv -f utf-16 -t utf-8)"]


def test_utf16_file_beside_good_text_is_skipped_with_a_warning(tmp_path, demo_corpus):
    utf16 = tmp_path / "utf16.txt"
    utf16.write_bytes(demo_corpus.read_text(encoding="utf-8").encode("utf-16"))
    result = run_cli("vocab", "--config", "configs/debug.toml", "-i", demo_corpus, "-i", utf16, "-o", tmp_path / "v")
    assert result.returncode == 0, result.stderr
    assert (f"kobert-pretrain: warning: skipped 1 UTF-16 file(s), e.g. {utf16}; convert them first, "
            "e.g. iconv -f utf-16 -t utf-8") in result.stderr.splitlines()
    assert "1000 pieces from 2,423 sentences" in result.stderr


def test_binary_garbage_warnings_come_before_the_error(tmp_path):
    import numpy as np

    (tmp_path / "garbage.bin").write_bytes(np.random.default_rng(0).bytes(100_000))
    (tmp_path / "empty.txt").write_bytes(b"")
    result = run_cli("vocab", "-i", tmp_path / "garbage.bin", "-i", tmp_path / "empty.txt", "-o", tmp_path / "v")
    assert _stderr_lines(result) == [
        f"kobert-pretrain: warning: skipped 1 empty file(s), e.g. {tmp_path / 'empty.txt'}",
        "kobert-pretrain: error: no valid UTF-8 text in the inputs (393 undecodable lines skipped); "
        "convert them first, e.g. iconv -f cp949 -t utf-8"]
    assert _no_partial(tmp_path, "v")


def test_too_small_corpus_also_names_dropped_lines(tmp_path):
    (tmp_path / "small.txt").write_text(KOREAN * 10 + LONG_LINE + "\n", encoding="utf-8")
    result = run_cli("vocab", "-i", tmp_path / "small.txt", "-o", tmp_path / "v")
    [line] = _stderr_lines(result)
    assert line.startswith("kobert-pretrain: error: corpus too small for --vocab-size 8002: it supports at most ")
    assert line.endswith(" pieces; text was dropped: 1 of 21 UTF-8 line(s) are longer than "
                         "vocab.max_sentence_length=16384 bytes (one sentence per line expected); "
                         "lower --vocab-size or add text")


def test_reading_counts_cr_nul_and_utf16(tmp_path):
    from kobert_pretrain.text import ReadStats, iter_lines

    (tmp_path / "a.txt").write_bytes(b"one\r\ntwo\r\n\r\nthree\n")  # CRLF: fine, not flagged
    (tmp_path / "b.txt").write_bytes(b"x\ry\rz\n\x00\x01\n")       # CR inside a line; a NUL line
    (tmp_path / "c.txt").write_bytes("가\n".encode("utf-16"))
    stats = ReadStats()
    paths = [tmp_path / n for n in ("a.txt", "b.txt", "c.txt")]
    assert list(iter_lines(paths, stats)) == ["one", "two", "", "three", "", "x\ry\rz", "", ""]
    assert (stats.lines, stats.blank_lines, stats.undecodable_lines) == (6, 1, 1)
    assert stats.cr_files == [str(tmp_path / "b.txt")]
    assert stats.utf16_files == [str(tmp_path / "c.txt")]
    assert stats.bytes == sum(p.stat().st_size for p in paths)


# ------------------------------------------------- output paths and full disks


def test_out_below_a_regular_file(tmp_path, demo_corpus):
    afile = tmp_path / "afile"
    afile.write_bytes(b"keep me")
    assert_one_line_error(run_cli("vocab", "-i", demo_corpus, "-o", afile / "V"),
                          f"--out {afile / 'V'}: {afile} is a file, not a directory")
    assert afile.read_bytes() == b"keep me"


def test_full_disk_names_the_output_and_leaves_nothing(full_disk, demo_corpus):
    assert_one_line_error(run_cli("vocab", "--config", "configs/debug.toml", "-i", demo_corpus, "-o", full_disk / "v"),
                          f"kobert-pretrain: error: no space left on device while writing {full_disk / 'v'}")
    assert_one_line_error(run_cli("demo-corpus", "--out", full_disk / "corpus.txt"),
                          f"kobert-pretrain: error: no space left on device while writing {full_disk / 'corpus.txt'}")
    assert sorted(p.name for p in full_disk.iterdir()) == ["filler"]


def test_os_errors_are_one_line():
    import errno

    from kobert_pretrain.cli import describe_os_error

    assert describe_os_error(OSError(errno.ENOSPC, "No space left on device", "/data/v")) == \
        "no space left on device while writing /data/v"
    assert describe_os_error(OSError(errno.ENOSPC, "No space left on device")) == "no space left on device"
    assert describe_os_error(OSError(errno.EACCES, "Permission denied", "/data/v")) == "Permission denied: /data/v"
