"""What training reports: the log window, rank-0 log lines, metrics.jsonl and TensorBoard.

`LossSums` are the numbers that travel from a batch to a log line or an
evaluation: sums over batches (added with `+`), turned into means only after
one allreduce over the ranks. `MetricsLogger` keeps the sums of the steps
since the last log line and writes the records; metrics.jsonl is plain JSON,
so NaN and infinities (a skipped overflow step) are written as null.
"""

from __future__ import annotations

import json
import math
import sys
import time
from typing import Any, NamedTuple

import numpy as np

from kobert_pretrain.run_dir import RunDir
from kobert_pretrain.text import warn


class LossSums(NamedTuple):
    """Sums over batches of one rank (MXNet scalars or floats), or over all ranks after `allreduce`."""

    mlm_loss_sum: Any  # MLM cross-entropy summed over the masked tokens
    mlm_correct: Any  # masked tokens predicted right
    masked_tokens: Any  # masked tokens (the sum of the MLM weights)
    nsp_loss_sum: Any  # NSP cross-entropy summed over the sequences
    nsp_correct: Any
    sequences: Any
    masked_chars: Any = 0.0  # characters of text the masked tokens stand for (`Vocab.char_lengths`)

    def __add__(self, other: "LossSums") -> "LossSums":
        return LossSums(*(a + b for a, b in zip(self, other)))

    def allreduce(self, dist, name: str) -> "LossSums":
        """The sums over every rank, as float64 (one allreduce of seven numbers)."""
        local = np.array([float(x.asscalar()) if hasattr(x, "asscalar") else float(x) for x in self])
        return LossSums(*dist.allreduce_sum(local, name=name))

    def means(self, use_nsp: bool) -> dict:
        """Mean MLM / NSP loss and accuracy; NSP is 0.0 for an MLM-only model."""
        masked, sequences = max(1.0, self.masked_tokens), max(1.0, self.sequences)
        return {"mlm_loss": self.mlm_loss_sum / masked, "mlm_acc": self.mlm_correct / masked,
                "nsp_loss": self.nsp_loss_sum / sequences if use_nsp else 0.0,
                "nsp_acc": self.nsp_correct / sequences if use_nsp else 0.0}


    def bits_per_char(self) -> float | None:
        """MLM loss in bits per character of the masked text: nats summed over the masked tokens, divided by
        the characters those tokens stand for and by ln 2. Unlike the per-token loss, it compares models with
        different vocabularies (None when no characters were counted)."""
        return self.mlm_loss_sum / self.masked_chars / math.log(2) if self.masked_chars > 0 else None


def masked_characters(char_lengths: np.ndarray, masked_ids: np.ndarray, masked_weights: np.ndarray) -> float:
    """Characters of text a batch's masked tokens stand for: `char_lengths` (`Vocab.char_lengths`) of each
    label, counted where its weight is 1 (host arrays, no device sync)."""
    return float((char_lengths[masked_ids] * masked_weights).sum())


def json_number(value):
    """Plain JSON: NaN and infinities (a skipped overflow step) become null, numpy floats Python floats."""
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    return value


