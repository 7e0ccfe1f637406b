"""The on-disk shard format: plain `.npy` arrays, memory-mappable, no pickle.

    OUT/index.json           written last, atomically: vocab sha256, generation config,
                             per-shard counts and sha256, totals
    OUT/config.json          the generation config
    OUT/shard-00000/         one directory per shard, renamed into place when complete
        tokens.npy           uint16 (vocab <= 65,536 pieces) or int32, all instances back to back:
                             [CLS] A [SEP] B [SEP]; with static masking, the masked ids
        offsets.npy          int64 (n + 1,): instance i is tokens[offsets[i]:offsets[i+1]]
        len_a.npy            uint16 (n,): tokens in segment A (segment ids follow from it)
        nsp.npy              uint8 (n,): 1 when B is a random next segment
        mlm_positions.npy    static masking only: uint16, positions within the instance
        mlm_labels.npy       static masking only: original ids at those positions
        mlm_offsets.npy      static masking only: int64 (n + 1,)
        shard.json           counts and the sha256 of every file above; written last

`np.load(path, mmap_mode="r")` maps any of them without reading it.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kobert_pretrain.errors import UserError
from kobert_pretrain.fsutil import (atomic_dir, disk_full_error, remove_stale_temporaries, sha256_file,
                                    temporary_prefix, verify_files)
from kobert_pretrain.masking import MaskingSpec
from kobert_pretrain.vocab import Vocab

INDEX_FILE = "index.json"
FORMAT = "kobert-pretrain-shards/1"
ARRAY_META = "shard.json"
SHARD_DIR_RE = re.compile(r"shard-\d{5}")
REQUIRED_ARRAYS = ("tokens", "offsets", "len_a", "nsp")


class DiskFullError(UserError):
    """The disk filled up while writing: not the input's fault, so finished work is kept for a resume."""


def disk_full(path: Path) -> DiskFullError:
    return DiskFullError(f"no space left on device while writing {path}: free some space and re-run the same "
                         "command to resume (finished work is kept)")


def shard_name(index: int) -> str:
    return f"shard-{index:05d}"


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 65536 else np.dtype(np.int32)


def write_array_dir(path: Path, arrays: dict[str, np.ndarray], meta: dict, durable: bool = True) -> dict:
    """Write arrays as .npy plus a json with their sha256 into `path`, atomically; return that json.

    On any error (a full disk included) the temporary directory is removed: no half-written
    directory is ever left under `path`, so a later run redoes exactly this one.
    durable=False skips the fsyncs, for directories whose every reuse verifies their sha256.
    """
    with ArrayDirWriter(path, durable=durable) as writer:
        for name, array in arrays.items():
            writer.write(name, array)
        return writer.finish(meta)


class NpyStream:
    """One .npy file written front to back in blocks: the bytes `np.save` writes for the whole array.

    The header (dtype and length) is written first, so the length must be known up front; the
    sha256 is computed on the way, so the file is not read back.
    """

    def __init__(self, file: Path, dtype: np.dtype, length: int, durable: bool = True):
        self.file, self.dtype, self.length, self.durable = file, np.dtype(dtype), length, durable
        self.written = 0
        self.digest = hashlib.sha256()
        header = io.BytesIO()
        np.lib.format.write_array_header_1_0(
            header, {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False, "shape": (length,)})
        self._f = open(file, "wb")
        try:
            self._write(header.getvalue())
        except BaseException:
            self.abandon()
            raise

    def append(self, block: np.ndarray) -> None:
        if block.dtype != self.dtype or block.ndim != 1:
            raise ValueError(f"{self.file.name}: a {block.dtype} block of shape {block.shape} for a {self.dtype} file")
        if self.written + len(block) > self.length:
            raise ValueError(f"{self.file.name}: more than the {self.length:,} entries its header gives")
        self._write(np.ascontiguousarray(block).data.cast("B"))
        self.written += len(block)

    def append_bytes(self, pieces: list[bytes]) -> None:
        """Append entries given as raw bytes in this file's dtype, piece by piece (no joined copy)."""
        size = sum(map(len, pieces))
        if size % self.dtype.itemsize or self.written + size // self.dtype.itemsize > self.length:
            raise ValueError(f"{self.file.name}: {size:,} bytes do not fit the {self.length:,} entries "
                             "its header gives")
        for piece in pieces:
            self._write(piece)
        self.written += size // self.dtype.itemsize

    def _write(self, data) -> None:
        try:
            self._f.write(data)
        except OSError as e:
            e.filename = e.filename or str(self.file)  # which of the directory's files the disk failed
            raise
        self.digest.update(data)

    def close(self) -> str:
        """Check the length, make the file durable; return its sha256."""
        if self.written != self.length:
            raise ValueError(f"{self.file.name}: {self.written:,} of the {self.length:,} entries its header gives")
        self._f.flush()
        if self.durable:
            os.fsync(self._f.fileno())
        self._f.close()
        return self.digest.hexdigest()

    def abandon(self) -> None:
        """Close without checks (the directory is being removed): a full disk may fail the flush again."""
        with contextlib.suppress(OSError):
            self._f.close()


