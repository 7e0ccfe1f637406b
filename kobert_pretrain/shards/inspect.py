"""`kobert-pretrain inspect DIR`: a shard set's totals and a few decoded instances."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from kobert_pretrain.errors import UserError
from kobert_pretrain.masking import instance_draws, mask_batch
from kobert_pretrain.shards.format import ShardSet

TOTALS = ("num_instances", "num_tokens", "num_padded_tokens", "num_random_next", "num_documents",
          "num_sentences", "text_tokens", "undecodable_lines", "max_seq_length", "masking", "vocab_size")


def inspect_shards(path: str | Path, num_examples: int = 3, vocab_dir: str | None = None,
                   verify: bool = False) -> dict:
    """Totals, per-shard counts and `num_examples` decoded instances of shard 0 (epoch-0 masks if dynamic)."""
    shard_set = ShardSet.open(path, verify=verify)
    index = shard_set.index
    try:
        vocab = shard_set.load_vocab(vocab_dir)
    except UserError as e:
        raise UserError(f"{e} (pass --vocab DIR to decode the instances)") from None
    report = {key: index[key] for key in TOTALS}
    report["num_shards"] = shard_set.num_shards
    report["shard_instances"] = shard_set.counts
    report["verified"] = verify
    report["examples"] = []
    shard = shard_set.shard(0)
    spec = shard_set.masking_spec(vocab)
    for i in range(min(num_examples, len(shard))):
        lo, hi = int(shard.offsets[i]), int(shard.offsets[i + 1])
        ids = np.asarray(shard.tokens[lo:hi], dtype=np.int64)
        len_a = int(shard.len_a[i])
        if shard.static:
            m0, m1 = int(shard.mlm_offsets[i]), int(shard.mlm_offsets[i + 1])
            positions = shard.mlm_positions[m0:m1].tolist()
            labels = shard.mlm_labels[m0:m1].tolist()
            masked = ids
        else:
            draws = instance_draws(index["seed"], 0, 0, i, index["max_seq_length"])[None]
            masked, pos, lab, w = mask_batch(ids[None], np.array([len(ids)]), np.array([len_a]), spec, draws)
            masked, keep = masked[0], w[0] > 0
            positions, labels = pos[0][keep].tolist(), lab[0][keep].tolist()
        pieces = vocab.pieces(masked)
        report["examples"].append({
            "segment_a": "".join(vocab.pieces(ids[1:1 + len_a])).replace("\u2581", " ").strip(),
            "segment_b": "".join(vocab.pieces(ids[2 + len_a:-1])).replace("\u2581", " ").strip(),
            "input_pieces": pieces,
            "masked_positions": positions,
            "masked_labels": vocab.pieces(labels),
            "nsp_label": int(shard.nsp[i]),
            "is_random_next": bool(shard.nsp[i]),
        })
    return report


def format_report(report: dict) -> str:
    lines = [f"{key:>20}: {report[key]:,}" if isinstance(report[key], int) else f"{key:>20}: {report[key]}"
             for key in TOTALS]
    lines.append(f"{'num_shards':>20}: {report['num_shards']} (instances per shard "
                 f"{min(report['shard_instances'])}..{max(report['shard_instances'])})")
    if report["verified"]:
        lines.append(f"{'checksums':>20}: all files match")
    for n, ex in enumerate(report["examples"]):
        lines.append(f"\n-- instance {n} (shard 0): NSP label {ex['nsp_label']} "
                     f"({'random next' if ex['is_random_next'] else 'actual next'})")
        lines.append(f"   A: {ex['segment_a']}")
        lines.append(f"   B: {ex['segment_b']}")
        lines.append(f"   input: {' '.join(ex['input_pieces'])}")
        masks = ", ".join(f"{p}:{lab}" for p, lab in zip(ex["masked_positions"], ex["masked_labels"]))
        lines.append(f"   masked (position:original): {masks}")
    return "\n".join(lines)


def to_json(report: dict) -> str:
    return json.dumps(report, ensure_ascii=False, indent=2)
