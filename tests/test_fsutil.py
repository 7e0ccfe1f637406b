"""fsutil: the atomic checksummed directory writer and its verifier; temporary output directories left by
killed processes are cleaned up, safely."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys

import pytest

from kobert_pretrain.fsutil import (atomic_dir, atomic_output_dir, process_namespace_tag, sha256_file,
                                   temporary_prefix, verify_files)

from conftest import ROOT


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    return int(proc.stdout)


def test_temporary_name_carries_host_and_pid(tmp_path):
    out = tmp_path / "release"
    with atomic_output_dir(out, "convert") as tmp:
        assert tmp.name == f".release.tmp-{process_namespace_tag()}-{os.getpid()}"
        assert process_namespace_tag().startswith(socket.gethostname())
        (tmp / "a.txt").write_text("a")
    assert (out / "a.txt").read_text() == "a"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["release"]


def test_only_dead_processes_of_this_host_lose_their_temporary_dirs(tmp_path):
    out = tmp_path / "release"
    prefix = temporary_prefix(out)
    pid = dead_pid()
    stale = tmp_path / f"{prefix}{pid}"
    (stale / "sub").mkdir(parents=True)
    (stale / "sub" / "model.onnx").write_bytes(b"half")
    kept = [
        tmp_path / f"{prefix}{os.getppid()}",  # a live process of this host
        tmp_path / f".release.tmp-other-node.example-{pid}",  # another host: its pids mean nothing here
        tmp_path / f".release.tmp-{pid}",  # the old name without a host: cannot tell whose it is
        tmp_path / f".other.tmp-{process_namespace_tag()}-{pid}",  # another output's
        tmp_path / f"{prefix}{pid}x",  # not a pid
    ]
    for path in kept:
        path.mkdir()
    with atomic_output_dir(out, "convert") as tmp:
        assert not stale.exists()
        (tmp / "a.txt").write_text("a")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([p.name for p in kept] + ["release"])


def test_a_process_killed_inside_leaves_a_directory_the_next_run_removes(tmp_path):
    out = tmp_path / "vocab"
    script = ("import os, signal, sys\nfrom kobert_pretrain.fsutil import atomic_output_dir\n"
              "with atomic_output_dir(sys.argv[1], 'vocab') as tmp:\n"
              "    (tmp / 'spm.model').write_bytes(b'half')\n"
              "    os.kill(os.getpid(), signal.SIGKILL)\n")
    killed = subprocess.run([sys.executable, "-c", script, str(out)], cwd=ROOT)
    assert killed.returncode == -signal.SIGKILL
    (left,) = tmp_path.iterdir()  # the killed process's half-built directory
    assert left.name.startswith(temporary_prefix(out)) and left.name[len(temporary_prefix(out)):].isdigit()
    assert (left / "spm.model").read_bytes() == b"half"
    with atomic_output_dir(out, "vocab") as tmp:
        (tmp / "spm.model").write_bytes(b"whole")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vocab"]
    assert (out / "spm.model").read_bytes() == b"whole"


def test_atomic_dir_writes_the_manifest_last_and_verify_files_checks_it(tmp_path):
    final, tmp = tmp_path / "out", tmp_path / "out.tmp-1"
    with atomic_dir(tmp, final, manifest="meta.json", manifest_fields={"format": "x/1"}) as building:
        assert building == tmp and not final.exists()
        (building / "a.bin").write_bytes(b"abc")
    meta = json.loads((final / "meta.json").read_text())
    assert meta == {"format": "x/1", "files": {"a.bin": {"sha256": sha256_file(final / "a.bin"), "bytes": 3}}}
    assert not tmp.exists() and verify_files(final, meta["files"]) is None
    assert verify_files(final, {"a.bin": sha256_file(final / "a.bin")}) is None  # the {name: sha256} form
    (final / "a.bin").write_bytes(b"abd")
    assert verify_files(final, meta["files"]) == "a.bin fails its checksum"
    (final / "a.bin").write_bytes(b"ab")
    assert verify_files(final, meta["files"]) == "a.bin has 2 bytes, 3 expected"
    (final / "a.bin").unlink()
    assert verify_files(final, meta["files"]) == "a.bin is missing or unreadable"
    with pytest.raises(ValueError, match="malformed manifest entry for a.bin"):
        verify_files(final, {"a.bin": {"sha256": "0"}})


def test_atomic_dir_on_error_runs_before_the_partial_files_go(tmp_path):
    final, tmp = tmp_path / "out", tmp_path / "out.tmp-1"
    seen = []
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_dir(tmp, final, on_error=lambda e: seen.append((str(e), (tmp / "part").exists()))) as building:
            (building / "part").write_bytes(b"x")
            raise RuntimeError("boom")
    assert seen == [("boom", True)] and not tmp.exists() and not final.exists()