class ArrayDirWriter:
    """Builds an array directory with `fsutil.atomic_dir` (in the temporary sibling every output uses,
    `.NAME.tmp-HOST-PID`, renamed into place by `finish`).

        with ArrayDirWriter(path) as writer:
            writer.write("offsets", offsets)              # a whole array
            tokens = writer.stream("tokens", dtype, n)    # or one in blocks
            tokens.append(block) ...
            meta = writer.finish({"shard": s, ...})

    The files are checksummed while they are written (a shard is never read back to hash it) and the
    manifest, shard.json, is written last. Leaving the block without `finish` (any error, a full disk
    included) removes the temporary directory: no half-written directory is ever left under `path`.
    durable=False skips the fsyncs: for phase 1's chunk directories, which are verified by sha256 before
    any reuse, so a crash that loses their data costs a redo, never a wrong shard (the fsyncs were ~7% of
    a run's time).
    """

    def __init__(self, path: Path, durable: bool = True):
        self.path, self.durable = path, durable
        self.tmp = path.with_name(f"{temporary_prefix(path)}{os.getpid()}")
        self._streams: dict[str, NpyStream] = {}
        self._file = self.tmp  # the file being written, for the disk-full message
        self._building = None  # the open `atomic_dir`

    def __enter__(self) -> "ArrayDirWriter":
        # what a killed build of this host left under the same name (kill -9: no cleanup ran)
        remove_stale_temporaries(self.path.parent, temporary_prefix(self.path))
        building = atomic_dir(self.tmp, self.path, replace=True, durable=self.durable)
        try:
            building.__enter__()
        except OSError as e:
            if disk_full_error(e) is not None:
                raise disk_full(self.path) from None
            raise
        self._building = building
        return self

    def stream(self, name: str, dtype: np.dtype, length: int) -> NpyStream:
        self._file = self.tmp / f"{name}.npy"
        stream = self._streams[name] = NpyStream(self._file, dtype, length, self.durable)
        return stream

    def write(self, name: str, array: np.ndarray) -> None:
        self.stream(name, array.dtype, len(array)).append(array)

    def finish(self, meta: dict) -> dict:
        files = {}
        for name, stream in self._streams.items():
            self._file = stream.file
            files[f"{name}.npy"] = stream.close()
        self._streams = {}
        meta = dict(meta, files=files, sha256=combined_sha256(files))
        self._file = self.tmp / ARRAY_META
        with open(self._file, "w", encoding="utf-8") as f:
            json.dump(meta, f, indent=2, sort_keys=True)
            f.write("\n")
        self._building.__exit__(None, None, None)  # fsync, rename into place (an error: see __exit__)
        self._building = None
        return meta

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._building is None:  # finished
            return
        for stream in self._streams.values():
            stream.abandon()
        building, self._building = self._building, None
        if exc_type is None:  # left without finish: nothing is kept
            unfinished = RuntimeError(f"{self.path} left unfinished")
            building.__exit__(RuntimeError, unfinished, None)  # removes the temporary directory
            return
        building.__exit__(exc_type, exc, tb)  # removes the temporary directory; the error propagates
        if isinstance(exc, OSError) and disk_full_error(exc) is not None:
            file = Path(exc.filename) if exc.filename and Path(exc.filename).parent == self.tmp else self._file
            raise disk_full(self.path / file.relative_to(self.tmp)) from None


