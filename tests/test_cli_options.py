"""Bad options and paths for the subcommands without a config: demo-corpus, export, inspect, doctor, hostfile, launch."""

from __future__ import annotations

import hashlib

import pytest

from conftest import assert_one_line_error, run_cli


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_demo_corpus_never_overwrites(tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes\n")
    before = _sha(notes)
    assert_one_line_error(run_cli("demo-corpus", "--out", notes),
                          f"kobert-pretrain: error: --out {notes} already exists; demo-corpus never overwrites: "
                          "choose a new file or remove it")
    assert _sha(notes) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_demo_corpus_into_a_directory_or_below_a_file(tmp_path):
    assert_one_line_error(run_cli("demo-corpus", "--out", tmp_path),
                          f"kobert-pretrain: error: --out {tmp_path} is a directory; give a file name, "
                          f"e.g. {tmp_path / 'corpus.txt'}")
    (tmp_path / "afile").write_text("x")
    assert_one_line_error(run_cli("demo-corpus", "--out", tmp_path / "afile" / "c.txt"),
                          f"--out {tmp_path / 'afile' / 'c.txt'}: {tmp_path / 'afile'} is a file, not a directory")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


def test_demo_corpus_writes_a_new_file(tmp_path):
    result = run_cli("demo-corpus", "--out", tmp_path / "sub" / "c.txt")
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{tmp_path / 'sub' / 'c.txt'}\n"
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == ["c.txt"]


def test_no_clobber_write_refuses_a_file_that_appeared(tmp_path):
    from kobert_pretrain.errors import UserError
    from kobert_pretrain.fsutil import atomic_write_bytes

    target = tmp_path / "t.txt"
    target.write_bytes(b"first")
    with pytest.raises(UserError, match="already exists; it is never overwritten"):
        atomic_write_bytes(target, b"second", overwrite=False)
    assert target.read_bytes() == b"first"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.txt"]
    atomic_write_bytes(tmp_path / "new.txt", b"new", overwrite=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new.txt", "t.txt"]


@pytest.mark.parametrize("command", [["export", "RUN", "--out", "OUT"], ["inspect", "RUN"], ["doctor", "--local"],
                                     ["hostfile", "HOSTS"], ["demo-corpus", "--out", "OUT"],
                                     ["launch", "-np", "1", "-H", "localhost:1"]])
def test_subcommands_without_config_reject_overrides(tmp_path, command):
    (tmp_path / "HOSTS").write_text("localhost\n")
    args = [str(tmp_path / a) if a in ("RUN", "OUT", "HOSTS") else a for a in command]
    result = run_cli(*args, "--foo.bar=1", "--train.max_steps=3")
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines()[-1] == (
        "kobert-pretrain: error: unrecognized arguments: --foo.bar=1 --train.max_steps=3 "
        f"({command[0]} reads no config, so it takes no --section.field=value)")
    assert "Traceback" not in result.stderr and result.stdout == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["HOSTS"]


@pytest.mark.parametrize("slots", ["0", "-3", "1025"])
def test_hostfile_slots_out_of_range(tmp_path, slots):
    (tmp_path / "hosts").write_text("good\n")
    assert_one_line_error(run_cli("hostfile", tmp_path / "hosts", "--slots", slots),
                          f"kobert-pretrain: error: --slots: slots must be between 1 and 1024, got {int(slots)}")


def test_hostfile_slots_override(tmp_path):
    (tmp_path / "hosts").write_text("a slots=2\nb\n")
    result = run_cli("hostfile", tmp_path / "hosts", "--slots", "4")
    assert result.returncode == 0 and result.stdout == "a slots=4\nb slots=4\n"


@pytest.mark.parametrize("flag,value,message", [
    ("--max-restarts", "-1", "--max-restarts -1 must be >= 0"),
    ("--backoff", "-0.5", "--backoff -0.5 must be >= 0"),
    ("--gloo-timeout", "0", "--gloo-timeout 0 must be >= 1"),
    ("--stall-timeout", "-1", "--stall-timeout -1 must be >= 0"),
])
def test_launch_rejects_negative_settings(tmp_path, flag, value, message):
    result = run_cli("launch", "-np", "1", "-H", "localhost:1", flag, value, "--", "train", "--out", tmp_path / "r")
    assert_one_line_error(result, f"kobert-pretrain: error: {message}")
    assert "attempt 1" not in result.stderr and not (tmp_path / "r").exists()
