"""One fine-tuning run (one seed, pretrained or from scratch) in PyTorch: the loop, dev selection, one test pass.

`BertForSequenceClassification` from a release (or, from scratch, the same config with random weights),
AdamW with linear warm-up and linear decay to 0, gradient clipping, batches padded to their longest example.
After every epoch the model is scored on dev; the state of the best epoch (first on ties) is kept in memory
and the test set, if any, is scored once, with that state, after the last epoch.

Randomness: torch's global generator (classifier and from-scratch initialisation, dropout) is seeded with the
run's seed before the model is built; the data order of epoch e comes from `np.random.default_rng([seed, e])`.
This module imports torch: it is never imported by a training rank (see kobert_pretrain.distributed).
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from kobert_pretrain.config import FinetuneConfig
from kobert_pretrain.errors import UserError
from kobert_pretrain.finetune.metrics import primary_metric, task_metrics
from kobert_pretrain.finetune.tasks import TaskData

PAD_MULTIPLE = 8  # batches padded to a multiple of 8 tokens: tensor-core friendly, few distinct shapes


@dataclass
class Encoded:
    """A task file tokenized once: token ids and segment ids per example, and the labels."""

    input_ids: list[list[int]]
    token_type_ids: list[list[int]]
    labels: np.ndarray  # (examples,) int64 class ids or float32 scores

    def __len__(self) -> int:
        return len(self.input_ids)


def encode(tokenizer, data: TaskData, max_seq_length: int, is_regression: bool) -> Encoded:
    """`[CLS] A [SEP] (B [SEP])`, truncated to max_seq_length (the longer sentence of a pair first)."""
    if data.text_pairs is None:
        out = tokenizer(data.texts, truncation=True, max_length=max_seq_length)
    else:
        out = tokenizer(data.texts, data.text_pairs, truncation="longest_first", max_length=max_seq_length)
    types = out.get("token_type_ids") or [[0] * len(ids) for ids in out["input_ids"]]
    labels = np.asarray(data.labels, dtype=np.float32 if is_regression else np.int64)
    return Encoded(out["input_ids"], types, labels)


def collate(encoded: Encoded, rows, pad_id: int, device) -> dict:
    """The examples `rows` as one padded batch on `device`."""
    length = max(len(encoded.input_ids[r]) for r in rows)
    length = -(-length // PAD_MULTIPLE) * PAD_MULTIPLE
    ids = np.full((len(rows), length), pad_id, dtype=np.int64)  # (batch, seq_len)
    types = np.zeros((len(rows), length), dtype=np.int64)
    mask = np.zeros((len(rows), length), dtype=np.int64)
    for i, r in enumerate(rows):
        n = len(encoded.input_ids[r])
        ids[i, :n] = encoded.input_ids[r]
        types[i, :n] = encoded.token_type_ids[r]
        mask[i, :n] = 1
    batch = {"input_ids": ids, "token_type_ids": types, "attention_mask": mask, "labels": encoded.labels[rows]}
    return {k: torch.from_numpy(v).to(device, non_blocking=True) for k, v in batch.items()}


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--finetune.device=cuda, but torch sees no CUDA device (torch.cuda.is_available() is False)")
    return torch.device(name)


def build_classifier(release: str, num_labels: int, is_regression: bool, from_scratch: bool, seed: int, device):
    """The release's encoder with a new classification head; from scratch: the same config, random weights."""
    from transformers import AutoConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    config = AutoConfig.from_pretrained(release, num_labels=num_labels,
                                        problem_type="regression" if is_regression else "single_label_classification")
    if from_scratch:
        model = BertForSequenceClassification(config)
    else:
        model = BertForSequenceClassification.from_pretrained(release, config=config)
    return model.to(device)


def optimizer_and_schedule(model, cfg: FinetuneConfig, total_steps: int):
    """AdamW (no decay on biases and LayerNorm weights), linear warm-up then linear decay to 0."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        (no_decay if name.endswith("bias") or "LayerNorm" in name else decay).append(param)
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr)
    warmup = int(cfg.warmup_ratio * total_steps)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


@torch.no_grad()
def predict(model, encoded: Encoded, batch_size: int, pad_id: int, device, is_regression: bool) -> np.ndarray:
    """Predicted class ids (or scores) for every example, in order."""
    model.eval()
    out = []
    for start in range(0, len(encoded), batch_size):
        batch = collate(encoded, np.arange(start, min(start + batch_size, len(encoded))), pad_id, device)
        batch.pop("labels")
        logits = model(**batch).logits  # (batch, num_labels)
        out.append((logits[:, 0] if is_regression else logits.argmax(-1)).float().cpu().numpy())
    return np.concatenate(out)


def train_epoch(model, optimizer, schedule, encoded: Encoded, order: np.ndarray, cfg: FinetuneConfig, pad_id: int,
                device, desc: str) -> float:
    """One pass over `encoded` in `order`; returns the mean training loss."""
    model.train()
    loss_sum = torch.zeros((), device=device)  # summed on the device: no host sync per step
    steps = math.ceil(len(order) / cfg.batch_size)
    for start in tqdm(range(0, len(order), cfg.batch_size), total=steps, desc=desc, leave=False, disable=None,
                      file=sys.stderr):
        batch = collate(encoded, order[start:start + cfg.batch_size], pad_id, device)
        loss = model(**batch).loss
        loss.backward()
        if cfg.clip_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad_norm)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        loss_sum += loss.detach()
    return float(loss_sum) / steps


def fine_tune(release: str, train: Encoded, dev: Encoded, test: Encoded | None, cfg: FinetuneConfig, seed: int,
              num_labels: int, is_regression: bool, from_scratch: bool, pad_id: int, device, label: str = "") -> dict:
    """One seed: epochs with dev scores, the chosen epoch, dev and test metrics there, training speed."""
    model = build_classifier(release, num_labels, is_regression, from_scratch, seed, device)
    steps_per_epoch = math.ceil(len(train) / cfg.batch_size)
    optimizer, schedule = optimizer_and_schedule(model, cfg, steps_per_epoch * cfg.epochs)
    key = primary_metric(is_regression)
    epochs, best, best_state = [], None, None
    train_seconds = 0.0
    for epoch in range(1, cfg.epochs + 1):
        order = np.random.default_rng([seed, epoch]).permutation(len(train))
        started = time.perf_counter()
        loss = train_epoch(model, optimizer, schedule, train, order, cfg, pad_id, device,
                           desc=f"{label}seed {seed} epoch {epoch}/{cfg.epochs}")
        train_seconds += time.perf_counter() - started
        dev_metrics = task_metrics(predict(model, dev, cfg.eval_batch_size, pad_id, device, is_regression),
                                   dev.labels, is_regression, num_labels)
        epochs.append({"epoch": epoch, "train_loss": loss, "dev": dev_metrics})
        if best is None or dev_metrics[key] > best["dev"][key]:
            best = epochs[-1]
            best_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
    model.load_state_dict(best_state)
    test_metrics = None
    if test is not None:
        test_metrics = task_metrics(predict(model, test, cfg.eval_batch_size, pad_id, device, is_regression),
                                    test.labels, is_regression, num_labels)
    return {"seed": seed, "epochs": epochs, "chosen_epoch": best["epoch"], "dev": best["dev"], "test": test_metrics,
            "train_examples_per_s": len(train) * cfg.epochs / max(train_seconds, 1e-9)}