class NpyReader:
    """Ranges of a 1-D .npy file, read on demand (not memory-mapped).

    Pages read through a mapping count in the process's resident memory (on kernels that map
    whole large page-cache folios, a few random reads map all of a 10 MB chunk file), so phase 2
    reads what it needs into its own bounded buffers instead.
    """

    def __init__(self, file: Path):
        self.file = file
        self._f = open(file, "rb")
        try:
            version = np.lib.format.read_magic(self._f)
            read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                           (2, 0): np.lib.format.read_array_header_2_0}[version]
            shape, _, self.dtype = read_header(self._f)
        except BaseException:
            self._f.close()
            raise
        self.length = shape[0]
        self._data_start = self._f.tell()

    def read(self, lo: int, hi: int) -> np.ndarray:
        """Entries [lo, hi)."""
        lo, hi = int(lo), int(hi)
        if not 0 <= lo <= hi <= self.length:
            raise ValueError(f"{self.file}: entries [{lo}, {hi}) of {self.length}")
        out = np.empty(hi - lo, dtype=self.dtype)
        self._f.seek(self._data_start + lo * self.dtype.itemsize)
        if self._f.readinto(out.data.cast("B")) != out.nbytes:
            raise ValueError(f"{self.file} is truncated")
        return out

    def close(self) -> None:
        self._f.close()


def combined_sha256(files: dict[str, str]) -> str:
    """One digest for a directory of files: sha256 over 'name sha256' lines, sorted by name."""
    text = "".join(f"{name} {files[name]}\n" for name in sorted(files))
    return hashlib.sha256(text.encode()).hexdigest()


def read_array_meta(path: Path) -> dict | None:
    """The json of a complete array directory, or None if it is missing or unreadable."""
    try:
        meta = json.loads((path / ARRAY_META).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) and isinstance(meta.get("files"), dict) else None


def verify_array_dir(path: Path, fingerprint: str | None = None) -> dict | None:
    """The json of `path` if every file matches its recorded sha256 (and the fingerprint), else None."""
    meta = read_array_meta(path)
    if meta is None or (fingerprint is not None and meta.get("fingerprint") != fingerprint):
        return None
    try:
        return meta if verify_files(path, meta["files"]) is None else None
    except ValueError:  # a malformed entry: not a directory this toolkit wrote
        return None


def npy_problem(file: Path, expected_len: int | None = None) -> str | None:
    """What is wrong with a .npy file, judged from its header and size alone (reads no data), or None.

    Only the header is read (about 60 us a file), so checking every file of a 100 GB shard set
    is cheap; the sha256 of the contents is `kobert-pretrain inspect --verify`'s job.
    """
    try:
        size = file.stat().st_size
        with open(file, "rb") as f:
            version = np.lib.format.read_magic(f)
            read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                           (2, 0): np.lib.format.read_array_header_2_0}.get(version)
            if read_header is None:
                return "is not a .npy file this toolkit writes"
            shape, _, dtype = read_header(f)
            data_start = f.tell()
    except FileNotFoundError:
        return "is missing"
    except (OSError, ValueError, EOFError):
        return "is not a valid .npy file"
    if len(shape) != 1:
        return f"has shape {shape}, not one dimension"
    expected = data_start + shape[0] * dtype.itemsize
    if size < expected:
        return f"is truncated ({size:,} of {expected:,} bytes)"
    if size > expected:
        return f"has {size - expected:,} bytes too many"
    if expected_len is not None and shape[0] != expected_len:
        return f"holds {shape[0]:,} entries, index.json says {expected_len:,}"
    return None


