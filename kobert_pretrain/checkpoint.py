"""`CheckpointManager`: the one owner of persistence for a training run.

    RUN_DIR/checkpoints/step-00001000/
        model.params      parameters (mx.nd.save format, by parameter name)
        optimizer.states  optimizer moments (mx.nd.save format) and optimizer.json (layout, update counts)
        state.json        step, phase, tokens seen, loss scaler, data cursor, RNG note, hashes
        meta.json         sha256 of every file above; written last

A checkpoint is written under `step-XXXXXXXX.tmp-PID/`, every file fsynced,
`meta.json` written last, then the directory is renamed. Only directories
with a valid `meta.json` whose checksums match are ever loaded; when the
newest fails its checksums the previous one is used (and the failure
reported), and a checkpoint that failed to load is never deleted.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from kobert_pretrain.errors import UserError
from kobert_pretrain.fsutil import fsync_dir, sha256_file
from kobert_pretrain.text import warn

CHECKPOINTS = "checkpoints"
META = "meta.json"
FORMAT = "kobert-pretrain-checkpoint/1"
_NAME = re.compile(r"^step-(\d{8})$")


def checkpoint_name(step: int) -> str:
    return f"step-{step:08d}"


@dataclass
class Checkpoint:
    path: Path
    step: int
    meta: dict

    def state(self) -> dict:
        return json.loads((self.path / "state.json").read_text(encoding="utf-8"))


class CheckpointManager:
    def __init__(self, run_dir: str | Path, keep_last: int = 3, keep_every: int = 0, is_writer: bool = True):
        self.run_dir = Path(run_dir)
        self.dir = self.run_dir / CHECKPOINTS
        self.keep_last = keep_last
        self.keep_every = keep_every
        self.is_writer = is_writer

    def remove_partial(self) -> None:
        """Delete temporary directories left by a save that was killed (they were never checkpoints)."""
        if self.is_writer and self.dir.is_dir():
            for p in self.dir.iterdir():
                if ".tmp-" in p.name:
                    shutil.rmtree(p, ignore_errors=True)

    # ------------------------------------------------------------------ save

    def save(self, step: int, write_files, state: dict) -> Path | None:
        """Write a checkpoint for `step`: `write_files(tmp_dir)` writes the binary files.

        Only the writer (rank 0) writes; returns the final path there, None elsewhere.
        On an error (disk full) the temporary directory is removed, earlier
        checkpoints are untouched, and a UserError explains what happened.
        """
        if not self.is_writer:
            return None
        final = self.dir / checkpoint_name(step)
        tmp = self.dir / f"{checkpoint_name(step)}.tmp-{os.getpid()}"
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir()
            write_files(tmp)
            (tmp / "state.json").write_text(json.dumps(state, indent=2, sort_keys=True) + "\n", encoding="utf-8")
            files = {}
            for f in sorted(tmp.iterdir()):
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
                files[f.name] = {"sha256": sha256_file(f), "bytes": f.stat().st_size}
            meta = {"format": FORMAT, "step": step, "files": files}
            with open(tmp / META, "w", encoding="utf-8") as fh:
                json.dump(meta, fh, indent=2, sort_keys=True)
                fh.flush()
                os.fsync(fh.fileno())
            fsync_dir(tmp)
            if final.exists():
                shutil.rmtree(final)  # an older save of the same step (a resumed run reaching it again)
            os.rename(tmp, final)
            fsync_dir(self.dir)
        except OSError as e:
            shutil.rmtree(tmp, ignore_errors=True)
            # Name the previous checkpoint without re-hashing gigabytes just for an error message.
            previous = next((p for p in self._candidates() if (p / META).is_file()), None)
            kept = f"; the previous checkpoint {previous} is intact" if previous else ""
            raise UserError(f"could not write checkpoint {final.name}: {e.strerror or e}{kept}") from None
        self._apply_retention()
        return final

    def _apply_retention(self) -> None:
        """Keep the newest `keep_last` (the one just written among them) and every milestone."""
        for old in self._candidates()[self.keep_last:]:
            step = int(_NAME.match(old.name).group(1))
            if self.keep_every and step % self.keep_every == 0:
                continue
            shutil.rmtree(old, ignore_errors=True)

    # ------------------------------------------------------------------ load

    def _candidates(self) -> list[Path]:
        """Checkpoint directories, newest first (temporary ones excluded)."""
        if not self.dir.is_dir():
            return []
        found = [p for p in self.dir.iterdir() if p.is_dir() and _NAME.match(p.name)]
        return sorted(found, key=lambda p: p.name, reverse=True)

    def verify(self, path: Path) -> Checkpoint | None:
        """The checkpoint at `path` if its meta.json is valid and every checksum matches."""
        try:
            meta = json.loads((path / META).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if not isinstance(meta, dict) or meta.get("format") != FORMAT or not isinstance(meta.get("files"), dict):
            return None
        for name, entry in meta["files"].items():
            f = path / name
            try:
                if f.stat().st_size != entry["bytes"] or sha256_file(f) != entry["sha256"]:
                    return None
            except OSError:
                return None
        return Checkpoint(path=path, step=int(meta["step"]), meta=meta)

    def latest(self, report: bool = False) -> Checkpoint | None:
        """The newest complete, intact checkpoint; unreadable newer ones are skipped (and reported)."""
        for path in self._candidates():
            ckpt = self.verify(path)
            if ckpt is not None:
                return ckpt
            if report:
                warn(f"checkpoint {path} is incomplete or corrupt (checksum mismatch); "
                     "falling back to the previous one (it is kept for inspection)")
        return None

    def resolve(self, resume: str) -> Checkpoint | None:
        """What `--resume auto|none|PATH` means for this run directory."""
        if resume == "auto":
            return self.latest(report=True)
        if resume == "none":
            if self._candidates() or (self.run_dir / "metrics.jsonl").exists():
                raise UserError(f"{self.run_dir} already holds a run; use --resume auto to continue it, "
                                "or choose another --out")
            return None
        path = Path(resume)
        ckpt = self.verify(path)
        if ckpt is None:
            raise UserError(f"--resume {resume}: not a complete checkpoint (missing or corrupt meta.json/files)")
        return ckpt


def find_checkpoint(source: str | Path) -> Checkpoint:
    """A checkpoint directory, or the newest intact checkpoint of a run directory."""
    source = Path(source)
    manager = CheckpointManager(source.parent.parent if source.parent.name == CHECKPOINTS else source)
    if (source / META).exists() or source.parent.name == CHECKPOINTS:
        ckpt = manager.verify(source)
        if ckpt is None:
            raise UserError(f"{source} is not a complete checkpoint (missing or corrupt meta.json/files)")
        return ckpt
    if not source.is_dir():
        raise UserError(f"not found: {source}")
    ckpt = manager.latest(report=True)
    if ckpt is None:
        raise UserError(f"{source} holds no complete checkpoint (expected {source / CHECKPOINTS}/step-XXXXXXXX/)")
    return ckpt


def export_params(source: str | Path, out: str | Path) -> Path:
    """Write a checkpoint's parameters as a plain Gluon `.params` file (plus a `.json` describing the model).

    `BERTModel.load_parameters(out)` on a model of the recorded shape loads it; no trainer needed.
    """
    from kobert_pretrain.fsutil import atomic_write_bytes, atomic_write_json

    ckpt = find_checkpoint(source)
    out = Path(out)
    if out.exists():
        raise UserError(f"{out} exists; export never overwrites: choose another --out")
    out.parent.mkdir(parents=True, exist_ok=True)
    state = ckpt.state()
    atomic_write_bytes(out, (ckpt.path / "model.params").read_bytes())
    atomic_write_json(out.with_suffix(".json"), {"model_shape": state["model_shape"], "step": state["step"],
                                                 "vocab_sha256": state["vocab_sha256"],
                                                 "tokens_seen": state["tokens_seen"], "checkpoint": str(ckpt.path)})
    return out
