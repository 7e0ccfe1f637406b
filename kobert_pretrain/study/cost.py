"""What a vocabulary costs: parameters (the embedding share), training speed, release size, and the
encoder's ONNX inference latency on held-out sentences (onnxruntime, CPU).

Latency is measured on the encoder alone (`BertModel`: sequence and pooled output), as a fine-tuned
classifier or a dialogue engine runs it; the release's model.onnx also computes the masked-LM logits
over the whole vocabulary at every position, which only pretraining needs.
"""

from __future__ import annotations

import statistics
import time
import warnings
from pathlib import Path

import numpy as np

from kobert_pretrain.model import ModelShape

WARMUP_RUNS = 3


def parameter_counts(shape: ModelShape) -> dict:
    total = shape.parameter_count()
    embedding = shape.vocab_size * shape.units + shape.vocab_size  # word embedding (tied decoder) + output bias
    return {"parameters": total, "vocabulary_parameters": embedding, "vocabulary_share": embedding / total}


def training_speed(records: list[dict]) -> dict:
    """Median sequences/s and tokens/s of a run's metrics.jsonl records (train records; the first window,
    with start-up, left out)."""
    train = [r for r in records if r.get("kind") == "train"]
    timed = train[1:] or train
    if not timed:
        return {"sequences_per_s": None, "tokens_per_s": None}
    return {"sequences_per_s": statistics.median(r["sequences_per_s"] for r in timed),
            "tokens_per_s": statistics.median(r["tokens_per_s"] for r in timed)}


def release_size(release: Path) -> dict:
    files = [f for f in release.iterdir() if f.is_file()]
    return {"release_bytes": sum(f.stat().st_size for f in files),
            "weights_bytes": (release / "model.safetensors").stat().st_size}


def export_encoder(release: Path, path: Path, opset: int) -> None:
    """The release's encoder (`BertModel`, no heads) as ONNX, written atomically by the caller's directory."""
    import torch
    import transformers
    from transformers import BertModel

    transformers.utils.logging.set_verbosity_error()  # "unexpected keys": the MLM and NSP heads, left out here
    model = BertModel.from_pretrained(str(release), add_pooling_layer=True).eval()

    class Encoder(torch.nn.Module):
        def __init__(self, bert):
            super().__init__()
            self.bert = bert

        def forward(self, input_ids, token_type_ids, attention_mask):
            out = self.bert(input_ids=input_ids, token_type_ids=token_type_ids, attention_mask=attention_mask)
            return out.last_hidden_state, out.pooler_output

    ids = torch.full((2, 8), 5, dtype=torch.long)
    axes = {0: "batch", 1: "sequence"}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's notes on Python booleans in transformers' masking code
        torch.onnx.export(Encoder(model), (ids, torch.zeros_like(ids), torch.ones_like(ids)), str(path),
                          input_names=["input_ids", "token_type_ids", "attention_mask"],
                          output_names=["sequence_output", "pooled_output"],
                          dynamic_axes={"input_ids": axes, "token_type_ids": axes, "attention_mask": axes,
                                        "sequence_output": axes, "pooled_output": {0: "batch"}},
                          opset_version=opset, dynamo=False)


def onnx_latency(model_file: Path, release: Path, sentences: list[str], max_seq_length: int, repeats: int,
                 threads: int) -> dict:
    """Median seconds for one batch of `sentences` (padded to the longest), and sentences per second."""
    import onnxruntime
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(release))
    batch = tokenizer(sentences, padding="longest", truncation=True, max_length=max_seq_length, return_tensors="np")
    feed = {name: batch[name].astype(np.int64) for name in ("input_ids", "token_type_ids", "attention_mask")}
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = onnxruntime.InferenceSession(str(model_file), options, providers=["CPUExecutionProvider"])
    for _ in range(WARMUP_RUNS):
        session.run(None, feed)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        session.run(None, feed)
        times.append(time.perf_counter() - started)
    median = statistics.median(times)
    return {"batch_sentences": len(sentences), "batch_tokens": int(feed["attention_mask"].sum()),
            "padded_length": int(feed["input_ids"].shape[1]), "latency_s": median,
            "sentences_per_s": len(sentences) / median, "threads": threads, "repeats": repeats}