class MetricsLogger:
    """The log window and every record of a run; only rank 0 prints and writes, every rank allreduces."""

    def __init__(self, run_dir: RunDir, dist, tensorboard: bool):
        self.run_dir = run_dir
        self.dist = dist
        self.is_root = dist.is_root
        self.tensorboard = tensorboard
        self._tb = None
        self.reset(0)

    def reset(self, step: int) -> None:
        """Start a new window after `step`."""
        self.first_step = step
        self.started = time.time()
        self.sums: LossSums | None = None
        self.tokens = 0.0

    def exclude(self, seconds: float) -> None:
        """Leave `seconds` (an evaluation inside the window) out of the window's speed and step time."""
        self.started += seconds

    def print(self, text: str) -> None:
        if self.is_root:
            print(text, file=sys.stderr, flush=True)

    def log_start(self, step: int, shape, tc, phase, ranks: int, ctx, rounds_per_epoch: int, resumed_from) -> None:
        """The run's first lines: the model, the devices and optimizer, the phase's batch plan, the resume."""
        accumulation = phase.accumulation(ranks)
        seq = phase.shard_set.max_seq_length
        lines = [
            f"train: {shape.num_layers} layers x {shape.units} units, {shape.num_heads} heads, "
            f"vocab {shape.vocab_size}: {shape.parameter_count():,} parameters",
            f"train: {ranks} rank(s) on {ctx}, {tc.dtype}, {tc.optimizer} lr {tc.lr:g} "
            f"(warm-up {tc.warmup_steps}, {tc.decay} decay), clip {tc.clip_grad_norm:g}",
            f"train: phase {phase.number}: seq {seq}, micro batch {phase.micro_batch_size} x accumulation "
            f"{accumulation} x {ranks} rank(s) = global batch {phase.global_batch_size}; up to "
            f"{phase.global_batch_size * seq:,} tokens per step; {rounds_per_epoch // accumulation:,} steps per "
            f"epoch ({phase.shard_set.num_instances:,} instances)",
        ]
        if resumed_from is not None:
            lines.append(f"train: resumed from {resumed_from.path} at step {step}")
        self.print("\n".join(lines))

    def add(self, sums: LossSums, tokens: float) -> None:
        """One step's sums (of this rank) and tokens (of all ranks)."""
        self.sums = sums if self.sums is None else self.sums + sums
        self.tokens += tokens

    def log_train(self, step: int, max_steps: int, use_nsp: bool, **fields) -> dict:
        """The record of the window ending at `step` (plus `fields`): written and printed; the window restarts."""
        sums = self.sums.allreduce(self.dist, name="log.sums")
        seconds = max(1e-9, time.time() - self.started)
        steps = step - self.first_step
        record = {"kind": "train", "step": step, **sums.means(use_nsp), "mlm_bits_per_char": sums.bits_per_char(),
                  "tokens_per_s": self.tokens / seconds, "sequences_per_s": sums.sequences / seconds,
                  "step_s": seconds / max(1, steps), "eta_s": seconds / max(1, steps) * (max_steps - step),
                  **fields}
        if self.is_root:
            self.write(record)
            eta = record["eta_s"]
            self.print(f"step {step}/{max_steps} | mlm_loss {record['mlm_loss']:.4f} | "
                       f"nsp_loss {record['nsp_loss']:.4f} | mlm_acc {record['mlm_acc']:.3f} | lr {record['lr']:.3g} | "
                       f"grad_norm {record['grad_norm']:.3f} | {record['tokens_per_s']:,.0f} tok/s | "
                       f"{record['sequences_per_s']:,.1f} seq/s | ETA {int(eta) // 3600}:{int(eta) % 3600 // 60:02d}:"
                       f"{int(eta) % 60:02d}")
        self.reset(step)
        return record

    def log_eval(self, step: int, sums: LossSums, use_nsp: bool, tokens_seen: int, sequences_seen: int) -> dict:
        """The record of an evaluation, from the sums of every rank."""
        means = sums.means(use_nsp)
        record = {"kind": "eval", "step": step, "tokens_seen": tokens_seen, "sequences_seen": sequences_seen,
                  "eval_mlm_loss": means["mlm_loss"],
                  "eval_mlm_acc": means["mlm_acc"], "eval_mlm_bits_per_char": sums.bits_per_char(),
                  "eval_masked_tokens": sums.masked_tokens, "eval_masked_chars": sums.masked_chars}
        if use_nsp:
            record.update(eval_nsp_loss=means["nsp_loss"], eval_nsp_acc=means["nsp_acc"])
        if self.is_root:
            self.write(record)
            shown = ("eval_mlm_loss", "eval_mlm_acc", "eval_mlm_bits_per_char", "eval_nsp_loss", "eval_nsp_acc")
            self.print("eval " + " | ".join(f"{k[5:]} {record[k]:.4f}" for k in shown
                                            if record.get(k) is not None))
        return record

    def write(self, record: dict) -> None:
        line = json.dumps({k: json_number(v) for k, v in record.items()}, allow_nan=False)
        with open(self.run_dir.metrics, "a", encoding="utf-8") as f:
            f.write(line + "\n")
        self._tensorboard(record)

    def _tensorboard(self, record: dict) -> None:
        if not self.tensorboard:
            return
        if self._tb is None:
            # tensorboardX imports torch when it can, and torch beside Horovod's MXNet library in one
            # process segfaults (seen under horovodrun). Scalars need no torch: hide it for the import.
            hide_torch = "torch" not in sys.modules
            if hide_torch:
                sys.modules["torch"] = None
            try:
                from tensorboardX import SummaryWriter
            except ImportError:
                self.tensorboard = False
                return
            finally:
                if hide_torch:
                    del sys.modules["torch"]
            self._tb = SummaryWriter(str(self.run_dir.tensorboard))
        for key, value in record.items():
            if isinstance(value, (int, float)) and math.isfinite(value) and key not in ("step", "kind"):
                self._tb.add_scalar(key, value, record["step"])

    def close(self) -> None:
        if self._tb is not None:
            tb, self._tb = self._tb, None
            try:
                tb.close()
            except OSError as e:  # a full disk must not hide the error that ended the run
                warn(f"could not finish the TensorBoard event file: {e.strerror or e}")
