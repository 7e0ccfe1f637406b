"""What a shard set's bytes depend on, and how two such descriptions differ (for the one-line refusal of a
re-run with other settings, inputs or vocabulary)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from kobert_pretrain.config import ShardsConfig
from kobert_pretrain.shards.format import FORMAT

# Covered by "inputs" (resolved files) and "vocab_sha256": how the user spelled them does not matter.
SPELLED_PATHS = ("input", "vocab")


def build_identity(cfg: ShardsConfig, vocab_sha256: str, paths: list[Path]) -> dict:
    """What the output depends on: generation settings, the vocabulary's sha256, the resolved input files and sizes.

    Paths as typed (relative or absolute, a glob or a list) are left out, so a resume does
    not depend on how the same inputs and vocabulary are spelled.
    """
    settings = {k: v for k, v in cfg.generation_dict().items() if k not in SPELLED_PATHS}
    return {"format": FORMAT, "config": settings, "vocab_sha256": vocab_sha256,
            "inputs": [[str(p), p.stat().st_size] for p in paths]}


def fingerprint(identity: dict) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


def identity_differences(old: dict, new: dict) -> list[str]:
    """What differs between an existing build's identity (index.json or plan.json) and this run's."""
    if not old:
        return ["its settings are not recorded (it was started by an older kobert-pretrain)"]
    diffs = []
    if old.get("format") != new["format"]:
        diffs.append(f"format {old.get('format')} vs {new['format']}")
    old_inputs, new_inputs = old.get("inputs"), new["inputs"]
    if old_inputs is not None and old_inputs != new_inputs:
        old_sizes, new_sizes = dict(map(tuple, old_inputs)), dict(map(tuple, new_inputs))
        parts = [f"{p} only there" for p in old_sizes if p not in new_sizes]
        parts += [f"{p} only now" for p in new_sizes if p not in old_sizes]
        parts += [f"{p} {old_sizes[p]:,} vs {new_sizes[p]:,} bytes" for p in new_sizes
                  if p in old_sizes and old_sizes[p] != new_sizes[p]]
        if not parts:
            parts = ["the same files in another order"]
        shown = parts[:3] + ([f"{len(parts) - 3} more"] if len(parts) > 3 else [])
        diffs.append("inputs differ: " + ", ".join(shown))
    if old.get("vocab_sha256") != new["vocab_sha256"]:
        diffs.append(f"vocab sha256 differs: {str(old.get('vocab_sha256'))[:12]}... vs {new['vocab_sha256'][:12]}...")
    old_config = {k: v for k, v in (old.get("config") or {}).items() if k not in SPELLED_PATHS}
    for key in sorted(set(old_config) | set(new["config"])):
        if old_config.get(key) != new["config"].get(key):
            diffs.append(f"setting {key} {old_config.get(key)} vs {new['config'].get(key)}")
    if not diffs:
        diffs.append("it was made by another kobert-pretrain version (the fingerprint is computed differently)")
    return diffs
