"""fsutil: temporary output directories left by killed processes are cleaned up, safely."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys

from kobert_pretrain.fsutil import atomic_output_dir, process_namespace_tag, temporary_prefix

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

