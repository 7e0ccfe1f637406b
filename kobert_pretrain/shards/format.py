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

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kobert_pretrain.errors import UserError
from kobert_pretrain.fsutil import fsync_dir, sha256_file

INDEX_FILE = "index.json"
FORMAT = "kobert-pretrain-shards/1"
ARRAY_META = "shard.json"


def shard_name(index: int) -> str:
    return f"shard-{index:05d}"


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 65536 else np.dtype(np.int32)


def write_array_dir(path: Path, arrays: dict[str, np.ndarray], meta: dict) -> dict:
    """Write arrays as .npy plus a json with their sha256 into `path`, atomically; return that json."""
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        files = {}
        for name, array in arrays.items():
            file = tmp / f"{name}.npy"
            with open(file, "wb") as f:
                np.save(f, np.ascontiguousarray(array), allow_pickle=False)
                f.flush()
                os.fsync(f.fileno())
            files[f"{name}.npy"] = sha256_file(file)
        meta = dict(meta, files=files, sha256=combined_sha256(files))
        with open(tmp / ARRAY_META, "w", encoding="utf-8") as f:
            json.dump(meta, f, indent=2, sort_keys=True)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        fsync_dir(tmp)
        shutil.rmtree(path, ignore_errors=True)
        os.rename(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return meta


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
    for name, digest in meta["files"].items():
        file = path / name
        if not file.is_file() or sha256_file(file) != digest:
            return None
    return meta


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
    def open(cls, path: Path) -> "Shard":
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
        for name in ("tokens", "offsets", "len_a", "nsp"):
            if arrays[name] is None:
                raise UserError(f"shard {path} is incomplete: {name}.npy is missing; re-run the shards command")
        shard = cls(path=path, **arrays)
        n = len(shard.nsp)
        if len(shard.offsets) != n + 1 or len(shard.len_a) != n or int(shard.offsets[-1]) != len(shard.tokens):
            raise UserError(f"shard {path} is inconsistent (array lengths disagree); re-run the shards command")
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

        verify=True also checks every file's sha256 (reads all data).
        """
        path = Path(path)
        index_file = path / INDEX_FILE
        if not path.is_dir():
            raise UserError(f"shard directory not found: {path}")
        if not index_file.is_file():
            raise UserError(f"{path} holds no complete shard set ({INDEX_FILE} missing): run or resume `kobert-pretrain shards`")
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
        shard_set = cls(path=path, index=index)
        for s, entry in enumerate(index["shards"]):
            shard_dir = path / entry["name"]
            meta = read_array_meta(shard_dir) if not verify else verify_array_dir(shard_dir)
            if meta is None or meta.get("sha256") != entry["sha256"]:
                what = "missing" if not shard_dir.exists() else ("corrupt" if verify else "incomplete or replaced")
                raise UserError(f"shard {shard_dir} is {what}; re-run the same shards command to rebuild it")
        return shard_set

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
        return Shard.open(self.path / self.index["shards"][s]["name"])
