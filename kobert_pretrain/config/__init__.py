"""One config dataclass per stage, loaded from TOML and overridable on the CLI.

Precedence: CLI (`--section.field=value` or a plain flag such as `--vocab-size`)
> TOML file (`[section]` tables, see `configs/`) > the defaults in the section classes.
Every field carries a one-line help text with its unit; `kobert-pretrain
SUBCOMMAND --help` lists them. Problems are collected and reported together
(`ConfigError`), before any stage starts work.

    options.py      `opt` (a field with help text and bounds), the bounds check, to_dict, config_hash
    pretraining.py  the sections of prepare, vocab, shards, model, train, log, checkpoint
    downstream.py   the sections of convert, finetune, evaluate, study
    load.py         SECTIONS, Config, field_help, load_config (TOML + CLI overrides)
"""

from kobert_pretrain.config.options import (
    bounds_problems,
    bounds_text,
    config_hash,
    opt,
    to_dict,
)
from kobert_pretrain.config.pretraining import (
    CheckpointConfig,
    DECAYS,
    DEVICES,
    DTYPES,
    INPUT_FORMATS,
    LogConfig,
    MASKING_MODES,
    MODEL_PRESETS,
    ModelConfig,
    OPTIMIZERS,
    PREPARE_FORMATS,
    PRESETS,
    PrepareConfig,
    SPLITTERS,
    SPM_MODEL_TYPES,
    SPM_NORMALIZATIONS,
    ShardsConfig,
    TEXT_DOCUMENTS,
    TrainConfig,
    VocabConfig,
)
from kobert_pretrain.config.downstream import (
    ConvertConfig,
    EvaluateConfig,
    FINETUNE_DEVICES,
    FINETUNE_TASKS,
    FINETUNE_TASK_ALIASES,
    FinetuneConfig,
    StudyConfig,
)
from kobert_pretrain.config.load import (
    Config,
    SECTIONS,
    field_help,
    load_config,
    parse_override,
)
from kobert_pretrain.errors import ConfigError

__all__ = [
    "CheckpointConfig",
    "Config",
    "ConfigError",
    "ConvertConfig",
    "DECAYS",
    "DEVICES",
    "DTYPES",
    "EvaluateConfig",
    "FINETUNE_DEVICES",
    "FINETUNE_TASKS",
    "FINETUNE_TASK_ALIASES",
    "FinetuneConfig",
    "INPUT_FORMATS",
    "LogConfig",
    "MASKING_MODES",
    "MODEL_PRESETS",
    "ModelConfig",
    "OPTIMIZERS",
    "PREPARE_FORMATS",
    "PRESETS",
    "PrepareConfig",
    "SECTIONS",
    "SPLITTERS",
    "SPM_MODEL_TYPES",
    "SPM_NORMALIZATIONS",
    "ShardsConfig",
    "StudyConfig",
    "TEXT_DOCUMENTS",
    "TrainConfig",
    "VocabConfig",
    "bounds_problems",
    "bounds_text",
    "config_hash",
    "field_help",
    "load_config",
    "opt",
    "parse_override",
    "to_dict",
]
