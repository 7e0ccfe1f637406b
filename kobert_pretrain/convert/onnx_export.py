"""ONNX export of the converted PyTorch model, checked against PyTorch with onnxruntime."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from kobert_pretrain.convert.parity import parity_batches, record_difference


def export_onnx(model, shape, path: Path, cfg) -> dict:
    import torch

    class Heads(torch.nn.Module):
        """(sequence output, pooled output, MLM logits, NSP logits) from the three standard inputs."""

        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, input_ids, token_type_ids, attention_mask):
            bert = self.model.bert
            out = bert(input_ids=input_ids, token_type_ids=token_type_ids, attention_mask=attention_mask)
            mlm = self.model.cls.predictions(out.last_hidden_state)
            if shape.use_nsp:
                return out.last_hidden_state, out.pooler_output, mlm, self.model.cls.seq_relationship(out.pooler_output)
            return out.last_hidden_state, mlm

    outputs = ["sequence_output", "pooled_output", "mlm_logits", "nsp_logits"] if shape.use_nsp \
        else ["sequence_output", "mlm_logits"]
    wrapper = Heads(model).eval()
    ids, types, valid, _ = next(parity_batches(shape, cfg))
    mask = (np.arange(ids.shape[1])[None, :] < valid[:, None]).astype(np.int64)
    dynamic = {"input_ids": {0: "batch", 1: "sequence"}, "token_type_ids": {0: "batch", 1: "sequence"},
               "attention_mask": {0: "batch", 1: "sequence"}}
    dynamic.update({name: {0: "batch", 1: "sequence"} for name in outputs if name != "pooled_output"})
    dynamic.update({name: {0: "batch"} for name in outputs if name in ("pooled_output", "nsp_logits")})
    with torch.no_grad():
        torch.onnx.export(wrapper, (torch.from_numpy(ids), torch.from_numpy(types), torch.from_numpy(mask)),
                          str(path), input_names=["input_ids", "token_type_ids", "attention_mask"],
                          output_names=outputs, dynamic_axes=dynamic, opset_version=cfg.opset, dynamo=False)
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    worst: dict[str, float] = {}
    for ids, types, valid, _ in parity_batches(shape, cfg):
        mask = (np.arange(ids.shape[1])[None, :] < valid[:, None]).astype(np.int64)
        got = session.run(outputs, {"input_ids": ids, "token_type_ids": types, "attention_mask": mask})
        with torch.no_grad():
            want = wrapper(torch.from_numpy(ids), torch.from_numpy(types), torch.from_numpy(mask))
        keep = mask.astype(bool)
        for name, a, b in zip(outputs, got, want):
            b = b.numpy()
            if name in ("sequence_output", "mlm_logits"):
                a, b = a[keep], b[keep]
            record_difference(worst, name, a, b, cfg.tolerance, "ONNX check failed", "from PyTorch")
    return worst