def check_id_range(file: Path, ids: np.ndarray, vocab_size: int) -> None:
    """Refuse token ids outside [0, vocab_size): a corrupt file must not crash decoding or train silently."""
    if len(ids) == 0:
        return
    # Vectorised over the memory map, no copy: about 10 ms per 256 MB shard in the page cache (2-core machine).
    high = int(ids.max())
    low = 0 if ids.dtype.kind == "u" else int(ids.min())
    if low < 0 or high >= vocab_size:
        bad = high if high >= vocab_size else low
        raise UserError(f"shard file {file} is corrupt: it holds token id {bad}, outside the vocabulary's "
                        f"0..{vocab_size - 1}; re-run the same shards command to rebuild it "
                        "(`kobert-pretrain inspect DIR --verify` checks every file)")


@dataclass
class Shard:
    """One shard, memory-mapped."""

    path: Path
    tokens: np.ndarray
    offsets: np.ndarray
    len_a: np.ndarray
    nsp: np.ndarray
    mlm_positions: np.ndarray | None = None
    mlm_labels: np.ndarray | None = None
    mlm_offsets: np.ndarray | None = None

    @classmethod
    def open(cls, path: Path, vocab_size: int | None = None) -> "Shard":
        """Map a shard's arrays; with `vocab_size`, also check that every token id is below it."""
        def load(name):
            file = path / f"{name}.npy"
            if not file.is_file():
                return None
            try:
                return np.load(file, mmap_mode="r", allow_pickle=False)
            except ValueError as e:
                raise UserError(f"shard file {file} is truncated or corrupt ({e})") from None

        arrays = {name: load(name) for name in
                  ("tokens", "offsets", "len_a", "nsp", "mlm_positions", "mlm_labels", "mlm_offsets")}
        for name in REQUIRED_ARRAYS:
            if arrays[name] is None:
                raise UserError(f"shard {path} is incomplete: {name}.npy is missing; re-run the shards command")
        shard = cls(path=path, **arrays)
        n = len(shard.nsp)
        if len(shard.offsets) != n + 1 or len(shard.len_a) != n or int(shard.offsets[-1]) != len(shard.tokens):
            raise UserError(f"shard {path} is inconsistent (array lengths disagree); re-run the shards command")
        if vocab_size is not None:
            check_id_range(path / "tokens.npy", shard.tokens, vocab_size)
            if shard.mlm_labels is not None:
                check_id_range(path / "mlm_labels.npy", shard.mlm_labels, vocab_size)
        return shard

    def __len__(self) -> int:
        return len(self.nsp)

    @property
    def static(self) -> bool:
        return self.mlm_positions is not None


