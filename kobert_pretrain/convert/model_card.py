"""The model card (README.md) of a release, from the checkpoint's state, the run's metrics and the parity report."""

from __future__ import annotations

import json

from kobert_pretrain.model import ModelShape
from kobert_pretrain.run_dir import RunDir
from kobert_pretrain.train_state import TrainingState


def model_card(ckpt, state: TrainingState, shape: ModelShape, report: dict) -> str:
    """README.md of a release: architecture, training, the run's last evaluation, parity, usage."""
    evals = []
    metrics = RunDir.of_checkpoint(ckpt.path).metrics
    if metrics.exists():
        for line in metrics.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if record.get("kind") == "eval" and record.get("step", 0) <= state.step:
                evals.append(record)
    final_eval = evals[-1] if evals else None
    train = state.config["train"]
    eval_text = ("\n".join(f"- {k}: {v:.4f}" for k, v in final_eval.items() if k.startswith("eval_"))
                 + f"\n(at step {final_eval['step']})") if final_eval else "No held-out evaluation was run."
    arch = "BertForPreTraining" if shape.use_nsp else "BertForMaskedLM"
    return f"""# BERT pretrained with kobert-pretrain

- Architecture: `{arch}`, {shape.num_layers} layers x {shape.units} hidden, {shape.num_heads} heads,
  FFN {shape.hidden_size}, {shape.max_length} positions, vocabulary {shape.vocab_size} (SentencePiece,
  cased; `[UNK]=0 [PAD]=1 [CLS]=2 [SEP]=3 [MASK]=4`), {shape.parameter_count():,} parameters.
- Training: {state.step:,} steps, {state.tokens_seen:,} tokens seen, optimizer {train['optimizer']}
  (peak lr {train['lr']:g}, warm-up {train['warmup_steps']} steps, {train['decay']} decay), global batch
  {train['global_batch_size'] or 'micro x ranks'}, {train['dtype']}, seed {train['seed']}.
- Checkpoint: `{ckpt.path}`.

## Evaluation

{eval_text}

## Conversion check

Largest absolute differences between the MXNet model and this one on random padded batches
(tolerance {report['tolerance']:g}):

```json
{json.dumps({k: v for k, v in report.items() if k in ('mxnet_vs_pytorch', 'pytorch_vs_onnx')}, indent=2)}
```

## Use

```python
from transformers import AutoTokenizer, {arch}, pipeline

tokenizer = AutoTokenizer.from_pretrained("PATH")   # spm.model's ids, see below
model = {arch}.from_pretrained("PATH")
fill = pipeline("fill-mask", model="PATH")
print(fill("대한민국의 수도는 [MASK]이다."))
```

The tokenizer gives the ids `sentencepiece` gives with `spm.model` (its normalization included: NFD or
compatibility jamo, full- and half-width forms, control characters), inside `[CLS] ... [SEP]`. One exception:
where two orders of the same pieces score exactly alike (a run of dots), SentencePiece's float32 rounding
picks one and the fast tokenizer's float64 may pick the other.

Special tokens typed in the text are special tokens: `[MASK]`, `[CLS]`, `[SEP]`, `[UNK]` and `[PAD]` become
ids 4, 2, 3, 0 and 1 (`sentencepiece` spells them out). `[MASK]` takes the spaces before it, and the text
right after it continues the masked word, as in training: `수도는 [MASK]이다.` gives `... 는 [MASK] 이 다 .`,
as a masked `▁서울` followed by `이`; write `[MASK] 이다` for a new word after it.

`BertModel.from_pretrained("PATH")` gives the encoder alone. `model.onnx` (if present) takes
`input_ids`, `token_type_ids`, `attention_mask` (int64, dynamic batch and sequence) and returns
the sequence output, pooled output, MLM logits and NSP logits.
"""
