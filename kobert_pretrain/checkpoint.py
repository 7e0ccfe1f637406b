"""`CheckpointManager`: the one owner of persistence for a training run.

    RUN_DIR/checkpoints/step-00001000/
        model.params      parameters (mx.nd.save format, by parameter name)
        optimizer.states  optimizer moments (mx.nd.save format) and optimizer.json (layout, update counts)
        state.json        step, phase, tokens seen, loss scaler, data cursor, RNG note, hashes
        meta.json         sha256 of every file above; written last

A checkpoint is written under `.step-XXXXXXXX.tmp-HOST-PID/`, every file fsynced,
`meta.json` written last, then the directory is renamed. Only directories
with a valid `meta.json` whose checksums match are ever loaded; when the
newest fails its checksums the previous one is used (and the failure
reported), and a checkpoint that failed to load is never deleted.
`SaveSchedule` says when a save is due (by steps, by rank 0's clock, on a signal).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from kobert_pretrain.errors import UserError
from kobert_pretrain.fsutil import atomic_dir, disk_full_error, fsync_dir, temporary_prefix, verify_files
from kobert_pretrain.run_dir import CHECKPOINTS, METRICS, RunDir
from kobert_pretrain.text import warn
from kobert_pretrain.train_state import TrainingState

META = "meta.json"
FORMAT = "kobert-pretrain-checkpoint/1"
_NAME = re.compile(r"^step-(\d{8})$")
DAMAGED = ".damaged"


def checkpoint_name(step: int) -> str:
    return f"step-{step:08d}"


@dataclass
class Checkpoint:
    path: Path
    step: int
    meta: dict

    def state(self) -> dict:
        try:
            state = json.loads((self.path / "state.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise UserError(f"checkpoint {self.path}: cannot read state.json ({e})") from None
        if not isinstance(state, dict):
            raise UserError(f"checkpoint {self.path}: state.json is not a JSON object")
        return state

    def read_file(self, name: str) -> bytes:
        """One file of the checkpoint, read once and checked against the checksum it was verified with
        (a run still training may replace or delete it meanwhile)."""
        entry = self.meta["files"].get(name)
        if entry is None:
            raise UserError(f"checkpoint {self.path} has no {name}")
        data = (self.path / name).read_bytes()
        if hashlib.sha256(data).hexdigest() != entry["sha256"]:
            raise UserError(f"checkpoint {self.path}: {name} changed while it was being read")
        return data

    def training_state(self) -> TrainingState:
        """state.json of a checkpoint written by `train`, checked for the fields the stages read."""
        return TrainingState.from_dict(self.state(), self.path)


class SaveSchedule:
    """When to save after a step: every `interval` steps, once `minutes` have passed on rank 0's clock since
    the last save, or at once for a pre-emption signal. The clock and the signals are one rank's: they
    travel in the step's counts allreduce, so `save_due` gets the same flags, and decides the same, on
    every rank."""

    def __init__(self, interval: int, minutes: float, is_root: bool, clock=time.time):
        self.interval = interval
        self.minutes = minutes
        self.is_root = is_root
        self._clock = clock
        self._last_save_time = clock()

    def time_due(self) -> bool:
        """Rank 0's clock says a save is due (`checkpoint.minutes`); the other ranks learn it with the step's counts."""
        return self.is_root and self.minutes > 0 and self._clock() - self._last_save_time >= self.minutes * 60

    def save_due(self, step: int, preempt: bool, by_time: bool) -> bool:
        """Whether to save after `step`, from the flags all ranks agreed on."""
        by_steps = self.interval > 0 and step % self.interval == 0
        return preempt or by_steps or by_time

    def saved(self) -> None:
        self._last_save_time = self._clock()


class CheckpointManager:
    def __init__(self, run_dir: RunDir | str | Path, keep_last: int = 3, keep_every: int = 0, is_writer: bool = True):
        self.run_dir = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
        self.dir = self.run_dir.checkpoints
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
        tmp = self.dir / f"{temporary_prefix(final)}{os.getpid()}"
        failure = []  # what went wrong, judged before the partial files are freed: is the disk full?
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            # replace=True: an older save of the same step (a resumed run reaching it again)
            with atomic_dir(tmp, final, manifest=META, manifest_fields={"format": FORMAT, "step": step}, replace=True,
                            on_error=lambda e: failure.append(_write_failure(e, self.dir))) as building:
                write_files(building)
                (building / "state.json").write_text(json.dumps(state, indent=2, sort_keys=True) + "\n",
                                                     encoding="utf-8")
        except Exception as e:
            reason = failure[0] if failure else _write_failure(e, self.dir)
            if reason is None:
                raise  # a bug, not the disk: keep the traceback
            # Name the previous checkpoint without re-hashing gigabytes just for an error message.
            previous = next((p for p in self._candidates() if (p / META).is_file()), None)
            kept = f"; the previous checkpoint {previous} is intact" if previous else ""
            raise UserError(f"could not write checkpoint {final}: {reason}{kept}") from None
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

    def check(self, path: Path) -> tuple[Checkpoint | None, str]:
        """(the checkpoint, "") if `path` is complete and intact, else (None, what is wrong with it)."""
        try:
            meta = json.loads((path / META).read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None, "meta.json is missing"
        except (OSError, ValueError):
            return None, "meta.json is unreadable"
        if not isinstance(meta, dict) or meta.get("format") != FORMAT or not isinstance(meta.get("files"), dict) \
                or not isinstance(meta.get("step"), int) or not all(isinstance(e, dict) for e in meta["files"].values()):
            return None, "meta.json is not a kobert-pretrain checkpoint description"
        try:
            problem = verify_files(path, meta["files"])
        except ValueError:
            return None, "meta.json is not a kobert-pretrain checkpoint description"
        if problem is not None:
            return None, problem
        return Checkpoint(path=path, step=meta["step"], meta=meta), ""

    def latest(self, report: bool = False, set_aside: bool = False) -> Checkpoint | None:
        """The newest complete, intact checkpoint; damaged newer ones are skipped and reported.

        With `set_aside` (the writer of a run about to resume) a damaged checkpoint is renamed
        `step-XXXXXXXX.damaged` so that the resumed run, saving that step again, cannot overwrite it.
        Raises UserError when checkpoints exist but none is intact: resuming from step 0 would
        silently throw the run away.
        """
        candidates = self._candidates()
        damaged = []
        for path in candidates:
            ckpt, reason = self.check(path)
            if ckpt is None:
                damaged.append((path, reason))
                continue
            # Only now, with an intact checkpoint to resume from, are the damaged ones moved aside:
            # a run that refuses to start (none intact) must leave the directory exactly as it was.
            for bad, why in damaged:
                kept = _set_aside(bad) if set_aside and self.is_writer else bad
                if report:
                    where = f"moved to {kept.name} for inspection" if kept != bad else "left in place for inspection"
                    warn(f"checkpoint {bad} is damaged: {why}; {where}; using {path.name}")
            return ckpt
        if not damaged and set_aside and self.dir.is_dir():
            damaged = [(p, "set aside earlier") for p in sorted(self.dir.glob(f"step-*{DAMAGED}*"))]
        if damaged:
            damaged = [f"{p.name} ({why})" for p, why in damaged]
            advice = (f": starting over would discard the run; restore a checkpoint or move {self.dir} away "
                      "to start from step 0") if set_aside else ""
            raise UserError(f"none of the {len(damaged)} checkpoint(s) in {self.dir} is intact ("
                            + "; ".join(damaged[:3]) + ("; ..." if len(damaged) > 3 else "") + ")" + advice)
        return None

    def resolve(self, resume: str) -> Checkpoint | None:
        """What `--resume auto|none|PATH` means for this run directory."""
        if resume == "auto":
            return self.latest(report=True, set_aside=True)
        if resume == "none":
            if self.run_dir.holds_run(has_checkpoints=bool(self._candidates())):
                raise UserError(f"{self.run_dir.path} already holds a run; use --resume auto to continue it, "
                                "or choose another --out")
            return None
        path = Path(resume)
        if not path.is_dir():
            raise UserError(f"--resume {resume}: no such checkpoint directory")
        ckpt, reason = self.check(path)
        if ckpt is None:
            raise UserError(f"--resume {resume}: not a complete checkpoint ({reason})")
        if self.is_writer:
            self._supersede_after(ckpt)
        return ckpt

    def _supersede_after(self, ckpt: Checkpoint) -> None:
        """Resuming from an older checkpoint starts a new history: move the newer checkpoints (and the
        metrics that went with them) to checkpoints/superseded-TIME/ instead of overwriting them later,
        and so that `--resume auto` after a crash can never pick a step of the abandoned history."""
        newer = [p for p in self._candidates() if int(_NAME.match(p.name).group(1)) > ckpt.step
                 and p.resolve() != ckpt.path.resolve()]
        if not newer:
            return
        target = self.dir / time.strftime("superseded-%Y%m%d-%H%M%S")
        n = 1
        while target.exists():
            target = target.with_name(f"{target.name.split('.')[0]}.{n}")
            n += 1
        target.mkdir(parents=True)
        for path in newer:
            os.rename(path, target / path.name)
        if self.run_dir.metrics.is_file():
            shutil.copy2(self.run_dir.metrics, target / METRICS)
        fsync_dir(self.dir)
        warn(f"resuming from {ckpt.path.name}: the {len(newer)} newer checkpoint(s) of the previous history "
             f"({', '.join(p.name for p in reversed(newer))}) and its metrics moved to {target}")


def find_checkpoint(source: str | Path) -> Checkpoint:
    """A checkpoint directory, or the newest intact checkpoint of a run directory."""
    source = Path(source)
    manager = CheckpointManager(RunDir.of_checkpoint(source) if source.parent.name == CHECKPOINTS else RunDir(source))
    if source.exists() and not source.is_dir():
        raise UserError(f"{source} is a file, not a run or checkpoint directory")
    if not source.exists():
        there = [p.name for p in reversed(manager._candidates())] if source.parent.name == CHECKPOINTS else []
        raise UserError(f"not found: {source}" + (f" ({source.parent} holds {', '.join(there)})" if there else ""))
    if (source / META).exists() or source.parent.name == CHECKPOINTS:
        ckpt, reason = manager.check(source)
        if ckpt is None:
            raise UserError(f"{source} is not a complete checkpoint ({reason})")
        return ckpt
    ckpt = manager.latest(report=True)
    if ckpt is None:
        raise UserError(f"{source} holds no complete checkpoint (expected {source / CHECKPOINTS}/step-XXXXXXXX/)")
    return ckpt


def _set_aside(path: Path) -> Path:
    """Rename a damaged checkpoint out of the step-XXXXXXXX namespace (never deleted by retention)."""
    for n in range(100):
        target = path.with_name(path.name + DAMAGED + (f"-{n}" if n else ""))
        if not target.exists():
            try:
                os.rename(path, target)
            except OSError:
                return path
            return target
    return path


def _write_failure(error: BaseException, directory: Path) -> str | None:
    """What went wrong writing into `directory`, if it was the storage (None: a bug)."""
    if disk_full_error(error, directory) is not None:
        return "no space left on device"
    if isinstance(error, OSError):
        return error.strerror or str(error)
    text = str(error)
    if type(error).__name__ == "MXNetError" and ("FileStream" in text or "Write" in text):
        lines = [ln.strip() for ln in text.splitlines() if "FileStream" in ln or "Check failed" in ln]
        return "write failed (" + (lines[-1] if lines else text.strip().splitlines()[-1])[:160] + ")"
    return None


def export_params(source: str | Path, out: str | Path) -> Path:
    """Write a checkpoint's parameters as a plain Gluon `.params` file (plus a `.json` describing the model).

    `BERTModel.load_parameters(out)` on a model of the recorded shape loads it; no trainer needed.
    """
    from kobert_pretrain.fsutil import atomic_write_bytes, atomic_write_json

    import mxnet as mx

    ckpt = find_checkpoint(source)
    out = Path(out)
    description = out.with_suffix(".json")
    for path in (out, description):
        if path.exists() or path.is_symlink():
            raise UserError(f"{path} exists; export never overwrites: choose another --out")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create {out.parent}: {e.strerror or e}") from None
    state = ckpt.training_state()
    data = ckpt.read_file("model.params")
    try:
        mx.nd.load_frombuffer(data)
    except mx.base.MXNetError:
        raise UserError(f"checkpoint {ckpt.path}: model.params passes its checksum but is not an MXNet "
                        "parameter file") from None
    atomic_write_bytes(out, data)
    atomic_write_json(description, {"model_shape": state.model_shape, "step": state.step,
                                    "vocab_sha256": state.vocab_sha256, "tokens_seen": state.tokens_seen,
                                    "checkpoint": str(ckpt.path)})
    return out
