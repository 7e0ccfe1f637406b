"""The batch arithmetic of a training phase for N ranks, and what one rank will need in GPU memory.

`global_batch_size` is the recipe (the optimizer's batch, which the learning rate is tuned for) and
stays fixed whatever the number of GPUs; `micro_batch_size` is the most one rank can hold. For R
ranks each rank owns global / R sequences per step: when they fit in one micro batch it runs them
at once, otherwise in `accumulation` micro batches of `micro_batch_size`. So one config runs
unchanged on 1, 2, 4, ... GPUs (see configs/cluster-base.toml), and `train --dry-run --world-size N`
prints the plan without building anything.
"""

from __future__ import annotations

from dataclasses import dataclass

GIB = 2**30


@dataclass(frozen=True)
class BatchPlan:
    phase: int
    seq_len: int
    micro_batch_size: int  # sequences per rank per forward/backward
    accumulation: int      # micro batches per rank per optimizer step
    ranks: int
    global_batch_size: int

    @property
    def tokens_per_step(self) -> int:
        """Padded tokens per optimizer step over all ranks (an upper bound: batches are cut to their longest)."""
        return self.global_batch_size * self.seq_len

    def steps_per_epoch(self, num_instances: int) -> int:
        return num_instances // self.global_batch_size

    def describe(self, max_micro: int) -> str:
        capped = f" (of at most {max_micro})" if self.micro_batch_size < max_micro else ""
        return (f"micro batch {self.micro_batch_size}{capped} x accumulation {self.accumulation} x "
                f"{self.ranks} rank(s) = global batch {self.global_batch_size}")


def batch_plan(phase: int, seq_len: int, max_micro: int, global_batch: int, ranks: int) -> BatchPlan | str:
    """The plan for `ranks` ranks, or why there is none (one sentence).

    global_batch 0 means one micro batch per rank (max_micro x ranks).
    """
    global_batch = global_batch or max_micro * ranks
    if global_batch % ranks:
        return f"phase {phase}: global batch {global_batch} is not divisible by {ranks} rank(s)"
    per_rank = global_batch // ranks
    if per_rank <= max_micro:
        return BatchPlan(phase, seq_len, per_rank, 1, ranks, global_batch)
    if per_rank % max_micro:
        return (f"phase {phase}: global batch {global_batch} is not divisible by micro batch {max_micro} x "
                f"{ranks} rank(s)")
    return BatchPlan(phase, seq_len, max_micro, per_rank // max_micro, ranks, global_batch)


@dataclass(frozen=True)
class MemoryEstimate:
    model_states_gib: float  # weights, gradients, optimizer moments (and fp32 master weights)
    activations_gib: float   # what backward keeps from forward for one micro batch
    overhead_gib: float      # CUDA context, cuDNN/cuBLAS workspaces, Horovod's fusion buffer

    @property
    def total_gib(self) -> float:
        return self.model_states_gib + self.activations_gib + self.overhead_gib

    def describe(self) -> str:
        return (f"~{self.total_gib:.1f} GiB per GPU (model and optimizer {self.model_states_gib:.1f}, activations "
                f"{self.activations_gib:.1f}, runtime {self.overhead_gib:.1f}; an estimate, +-30%)")


def memory_estimate(shape, plan: BatchPlan, masked_per_seq: int, dtype: str) -> MemoryEstimate:
    """GPU memory of one rank for `shape` (a ModelShape) at the plan's micro batch.

    Model states, 16 bytes a parameter either way: float32 weights, gradients and two LAMB/Adam
    moments (4 + 4 + 8); float16 weights and gradients plus the fp32 master copy and moments
    (2 + 2 + 4 + 8). Activations per layer follow Korthikanti et al. 2022 ("Reducing Activation
    Recomputation in Large Transformer Models", eq. 1): s*b*h*(34 + 5*a*s/h) bytes in 16-bit, twice
    that in float32; plus the MLM logits over the vocabulary at the masked positions (float16 and
    the float32 log-softmax). Overhead: ~0.8 GiB CUDA context and workspaces + 128 MiB fusion buffer.
    """
    width = 2 if dtype == "float16" else 4
    states = 16 * shape.parameter_count()
    s, b, h, a = plan.seq_len, plan.micro_batch_size, shape.units, shape.num_heads
    per_layer = s * b * h * (34 + 5 * a * s / h) * (width / 2)
    head = b * masked_per_seq * shape.vocab_size * (width + 4) + s * b * h * width * 4
    return MemoryEstimate(states / GIB, (shape.num_layers * per_layer + head) / GIB, 0.8 + 0.125)
