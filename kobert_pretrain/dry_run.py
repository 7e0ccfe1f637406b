"""`kobert-pretrain train --dry-run --world-size N`: will this job start, and what will it do?

Everything `train` checks before its first step, for N ranks, without MXNet building anything: the
config, the shard sets (headers and sizes, vocabulary agreement), the vocabulary, the model's
positions, the batch plan of each phase, the run directory. Then the plan: micro batch x accumulation
x ranks, tokens per step, steps per epoch, and an estimate of GPU memory per rank for the configured
dtype. Exit status 0, or a ConfigError listing every problem (status 2). No device is needed: a
float16 plan can be checked on a login node.
"""

from __future__ import annotations

from kobert_pretrain.config import Config, ConfigError
from kobert_pretrain.data import plan_phases
from kobert_pretrain.errors import UserError
from kobert_pretrain.model import ModelShape
from kobert_pretrain.plan import memory_estimate
from kobert_pretrain.run_dir import RunDir


def dry_run(cfg: Config, world_size: int) -> str:
    """The plan as printable lines, or ConfigError with every problem."""
    tc = cfg.train
    if world_size < 1:
        raise UserError(f"--world-size must be at least 1, got {world_size}")
    problems = [p for name in ("model", "train", "log", "checkpoint") for p in cfg.section(name).validate()]
    problems = [p for p in problems if not p.startswith("train.out:")]  # a plan needs no run directory
    if not tc.shards:
        raise ConfigError(problems)
    if tc.out:
        problem = RunDir(tc.out).problem()
        if problem:
            problems.append(problem)
    phases, eval_set = plan_phases(tc, world_size, problems)
    first = phases[0].shard_set
    shape = ModelShape(**cfg.model.resolved(), vocab_size=first.index["vocab_size"], dropout=cfg.model.dropout,
                       use_nsp=cfg.model.use_nsp)
    for phase in phases:
        problems += phase.problems(shape.max_length, world_size)
    if eval_set is not None and shape.max_length and eval_set.max_seq_length > shape.max_length:
        problems.append(f"eval shards have max_seq_length {eval_set.max_seq_length} > model.max_length")
    try:
        first.load_vocab(tc.vocab)
    except UserError as e:
        problems.append(f"{e} (set --train.vocab)")
    if problems:
        raise ConfigError(problems, title=f"this job cannot start on {world_size} rank(s)")

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

