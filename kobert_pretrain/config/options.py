"""Fields with their help text and bounds (`opt`), the bounds check every section runs, and the
section helpers (`to_dict`, `config_hash`)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import field
from typing import Any


def opt(default: Any, help: str, *, choices: tuple | None = None, min: float | None = None,
        max: float | None = None, open_min: bool = False, open_max: bool = False, note: str = "",
        shown: str = "") -> Any:
    """A dataclass field with its help text and its bounds, both shown by --help.

    Bounds: `choices` (the allowed strings), or `min` and/or `max` (inclusive; `open_min` / `open_max`
    exclude them). `note` is added to the message in parentheses ("0 = preset"); `shown` replaces the
    printed range ("[1, 2^24]"). `bounds_problems` checks them; a section's `validate()` adds only the
    rules that involve more than one field (or whether a field is given at all).
    """
    metadata = {"help": help, "choices": choices, "min": min, "max": max, "open_min": open_min,
                "open_max": open_max, "note": note, "shown": shown}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=metadata)
    return field(default=default, metadata=metadata)


def _number(x: float) -> str:
    return f"{x:g}"


def bounds_text(metadata: Any) -> str:
    """The bounds of a field as --help and the error messages show them: "one of a, b", ">= 1", "[0, 1)"."""
    lo, hi = metadata.get("min"), metadata.get("max")
    if metadata.get("choices"):
        return "one of " + ", ".join(metadata["choices"])
    if metadata.get("shown"):
        return "in " + metadata["shown"]
    if lo is not None and hi is not None:
        return (f"in {'(' if metadata['open_min'] else '['}{_number(lo)}, {_number(hi)}"
                f"{')' if metadata['open_max'] else ']'}")
    if lo is not None:
        return f"{'>' if metadata['open_min'] else '>='} {_number(lo)}"
    if hi is not None:
        return f"{'<' if metadata['open_max'] else '<='} {_number(hi)}"
    return ""


def bounds_problems(section: str, obj: Any) -> list[str]:
    """`section.field=value: must be ...` for every field of `obj` outside the bounds beside its help."""
    problems = []
    for f in dataclasses.fields(obj):
        m, value = f.metadata, getattr(obj, f.name)
        lo, hi = m.get("min"), m.get("max")
        if m.get("choices"):
            bad = value not in m["choices"]
        else:
            bad = (lo is not None and (value <= lo if m["open_min"] else value < lo)) \
                or (hi is not None and (value >= hi if m["open_max"] else value > hi))
        if bad:
            shown = repr(value) if m.get("choices") else (_number(value) if m.get("shown") else value)
            problems.append(f"{section}.{f.name}={shown}: must be {bounds_text(m)}"
                            + (f" ({m['note']})" if m.get("note") else ""))
    return problems


# What a missing path option says, the same for every stage.
GIVE_INPUT = "give at least one --input file, glob or directory"
GIVE_OUT = "give an output directory with --out"


def missing_problems(section: str, obj: Any, **hints: str) -> list[str]:
    """`section.field: hint` for every named field of `obj` that is empty, in the order given."""
    return [f"{section}.{name}: {hint}" for name, hint in hints.items() if not getattr(obj, name)]


def to_dict(obj: Any) -> dict:
    return dataclasses.asdict(obj)


def config_hash(obj: Any) -> str:
    """Short content hash of a config section (16 hex digits of sha256 over sorted JSON)."""
    blob = json.dumps(to_dict(obj), sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:16]
