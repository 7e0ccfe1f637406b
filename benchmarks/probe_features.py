"""Linear probe: do a release's frozen features carry a task's signal, more than the same model's at random init?

For the sentences of a train and a dev file (NSMC format: id, document, label), four feature vectors per
sentence are taken from the frozen model (no fine-tuning): the final [CLS] state, the masked mean of the final
states, the pooler output, and the masked mean of the embedding layer's output. A standardised logistic
regression (scikit-learn) is fitted on the train features and scored on dev, for the release and for the same
architecture with random weights (`BertModel(config)`, torch seed 1). Also printed: the spread of each
feature over sentences (mean distance to the mean / mean norm): a random post-LN BERT gives nearly the same
[CLS] vector for every input.

    PYTHONPATH=. .venv/bin/python benchmarks/probe_features.py RELEASE --train nsmc_train.tsv --dev dev.tsv \
        [--train-examples 1000] [--threads 1]

Used in benchmarks/RESULTS.md (fine-tuning section) to tell "the pretraining taught nothing the task can use"
from "fine-tuning throws away what it taught".
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def read_rows(path: str, limit: int) -> tuple[list[str], np.ndarray]:
    """The first `limit` sentences of an NSMC-format file and their integer labels (read by `finetune`'s reader)."""
    from kobert_pretrain.finetune.tasks import read_task_file, task_spec

    data, raw_labels = read_task_file(Path(path), task_spec("sentence-classification"))
    return data.texts[:limit], np.array([int(label) for label in raw_labels[:limit]])


def features(model, tokenizer, texts: list[str], max_length: int) -> dict[str, np.ndarray]:
    import torch

    parts: dict[str, list] = {"cls": [], "mean": [], "pooler": [], "embeddings": []}
    with torch.no_grad():
        for i in range(0, len(texts), 64):
            batch = tokenizer(texts[i:i + 64], padding=True, truncation=True, max_length=max_length,
                              return_tensors="pt")
            out = model(**batch, output_hidden_states=True)
            mask = batch["attention_mask"].unsqueeze(-1).float()
            last, first = out.last_hidden_state, out.hidden_states[0]
            parts["cls"].append(last[:, 0])
            parts["mean"].append((last * mask).sum(1) / mask.sum(1))
            parts["pooler"].append(out.pooler_output)
            parts["embeddings"].append((first * mask).sum(1) / mask.sum(1))
    return {k: torch.cat(v).numpy() for k, v in parts.items()}


def probe(train_x: np.ndarray, train_y: np.ndarray, dev_x: np.ndarray, dev_y: np.ndarray) -> float:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000, C=0.1)).fit(train_x, train_y)
    return float(clf.score(dev_x, dev_y))


def spread(x: np.ndarray) -> float:
    return float(np.linalg.norm(x - x.mean(0), axis=1).mean() / np.linalg.norm(x, axis=1).mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("release")
    ap.add_argument("--train", required=True)
    ap.add_argument("--dev", required=True)
    ap.add_argument("--train-examples", type=int, default=1000)
    ap.add_argument("--dev-examples", type=int, default=1000)
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()

    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # the pooler of an MLM-only release is newly initialised: expected
    torch.set_num_threads(args.threads)
    train_texts, train_y = read_rows(args.train, args.train_examples)
    dev_texts, dev_y = read_rows(args.dev, args.dev_examples)
    tokenizer = AutoTokenizer.from_pretrained(args.release)
    pretrained = BertModel.from_pretrained(args.release).eval()
    torch.manual_seed(1)
    random_init = BertModel(BertConfig.from_pretrained(args.release)).eval()
    result = {"release": args.release, "train_examples": len(train_y), "dev_examples": len(dev_y),
              "dev_majority": float(max(dev_y.mean(), 1 - dev_y.mean()))}
    for name, model in (("pretrained", pretrained), ("random_init", random_init)):
        tr, dv = features(model, tokenizer, train_texts, args.max_length), features(model, tokenizer, dev_texts,
                                                                                 args.max_length)
        result[name] = {k: {"dev_accuracy": round(probe(tr[k], train_y, dv[k], dev_y), 4),
                            "spread": round(spread(tr[k]), 3)} for k in tr}
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
