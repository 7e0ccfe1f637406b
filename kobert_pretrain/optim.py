"""Learning-rate schedule, dynamic loss scaling, and global-norm gradient clipping.

Pure Python: the trainer feeds these numbers to MXNet, and tests check them
without a model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


def learning_rate(step: int, peak: float, warmup_steps: int, max_steps: int, decay: str = "linear",
                  power: float = 1.0, end: float = 0.0) -> float:
    """LR for optimizer step `step` (0-based): linear warm-up to `peak`, then decay to `end` at max_steps."""
    if warmup_steps and step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    span = max(1, max_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    exponent = 1.0 if decay == "linear" else power
    return end + (peak - end) * (1.0 - progress) ** exponent


def optimizer_params(tc) -> dict:
    """The arguments of MXNet's LAMB / BERTAdam for `train` config `tc`; float16 keeps float32 master weights."""
    params = {"learning_rate": tc.lr, "beta1": tc.beta1, "beta2": tc.beta2, "epsilon": tc.epsilon,
              "wd": tc.weight_decay}
    if tc.dtype == "float16":
        params["multi_precision"] = True
    return params


class LossScaler:
    """Dynamic loss scaling for fp16 (the GluonNLP / NVIDIA scheme).

    The loss is multiplied by `scale` before backward. If the gradients overflow
    (a non-finite global norm, which after the allreduce is the same on every
    rank, so all ranks agree), the step is skipped and the scale halves; after
    `window` good steps in a row it doubles. With `dynamic=False` (float32) the
    scale never changes, but a step with non-finite gradients is still skipped
    rather than written into the weights. `consecutive_skipped` lets the trainer
    tell a diverged run from the few overflows of a scale search.
    """

    MAX_SCALE = 2.0 ** 24  # growth stops here (as in NVIDIA's apex): float16 gradients need no more

    def __init__(self, scale: float = 1024.0, window: int = 2000, factor: float = 2.0, min_scale: float = 1.0,
                 dynamic: bool = True):
        self.scale = float(scale)
        self.window = window
        self.factor = factor
        self.min_scale = min_scale
        self.dynamic = dynamic
        self.good_steps = 0
        self.skipped_steps = 0
        self.consecutive_skipped = 0

    @classmethod
    def for_dtype(cls, dtype: str, scale: float, window: int) -> "LossScaler":
        """A dynamic scaler for float16; float32 needs no scaling (non-finite gradients still skip the step)."""
        return cls(scale, window) if dtype == "float16" else cls(1.0, window, dynamic=False)

    def update(self, grads_finite: bool) -> bool:
        """Record one step's outcome; return True if the optimizer step should be applied."""
        if not grads_finite:
            if self.dynamic:
                self.scale = max(self.min_scale, self.scale / self.factor)
            self.good_steps = 0
            self.skipped_steps += 1
            self.consecutive_skipped += 1
            return False
        self.consecutive_skipped = 0
        self.good_steps += 1
        if self.dynamic and self.good_steps >= self.window:
            self.scale = max(self.scale, min(self.MAX_SCALE, self.scale * self.factor))
            self.good_steps = 0
        return True

    def state_dict(self) -> dict:
        return {"scale": self.scale, "good_steps": self.good_steps, "skipped_steps": self.skipped_steps,
                "consecutive_skipped": self.consecutive_skipped}

    def load_state_dict(self, state: dict) -> None:
        self.scale = float(state["scale"])
        self.good_steps = int(state["good_steps"])
        self.skipped_steps = int(state["skipped_steps"])
        self.consecutive_skipped = int(state.get("consecutive_skipped", 0))


@dataclass(frozen=True)
class UpdateScaling:
    """How to turn the gradients held after the allreduce into the applied update."""

    true_norm: float  # global norm of the gradient of the (unscaled) global loss
    clip_coef: float  # factor applied to that gradient, <= 1
    batch_size: float  # what to pass to Trainer.update() so MXNet applies exactly that


def update_scaling(held_norm: float, world_size: int, averaged: bool, loss_scale: float,
                   clip_grad_norm: float) -> UpdateScaling:
    """Clip by global norm correctly whether Horovod summed or averaged the gradients.

    Each rank backpropagates its share of the *global* loss (scaled by
    `loss_scale`), so the true gradient G is the sum of the ranks' gradients
    divided by the loss scale. After the allreduce every rank holds
    G * loss_scale (summed; CPU/Gloo builds and NCCL < 2.10, where Horovod's
    trainer then divides by world size inside update()) or
    G * loss_scale / world_size (averaged by NCCL). Trainer.update(batch_size)
    multiplies the held gradient by trainer_scale / batch_size with
    trainer_scale = 1 / world_size when summed and 1 when averaged; in both
    cases batch_size = loss_scale / (world_size * clip_coef) applies
    G * clip_coef.
    """
    true_norm = held_norm * (world_size if averaged else 1) / loss_scale
    clip = 1.0
    if clip_grad_norm > 0 and math.isfinite(true_norm) and true_norm > clip_grad_norm:
        clip = clip_grad_norm / true_norm
    return UpdateScaling(true_norm=true_norm, clip_coef=clip, batch_size=loss_scale / (world_size * clip))
