"""`kobert-pretrain train --dry-run --world-size N`: will this job start, and what will it do?

Everything `train` checks before its first step (`preflight.check_setup`), for N ranks, without
MXNet building anything: the config, the shard sets (headers and sizes, vocabulary agreement), the
vocabulary, the model's positions, the batch plan of each phase, the run directory. Then the plan:
micro batch x accumulation x ranks, tokens per step, steps per epoch, and an estimate of GPU memory
per rank for the configured dtype. Exit status 0, or a ConfigError listing every problem (status 2).
No device is needed (the device checks are skipped): a float16 plan can be checked on a login node.
"""

from __future__ import annotations

from kobert_pretrain.config import Config, ConfigError
from kobert_pretrain.errors import UserError
from kobert_pretrain.plan import memory_estimate
from kobert_pretrain.preflight import check_setup, config_problems
from kobert_pretrain.run_dir import RunDir


def dry_run(cfg: Config, world_size: int) -> str:
    """The plan as printable lines, or ConfigError with every problem."""
    tc = cfg.train
    if world_size < 1:
        raise UserError(f"--world-size must be at least 1, got {world_size}")
    problems = [p for p in config_problems(cfg) if not p.startswith("train.out:")]  # a plan needs no run directory
    if not tc.shards:
        raise ConfigError(problems)
    setup = check_setup(cfg, world_size, problems, RunDir(tc.out) if tc.out else None)
    if problems:
        raise ConfigError(problems, title=f"this job cannot start on {world_size} rank(s)")
    phases, shape = setup.phases, setup.shape

    lines = [f"dry run: {world_size} rank(s), {tc.dtype}, {tc.optimizer} lr {tc.lr:g}, {tc.max_steps:,} steps; "
             f"model {shape.num_layers} x {shape.units}, vocab {shape.vocab_size}: {shape.parameter_count():,} "
             "parameters"]
    for phase in phases:
        plan = phase.plan
        masked = phase.shard_set.index.get("max_predictions_per_seq") or 20
        memory = memory_estimate(shape, plan, masked, tc.dtype)
        steps = (phase.first_step, phases[phase.number].first_step if phase.number < len(phases) else tc.max_steps)
        lines.append(f"dry run: phase {phase.number} (steps {steps[0]:,}-{steps[1]:,}): seq {plan.seq_len}, "
                     f"{plan.describe(phase.max_micro_batch_size)}; up to {plan.tokens_per_step:,} tokens per step; "
                     f"{plan.steps_per_epoch(phase.shard_set.num_instances):,} steps per epoch "
                     f"({phase.shard_set.num_instances:,} instances)")
        lines.append(f"dry run: phase {phase.number} memory: {memory.describe()}")
    return "\n".join(lines)

