"""What a run is checked against before its first step: `train` and `train --dry-run --world-size N` share it.

The config's sections, the run directory, the shard sets (with each other, with the vocabulary, with
the model's positions), the batch plan of each phase for N ranks and, where the job will train, the
device. Every problem is collected and reported at once (STYLE habit 2); only phase 1's shard set,
which everything else is measured against, raises on its own.
"""

from __future__ import annotations

from dataclasses import dataclass

from kobert_pretrain.config import Config
from kobert_pretrain.data import Phase, plan_phases
from kobert_pretrain.errors import UserError
from kobert_pretrain.gpu import device_kind
from kobert_pretrain.masking import MaskingSpec
from kobert_pretrain.model import ModelShape
from kobert_pretrain.run_dir import RunDir
from kobert_pretrain.shards.format import ShardSet
from kobert_pretrain.vocab import Vocab

SECTIONS = ("model", "train", "log", "checkpoint")  # the config sections training reads


def config_problems(cfg: Config) -> list[str]:
    """What is wrong with the sections training reads, field by field and across fields."""
    return [p for name in SECTIONS for p in cfg.section(name).validate()]


@dataclass
class Setup:
    """What the checks found: the run's phases, eval set, model shape and vocabulary, and every problem."""

    phases: list[Phase]
    eval_set: ShardSet | None
    shape: ModelShape
    vocab: Vocab | None  # None when it cannot be loaded (`problems` says why)
    problems: list[str]

    @property
    def first(self) -> ShardSet:
        return self.phases[0].shard_set

    @property
    def spec(self) -> MaskingSpec:
        """How the loaders draw dynamic masks: phase 1's settings and the run's vocabulary."""
        return self.first.masking_spec(self.vocab)


def check_setup(cfg: Config, world_size: int, problems: list[str], run_dir: RunDir | None = None,
                num_gpus: int | None = None) -> Setup:
    """Open the run's shard sets for `world_size` ranks and check them; `problems` (the config's, from
    `config_problems`) is extended with every problem found and returned in the Setup.

    `run_dir`: the run directory to check ("is it ours?"), if any. `num_gpus`: the GPUs MXNet sees, for
    the dtype and device checks; None skips them (a dry run plans for another machine).
    """
    tc = cfg.train
    if run_dir is not None:
        problem = run_dir.problem()
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
    vocab = None
    try:
        vocab = first.load_vocab(tc.vocab)
    except UserError as e:
        problems.append(f"{e} (set --train.vocab)")
    if num_gpus is not None:
        if tc.dtype == "float16" and device_kind(tc.device, num_gpus) != "gpu":
            problems.append("train.dtype=float16 needs a GPU (on CPU use float32)")
        if tc.device == "gpu" and num_gpus == 0:
            problems.append("train.device=gpu but MXNet sees no GPU (CPU build of mxnet, or no visible device: "
                            "check CUDA_VISIBLE_DEVICES and `kobert-pretrain doctor`)")
    return Setup(phases, eval_set, shape, vocab, problems)
