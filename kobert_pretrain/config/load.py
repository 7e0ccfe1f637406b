"""`load_config`: defaults < TOML `[section]` tables < CLI overrides, problems reported together."""

from __future__ import annotations

import contextlib
import dataclasses
import math
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kobert_pretrain.config.downstream import (
    ConvertConfig,
    EvaluateConfig,
    FinetuneConfig,
    StudyConfig,
)
from kobert_pretrain.config.options import bounds_text
from kobert_pretrain.config.pretraining import (
    CheckpointConfig,
    LogConfig,
    ModelConfig,
    PrepareConfig,
    ShardsConfig,
    TrainConfig,
    VocabConfig,
)
from kobert_pretrain.errors import ConfigError, UserError


# Sections of a config file, in pipeline order.
SECTIONS: dict[str, type] = {
    "prepare": PrepareConfig,
    "vocab": VocabConfig,
    "shards": ShardsConfig,
    "model": ModelConfig,
    "train": TrainConfig,
    "log": LogConfig,
    "checkpoint": CheckpointConfig,
    "convert": ConvertConfig,
    "finetune": FinetuneConfig,
    "evaluate": EvaluateConfig,
    "study": StudyConfig,
}


@dataclass
class Config:
    """All sections of one config file."""

    prepare: PrepareConfig = field(default_factory=PrepareConfig)
    vocab: VocabConfig = field(default_factory=VocabConfig)
    shards: ShardsConfig = field(default_factory=ShardsConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    log: LogConfig = field(default_factory=LogConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    convert: ConvertConfig = field(default_factory=ConvertConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    study: StudyConfig = field(default_factory=StudyConfig)

    def section(self, name: str) -> Any:
        return getattr(self, name)


def field_help(cls: type) -> list[tuple[str, str, Any, str]]:
    """(name, type name, default, help) for every field of a section class."""
    hints = typing.get_type_hints(cls)
    rows = []
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        bounds = bounds_text(f.metadata)
        help_text = f.metadata.get("help", "") + (f" [{bounds}]" if bounds else "")
        rows.append((f.name, _type_name(hints[f.name]), default, help_text))
    return rows


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp)


_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


def _coerce(value: Any, tp: Any, where: str, from_cli: bool) -> Any:
    """Convert a TOML value or CLI string to the field type; raise ValueError with a message."""
    origin = typing.get_origin(tp)
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if from_cli and isinstance(value, str):
            value = [v for v in value.split(",") if v != ""]
        if not isinstance(value, list):
            raise ValueError(f"{where}: expected a list, got {value!r}")
        return [_coerce(v, item_tp, where, from_cli) for v in value]
    if tp is bool:
        if isinstance(value, bool):
            return value
        if from_cli and isinstance(value, str) and value.lower() in _TRUE | _FALSE:
            return value.lower() in _TRUE
        raise ValueError(f"{where}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if from_cli and isinstance(value, str):
            try:
                return int(value.replace("_", ""))
            except ValueError:
                pass
        raise ValueError(f"{where}: expected an integer, got {value!r}")
    if tp is float:
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif from_cli and isinstance(value, str):
            with contextlib.suppress(ValueError):
                number = float(value)
        if number is None:
            raise ValueError(f"{where}: expected a number, got {value!r}")
        if not math.isfinite(number):
            raise ValueError(f"{where}: expected a finite number, got {value!r}")
        return number
    if tp is str:
        if isinstance(value, str):
            return value
        raise ValueError(f"{where}: expected a string, got {value!r}")
    raise TypeError(f"unsupported config field type {tp!r} at {where}")


def _apply(cfg: Config, section: str, key: str, value: Any, from_cli: bool, problems: list[str]) -> None:
    if section not in SECTIONS:
        problems.append(f"unknown section [{section}] (known: {', '.join(SECTIONS)})")
        return
    obj = cfg.section(section)
    hints = typing.get_type_hints(type(obj))
    if key not in hints:
        problems.append(f"unknown field {section}.{key}")
        return
    try:
        setattr(obj, key, _coerce(value, hints[key], f"{section}.{key}", from_cli))
    except ValueError as e:
        problems.append(str(e))


def parse_override(arg: str) -> tuple[str, str, str]:
    """'--section.field=value' -> (section, field, value)."""
    body = arg[2:] if arg.startswith("--") else arg
    if "=" not in body or "." not in body.split("=", 1)[0]:
        raise UserError(f"cannot read override {arg!r}: write --section.field=value, e.g. --vocab.vocab_size=8002")
    name, value = body.split("=", 1)
    section, key = name.split(".", 1)
    return section, key.replace("-", "_"), value


def load_config(
    path: str | Path | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    validate: tuple[str, ...] = (),
    flags: dict[str, Any] | None = None,
) -> Config:
    """Defaults, then the TOML file, then CLI values; validate the named sections.

    `flags` maps 'section.field' to values already parsed from plain CLI flags
    (`--vocab-size 8002`); `overrides` are '--section.field=value' strings and
    are applied last.

    Raises ConfigError listing every problem found (unknown keys, wrong types,
    invalid values), or UserError for a missing or malformed file.
    """
    cfg = Config()
    problems: list[str] = []
    if path is not None:
        path = Path(path)
        try:
            with open(path, "rb") as f:
                data = tomllib.load(f)
        except FileNotFoundError:
            raise UserError(f"config file not found: {path}") from None
        except tomllib.TOMLDecodeError as e:
            raise UserError(f"{path} is not valid TOML: {e}") from None
        except UnicodeDecodeError:
            raise UserError(f"{path} is not valid TOML: not UTF-8") from None
        for section, table in data.items():
            if not isinstance(table, dict):
                problems.append(f"{path.name}: top-level key {section!r} must be a [section] table")
                continue
            for key, value in table.items():
                _apply(cfg, section, key, value, False, problems)
    for name, value in (flags or {}).items():
        section, key = name.split(".", 1)
        _apply(cfg, section, key, value, True, problems)
    for arg in overrides:
        section, key, value = parse_override(arg)
        _apply(cfg, section, key, value, True, problems)
    for name in validate:
        problems.extend(cfg.section(name).validate())
    if problems:
        raise ConfigError(problems)
    return cfg
