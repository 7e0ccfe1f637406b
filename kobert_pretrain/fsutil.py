"""Atomic file and directory writes, checksums.

Nothing the toolkit writes ever appears under its final name half-written:
files are written to a temporary sibling, fsynced, then renamed; directories
are built under a temporary sibling name and renamed into place as a whole.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import socket
from pathlib import Path
from typing import Any, Callable, Iterator

from kobert_pretrain.errors import UserError


def sha256_file(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def default_file_mode() -> int:
    """0o666 less the process umask: the mode `open()` gives a new file (0o644 under umask 022)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def fsync_dir(path: str | os.PathLike) -> None:
    """Make a rename inside `path` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | os.PathLike, data: bytes, overwrite: bool = True) -> None:
    """Write `data` to `path` so that readers see either the old file or the whole new one.

    With `overwrite=False` an existing `path` is never replaced, even one created while we
    wrote (the finished file is hard-linked into place, which fails if the name is taken).
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if overwrite:
            os.replace(tmp, path)
        else:
            _link_no_clobber(tmp, path)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        if isinstance(e, OSError):
            name_final_path(e, tmp, path)
        raise
    fsync_dir(path.parent)


def atomic_write_text(path: str | os.PathLike, text: str, overwrite: bool = True) -> None:
    atomic_write_bytes(path, text.encode("utf-8"), overwrite=overwrite)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, sort_keys=True) + "\n")


def _link_no_clobber(tmp: Path, path: Path) -> None:
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise UserError(f"{path} already exists; it is never overwritten: choose another name or remove it") from None
    except OSError as e:
        if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
            raise
        # A file system without hard links: the existence check is as close as we get.
        if path.exists():
            raise UserError(f"{path} already exists; it is never overwritten: choose another name or remove it") \
                from None
        os.replace(tmp, path)
        return
    tmp.unlink()


def name_final_path(error: OSError, tmp: Path, final: Path) -> None:
    """Make an OSError raised while writing the temporary sibling `tmp` name `final`, the path the user gave.

    A write that fails (a full disk) often has no file name at all; it gets `final` too.
    """
    name = error.filename
    if name is None:
        error.filename = str(final)
    elif str(name) == str(tmp) or str(name).startswith(str(tmp) + os.sep):
        error.filename = str(final) + str(name)[len(str(tmp)):]


def disk_full_error(error: BaseException, directory: Path | None = None) -> OSError | None:
    """An ENOSPC OSError if `error` means the storage is full, else None.

    The one test for every writer: ENOSPC or EDQUOT; numpy's short write ("N requested and M written", no
    errno); libraries that say so only in their text (torch, safetensors, MXNet); and, given the
    `directory` being written, an MXNet write failure while less than 1 MiB is free there.
    """
    if isinstance(error, OSError):
        if error.errno in (errno.ENOSPC, errno.EDQUOT):
            return error
        if error.errno is None and re.fullmatch(r"\d+ requested and \d+ written", str(error)):
            return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), error.filename)
    text = str(error)
    full = "No space left on device" in text or "StorageFull" in text
    if not full and directory is not None and type(error).__name__ == "MXNetError" and "FileStream" in text:
        with contextlib.suppress(OSError):
            full = shutil.disk_usage(directory if directory.exists() else directory.parent).free < (1 << 20)
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)) if full else None


