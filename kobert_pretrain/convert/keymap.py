"""Gluon (GluonNLP 0.10 `BERTModel`) parameter names -> Hugging Face `BertForPreTraining` names.

One table; `{}` stands for the layer index. Every Gluon parameter must match exactly one row
and every Hugging Face parameter must be produced, or conversion stops with the offending
names. GluonNLP stores query/key/value as three (units, units) matrices with the heads
contiguous along the output dimension, as Hugging Face does, and MXNet Dense weights are
(out, in) like torch Linear: no reshaping or transposing.
"""

from __future__ import annotations

import re

import numpy as np

from kobert_pretrain.errors import UserError

KEY_MAP: list[tuple[str, str]] = [
    ("word_embed.0.weight", "bert.embeddings.word_embeddings.weight"),
    ("token_type_embed.0.weight", "bert.embeddings.token_type_embeddings.weight"),
    ("encoder.position_weight", "bert.embeddings.position_embeddings.weight"),
    ("encoder.layer_norm.gamma", "bert.embeddings.LayerNorm.weight"),
    ("encoder.layer_norm.beta", "bert.embeddings.LayerNorm.bias"),
    ("encoder.transformer_cells.{}.attention_cell.proj_query.weight", "bert.encoder.layer.{}.attention.self.query.weight"),
    ("encoder.transformer_cells.{}.attention_cell.proj_query.bias", "bert.encoder.layer.{}.attention.self.query.bias"),
    ("encoder.transformer_cells.{}.attention_cell.proj_key.weight", "bert.encoder.layer.{}.attention.self.key.weight"),
    ("encoder.transformer_cells.{}.attention_cell.proj_key.bias", "bert.encoder.layer.{}.attention.self.key.bias"),
    ("encoder.transformer_cells.{}.attention_cell.proj_value.weight", "bert.encoder.layer.{}.attention.self.value.weight"),
    ("encoder.transformer_cells.{}.attention_cell.proj_value.bias", "bert.encoder.layer.{}.attention.self.value.bias"),
    ("encoder.transformer_cells.{}.proj.weight", "bert.encoder.layer.{}.attention.output.dense.weight"),
    ("encoder.transformer_cells.{}.proj.bias", "bert.encoder.layer.{}.attention.output.dense.bias"),
    ("encoder.transformer_cells.{}.layer_norm.gamma", "bert.encoder.layer.{}.attention.output.LayerNorm.weight"),
    ("encoder.transformer_cells.{}.layer_norm.beta", "bert.encoder.layer.{}.attention.output.LayerNorm.bias"),
    ("encoder.transformer_cells.{}.ffn.ffn_1.weight", "bert.encoder.layer.{}.intermediate.dense.weight"),
    ("encoder.transformer_cells.{}.ffn.ffn_1.bias", "bert.encoder.layer.{}.intermediate.dense.bias"),
    ("encoder.transformer_cells.{}.ffn.ffn_2.weight", "bert.encoder.layer.{}.output.dense.weight"),
    ("encoder.transformer_cells.{}.ffn.ffn_2.bias", "bert.encoder.layer.{}.output.dense.bias"),
    ("encoder.transformer_cells.{}.ffn.layer_norm.gamma", "bert.encoder.layer.{}.output.LayerNorm.weight"),
    ("encoder.transformer_cells.{}.ffn.layer_norm.beta", "bert.encoder.layer.{}.output.LayerNorm.bias"),
    ("pooler.weight", "bert.pooler.dense.weight"),
    ("pooler.bias", "bert.pooler.dense.bias"),
    ("classifier.weight", "cls.seq_relationship.weight"),
    ("classifier.bias", "cls.seq_relationship.bias"),
    ("decoder.0.weight", "cls.predictions.transform.dense.weight"),
    ("decoder.0.bias", "cls.predictions.transform.dense.bias"),
    ("decoder.2.gamma", "cls.predictions.transform.LayerNorm.weight"),
    ("decoder.2.beta", "cls.predictions.transform.LayerNorm.bias"),
    ("decoder.3.bias", "cls.predictions.bias"),
    # The MLM output weight is the word embedding (tied); Hugging Face ties it the same way.
    ("decoder.3.weight", "cls.predictions.decoder.weight"),
]

_PATTERNS = [(re.compile("^" + re.escape(g).replace(r"\{\}", r"(\d+)") + "$"), h) for g, h in KEY_MAP]


def hf_name(gluon_name: str) -> str | None:
    for pattern, target in _PATTERNS:
        match = pattern.match(gluon_name)
        if match:
            return target.format(*match.groups())
    return None


def convert_state(params: dict[str, np.ndarray], expected: dict[str, tuple[int, ...]]) -> dict[str, np.ndarray]:
    """Map Gluon arrays to Hugging Face names; check names and shapes against the target model's.

    `expected` is the target model's state_dict shapes. Raises UserError naming unknown Gluon
    keys, target keys left unset, and shape mismatches (all of them at once).
    """
    out: dict[str, np.ndarray] = {}
    unknown = []
    for name, array in params.items():
        target = hf_name(name)
        if target is None:
            unknown.append(name)
            continue
        out[target] = array
    problems = []
    if unknown:
        problems.append(f"unknown Gluon parameter(s): {', '.join(sorted(unknown))}")
    unused = sorted(k for k in out if k not in expected)
    if unused:
        problems.append(f"parameter(s) with no place in the Hugging Face model (missing head?): {', '.join(unused)}")
    missing = sorted(k for k in expected if k not in out and not k.endswith("cls.predictions.decoder.bias"))
    if missing:
        problems.append(f"Hugging Face parameter(s) not provided by the checkpoint (missing head?): "
                        f"{', '.join(missing[:8])}{' ...' if len(missing) > 8 else ''}")
    mismatched = [f"{k} {tuple(out[k].shape)} vs {tuple(expected[k])}" for k in sorted(out)
                  if k in expected and tuple(out[k].shape) != tuple(expected[k])]
    if mismatched:
        problems.append(f"shape mismatch: {'; '.join(mismatched[:5])}")
    if problems:
        raise UserError("cannot convert: " + " | ".join(problems))
    if "cls.predictions.decoder.weight" in out and not np.array_equal(
            out["cls.predictions.decoder.weight"], out["bert.embeddings.word_embeddings.weight"]):
        raise UserError("cannot convert: the MLM decoder weight is not tied to the word embedding")
    return out
