"""Parity: the random padded batches a conversion is checked on, and the MXNet vs PyTorch comparison.

`verify_pytorch` runs the trained MXNet model and its Hugging Face conversion on the same batches and
compares every layer and both heads; `onnx_export` checks ONNX against PyTorch on the same batches.
`record_difference` keeps the largest difference per output and stops a conversion that exceeds the
tolerance, before anything is written.
"""

from __future__ import annotations

import numpy as np

from kobert_pretrain.config import ConvertConfig
from kobert_pretrain.errors import UserError
from kobert_pretrain.model import ModelShape, build_model
from kobert_pretrain.vocab import CLS, PAD, SEP, SPECIAL_IDS


def parity_batches(shape: ModelShape, cfg: ConvertConfig):
    """Random padded batches: (input_ids, token_type_ids, valid_length, masked_positions), numpy int64."""
    rng = np.random.default_rng(cfg.seed)
    seq = min(shape.max_length, 48)
    for _ in range(cfg.parity_batches):
        batch = 4
        valid = rng.integers(6, seq + 1, batch)
        valid[0] = seq  # one full-length row
        ids = np.full((batch, seq), SPECIAL_IDS[PAD], dtype=np.int64)
        types = np.zeros((batch, seq), dtype=np.int64)
        positions = np.zeros((batch, 5), dtype=np.int64)
        for r, n in enumerate(valid):
            ids[r, :n] = rng.integers(5, shape.vocab_size, n)
            ids[r, 0], ids[r, n - 1] = SPECIAL_IDS[CLS], SPECIAL_IDS[SEP]
            split = int(rng.integers(2, n - 2))
            ids[r, split] = SPECIAL_IDS[SEP]
            types[r, split + 1:n] = 1
            positions[r] = rng.choice(np.arange(1, n - 1), 5, replace=False)
        yield ids, types, valid, positions


def verify_pytorch(arrays: dict, shape: ModelShape, model, cfg: ConvertConfig) -> dict:
    """Run MXNet and the converted model on the same batches; compare every layer and both heads.

    `arrays` is model.params as read (by structural name, as `save_parameters` writes them): the file itself
    may be gone by now.
    """
    import mxnet as mx
    import torch

    net = build_model(shape, all_encodings=True)
    # What Block.load_parameters does after reading its file: structural names -> the parameters' own names.
    by_structure = net._collect_params_with_prefix()
    net.collect_params().load_dict({by_structure[k].name: v for k, v in arrays.items()}, ctx=mx.cpu(),
                                   cast_dtype=True)
    worst: dict[str, float] = {}
    for ids, types, valid, positions in parity_batches(shape, cfg):
        out = net(mx.nd.array(ids), mx.nd.array(types), mx.nd.array(valid), mx.nd.array(positions))
        layers, pooled = out[0], out[1]
        mlm = out[-1].asnumpy()
        mask = np.arange(ids.shape[1])[None, :] < valid[:, None]
        with torch.no_grad():
            hf = model(input_ids=torch.from_numpy(ids), token_type_ids=torch.from_numpy(types),
                       attention_mask=torch.from_numpy(mask.astype(np.int64)), output_hidden_states=True)
            hf_pooled = model.bert.pooler(hf.hidden_states[-1]).numpy() if shape.use_nsp else None
        compared = []
        for i, layer in enumerate(layers):
            compared.append((f"layer_{i + 1}", layer.asnumpy()[mask], hf.hidden_states[i + 1].numpy()[mask]))
        logits = hf.prediction_logits if shape.use_nsp else hf.logits
        rows = np.arange(len(ids))[:, None]
        compared.append(("mlm_logits", mlm, logits.numpy()[rows, positions]))
        if shape.use_nsp:
            compared.append(("pooled_output", pooled.asnumpy(), hf_pooled))
            compared.append(("nsp_logits", out[2].asnumpy(), hf.seq_relationship_logits.numpy()))
        for name, a, b in compared:
            record_difference(worst, name, a, b, cfg.tolerance, "conversion check failed", "between MXNet and PyTorch")
    return worst


def record_difference(worst: dict, name: str, a, b, tolerance: float, failure: str, between: str) -> None:
    """Keep the largest |a - b| per output; stop the conversion if it exceeds the tolerance (NaN too)."""
    diff = float(np.abs(a - b).max())
    worst[name] = max(worst.get(name, 0.0), diff)
    if not diff <= tolerance:
        raise UserError(f"{failure}: {name} differs {between} by {diff:.3g} (tolerance {tolerance:g}); "
                        "nothing was written")