def ensure_free_output_dir(out: Path, what: str) -> None:
    """Refuse to write a stage's output over anything already there."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file, not a directory")
    check_parents_are_dirs(out, "--out")
    if out.is_dir() and any(out.iterdir()):
        raise UserError(f"--out {out} already holds files; {what} never overwrites: choose a new directory or remove it")


def check_parents_are_dirs(path: Path, flag: str) -> None:
    """Refuse a path below a regular file (`afile/out`), which could never be created."""
    for parent in Path(path).absolute().parents:
        if parent.exists():
            if not parent.is_dir():
                shown = parent if Path(path).is_absolute() else os.path.relpath(parent)
                raise UserError(f"{flag} {path}: {shown} is a file, not a directory")
            return


def process_namespace_tag() -> str:
    """Names the processes whose pids this process can see: the hostname, plus the pid namespace.

    Two containers may share a hostname (docker --network host) and a mounted volume while each
    has its own pids; the namespace's inode tells them apart where /proc shows it.
    """
    tag = socket.gethostname() or "localhost"
    with contextlib.suppress(OSError):
        tag += f"_pidns{os.stat('/proc/self/ns/pid').st_ino}"
    return tag


def temporary_prefix(out: Path) -> str:
    """`.OUT.tmp-HOST_pidnsN-`: the name of `out`'s temporary sibling, less the pid that ends it."""
    return f".{out.name}.tmp-{process_namespace_tag()}-"


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists here (one of another user counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True  # exists but is not ours; or a pid we cannot ask about: keep its directory
    return True


def remove_stale_temporaries(parent: Path, prefix: str) -> list[Path]:
    """Remove `parent/{prefix}PID` directories whose process is gone (killed with SIGKILL, a crash).

    Only names with exactly this prefix are touched: on a shared filesystem another host (or
    container) may be building the same output, and its pids mean nothing here. Returns the removed.
    """
    removed = []
    try:
        entries = list(parent.iterdir())
    except OSError:
        return removed
    for entry in entries:
        pid = entry.name[len(prefix):]
        if not entry.name.startswith(prefix) or not pid.isdigit() or not pid.isascii():
            continue
        if int(pid) in (0, os.getpid()) or pid_alive(int(pid)) or not entry.is_dir() or entry.is_symlink():
            continue
        shutil.rmtree(entry, ignore_errors=True)
        removed.append(entry)
    return removed


def write_json_durably(path: Path, obj: Any) -> None:
    """`obj` as indented, key-sorted JSON in `path`, fsynced (inside a directory not yet renamed into place)."""
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(obj, fh, indent=2, sort_keys=True)
        fh.flush()
        os.fsync(fh.fileno())


@contextlib.contextmanager
def atomic_dir(tmp: Path, final: Path, manifest: str | None = None, manifest_fields: dict | None = None,
               replace: bool = False, on_error: Callable[[BaseException], None] | None = None,
               durable: bool = True) -> Iterator[Path]:
    """The one way a directory is written: yield `tmp` (created empty); when the block succeeds, fsync every
    file in it, optionally write `manifest` last (`manifest_fields` plus "files": {name: {"sha256", "bytes"}}
    of every file, see `verify_files`), fsync, and rename `tmp` to `final` (replacing an existing `final`
    if `replace`; otherwise `final` must not exist or be an empty directory).

    On any error `on_error(error)` runs first (while the partial files still take their space: is the disk
    full?), then `tmp` is removed and the error propagates; `final` is left as it was. `durable=False`
    skips the fsyncs, for a directory that is verified by its checksums before any reuse (a crash then
    costs a redo, never wrong data). A writer that checksums its files as it writes them (the shard
    writer) writes its own manifest inside the block and passes `manifest=None`.
    """
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        yield tmp
        files = {}
        for child in sorted(tmp.iterdir()):
            if child.is_file():
                if durable:
                    with open(child, "rb") as f:
                        os.fsync(f.fileno())
                if manifest is not None:
                    files[child.name] = {"sha256": sha256_file(child), "bytes": child.stat().st_size}
        if manifest is not None:
            write_json_durably(tmp / manifest, {**(manifest_fields or {}), "files": files})
        if durable:
            fsync_dir(tmp)
        if replace and final.exists():
            shutil.rmtree(final)
        # os.replace moves a directory onto an empty one (POSIX rename semantics).
        os.replace(tmp, final)
        if durable:
            fsync_dir(final.parent)
    except BaseException as e:
        if on_error is not None:
            on_error(e)
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def verify_files(directory: Path, files: dict) -> str | None:
    """None if every file of a manifest's "files" ({name: {"sha256", "bytes"}}, or {name: sha256}) is in
    `directory` with that size and checksum; otherwise what is wrong with the first one that is not.
    A malformed entry raises ValueError."""
    for name, entry in files.items():
        f = directory / name
        try:
            digest, size = (entry, None) if isinstance(entry, str) else (entry["sha256"], entry["bytes"])
            if size is not None and f.stat().st_size != size:
                return f"{name} has {f.stat().st_size} bytes, {size} expected"
            if sha256_file(f) != digest:
                return f"{name} fails its checksum"
        except OSError:
            return f"{name} is missing or unreadable"
        except (TypeError, KeyError):
            raise ValueError(f"malformed manifest entry for {name}: {entry!r}") from None
    return None


@contextlib.contextmanager
def atomic_output_dir(out: str | os.PathLike, what: str) -> Iterator[Path]:
    """Yield a temporary directory that becomes `out` only if the block succeeds.

    `out` must not exist or be empty. On any error the temporary directory is
    removed and `out` is left as it was. Temporary siblings of `out` left by processes of this
    host that died without cleaning up (kill -9) are removed first.
    """
    out = Path(out)
    ensure_free_output_dir(out, what)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create {out.parent}: {e.strerror}") from None
    prefix = temporary_prefix(out)
    remove_stale_temporaries(out.parent, prefix)
    tmp = out.with_name(f"{prefix}{os.getpid()}")
    try:
        with atomic_dir(tmp, out) as building:
            yield building
    except BaseException as e:
        disk_full = disk_full_error(e)
        if disk_full is not None:
            name_final_path(disk_full, tmp, out)
            if disk_full is not e:
                raise disk_full from e
        elif isinstance(e, OSError):
            name_final_path(e, tmp, out)
        raise
