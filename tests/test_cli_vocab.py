"""`kobert-pretrain vocab` as a user runs it: success and every bad-input case."""

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
def test_write_error_leaves_nothing(tmp_path, monkeypatch, demo_corpus):
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