@dataclass
class ShardSet:
    """A complete shard set: its index and lazily opened shards."""

    path: Path
    index: dict

    @classmethod
    def open(cls, path: str | Path, vocab_sha256: str | None = None, max_seq_length: int | None = None,
             verify: bool = False) -> "ShardSet":
        """Open a shard set; refuse it if it is incomplete or does not match the run.

        Every shard file must exist with the size its header and index.json give (headers
        only: cheap whatever the set's size), so a truncated or missing file is reported now,
        all of them in one message, not at its first use hours into training.
        verify=True also checks every file's sha256 (reads all data).
        """
        path = Path(path)
        index_file = path / INDEX_FILE
        if not path.is_dir():
            raise UserError(f"shard directory not found: {path}")
        if not index_file.is_file():
            raise UserError(missing_index_message(path))
        try:
            index = json.loads(index_file.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError):
            raise UserError(f"{index_file} is corrupt (not JSON)") from None
        if not isinstance(index, dict) or index.get("format") != FORMAT:
            raise UserError(f"{index_file} is not a kobert-pretrain shard index")
        problems = []
        if vocab_sha256 is not None and index["vocab_sha256"] != vocab_sha256:
            problems.append(
                f"shards in {path} were built with another vocabulary (sha256 {index['vocab_sha256'][:12]}..., "
                f"this run's is {vocab_sha256[:12]}...)"
            )
        if max_seq_length is not None and index["max_seq_length"] != max_seq_length:
            problems.append(
                f"shards in {path} have max_seq_length {index['max_seq_length']}, this run uses {max_seq_length}"
            )
        if problems:
            raise UserError("; ".join(problems))
        bad = [p for entry in index["shards"] for p in _shard_problems(path / entry["name"], entry, verify)]
        if bad:
            raise UserError(f"shard set {path} has {len(bad)} problem(s): {'; '.join(bad)}; "
                            "re-run the same shards command to rebuild the damaged shards")
        return cls(path=path, index=index)

    @property
    def counts(self) -> list[int]:
        return [entry["num_instances"] for entry in self.index["shards"]]

    @property
    def num_instances(self) -> int:
        return self.index["num_instances"]

    @property
    def num_shards(self) -> int:
        return len(self.index["shards"])

    @property
    def max_seq_length(self) -> int:
        return self.index["max_seq_length"]

    def shard(self, s: int) -> Shard:
        """Shard s, memory-mapped, its token ids checked against the vocabulary size."""
        return Shard.open(self.path / self.index["shards"][s]["name"], vocab_size=self.index.get("vocab_size"))

    # What the set was built with. Training, `inspect` and `convert` all ask "which vocabulary and masking
    # spec belong to these shards?"; this is the one answer, read from index.json.

    @property
    def recorded_vocab_dir(self) -> str:
        """The vocabulary directory `kobert-pretrain shards --vocab` was given ("" if none is recorded)."""
        return self.index.get("config", {}).get("vocab", "") or ""

    def load_vocab(self, vocab_dir: str | None = None) -> Vocab:
        """The set's vocabulary: `vocab_dir`, or the one its build recorded; a UserError when it cannot
        be loaded or is not the one the shards were built with (its sha256 differs)."""
        vocab_dir = vocab_dir or self.recorded_vocab_dir
        vocab = Vocab.load(vocab_dir)
        if vocab.sha256 != self.index["vocab_sha256"]:
            raise UserError(f"vocabulary {vocab_dir} is not the one the shards were built with (sha256 differs)")
        return vocab

    def masking_spec(self, vocab: Vocab) -> MaskingSpec:
        """How dynamic masks are drawn for this set (its masking settings, `vocab`'s tables)."""
        index = self.index
        return MaskingSpec.from_vocab(vocab, index["masked_lm_prob"], index["max_predictions_per_seq"],
                                      index["whole_word_mask"])


def missing_index_message(path: Path) -> str:
    """Why `path` without index.json cannot be used, and what `kobert-pretrain shards` will do about it."""
    has_shards = any(SHARD_DIR_RE.fullmatch(p.name) for p in path.iterdir()) or (path / ".work").is_dir()
    if not has_shards:
        return f"{path} is not a shard set ({INDEX_FILE} missing and no shard directories)"
    return (f"{path} holds no complete shard set ({INDEX_FILE} missing): it cannot be used as is; re-run the "
            "`kobert-pretrain shards` command that wrote it, with the same arguments, to finish it or rebuild "
            f"{INDEX_FILE} (finished shards are kept)")


def _shard_problems(shard_dir: Path, entry: dict, verify: bool) -> list[str]:
    """What is wrong with one shard of an index: missing, replaced, or files of the wrong size (or sha256)."""
    name = entry["name"]
    if not shard_dir.is_dir():
        return [f"{name} is missing"]
    meta = read_array_meta(shard_dir)
    if meta is None:
        return [f"{name} is incomplete ({ARRAY_META} missing or unreadable)"]
    if meta.get("sha256") != entry["sha256"]:
        return [f"{name} was replaced (its {ARRAY_META} does not match {INDEX_FILE})"]
    n = entry["num_instances"]
    expected_len = {"tokens.npy": entry["num_tokens"], "offsets.npy": n + 1, "len_a.npy": n, "nsp.npy": n,
                    "mlm_offsets.npy": n + 1}
    problems = [f"{name}/{a}.npy is missing" for a in REQUIRED_ARRAYS if f"{a}.npy" not in meta["files"]]
    for file in sorted(meta["files"]):
        problem = npy_problem(shard_dir / file, expected_len.get(file))
        if problem is None and verify and sha256_file(shard_dir / file) != meta["files"][file]:
            problem = "is corrupt (sha256 differs)"
        if problem is not None:
            problems.append(f"{name}/{file} {problem}")
    return problems
