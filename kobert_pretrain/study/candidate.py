"""One candidate of a vocabulary study: vocabulary -> shards -> train -> convert -> measure (-> fine-tune).

Each stage writes an ordinary output of its own command into STUDY/candidates/NAME/ (vocab/, shards/,
eval_shards/, run/, release/, finetune/) and is skipped when that output is already complete, so a
killed study resumes inside the candidate it was working on. `candidate.json`, written last and
atomically, marks the candidate finished; a finished candidate is read back, never redone.
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

from kobert_pretrain.checkpoint import CheckpointManager
from kobert_pretrain.config import Config, to_dict
from kobert_pretrain.convert import convert
from kobert_pretrain.finetune import finetune
from kobert_pretrain.finetune.metrics import primary_metric
from kobert_pretrain.fsutil import atomic_output_dir, atomic_write_json
from kobert_pretrain.model import ModelShape
from kobert_pretrain.shards import build_shards
from kobert_pretrain.shards.format import ShardSet
from kobert_pretrain.study.cost import export_encoder, onnx_latency, parameter_counts, release_size, training_speed
from kobert_pretrain.study.heldout import Split
from kobert_pretrain.study.tokenization import heldout_sentences, tokenization_stats
from kobert_pretrain.train import train
from kobert_pretrain.vocab import Vocab, build_vocab

CANDIDATE_FILE = "candidate.json"
ALL_EVAL_BATCHES = 1 << 30  # every held-out batch, at every evaluation


def candidate_name(model_type: str, size: int) -> str:
    return f"{model_type}-{size}"


def eval_interval(steps: int, evaluations: int) -> int:
    return max(1, steps // evaluations)


def stage_configs(cfg: Config, split: Split, where: Path, model_type: str, size: int) -> Config:
    """The recipe of one candidate: `cfg` with its vocabulary, shard and run paths filled in."""
    c = copy.deepcopy(cfg)
    steps = c.study.steps or c.train.max_steps
    c.vocab.input, c.vocab.out = [str(split.train)], str(where / "vocab")
    c.vocab.vocab_size, c.vocab.model_type = size, model_type
    # Whole-word masking: every vocabulary hides whole eojeols, so the hidden text is alike.
    c.shards.whole_word_mask = True
    c.shards.vocab = c.vocab.out
    c.train.shards, c.train.eval_shards = str(where / "shards"), str(where / "eval_shards")
    c.train.vocab, c.train.out = c.vocab.out, str(where / "run")
    c.train.max_steps, c.train.phase2_start_step, c.train.phase2_shards = steps, 0, ""
    c.train.eval_interval = eval_interval(steps, c.study.evaluations)
    c.train.eval_batches = ALL_EVAL_BATCHES
    c.convert.source, c.convert.out, c.convert.vocab, c.convert.onnx = c.train.out, str(where / "release"), "", True
    c.finetune.release, c.finetune.out = c.convert.out, str(where / "finetune")
    return c


def run_candidate(cfg: Config, split: Split, where: Path, model_type: str, size: int) -> dict:
    """The finished candidate's record (stages already done are skipped)."""
    done = where / CANDIDATE_FILE
    if done.is_file():
        return json.loads(done.read_text(encoding="utf-8"))
    c = stage_configs(cfg, split, where, model_type, size)
    name = candidate_name(model_type, size)
    say = lambda text: print(f"study: {name}: {text}", file=sys.stderr, flush=True)  # noqa: E731
    where.mkdir(parents=True, exist_ok=True)
    if not Path(c.vocab.out).is_dir():
        say("vocabulary")
        build_vocab(c.vocab)
    vocab = Vocab.load(c.vocab.out)
    for out, text in ((c.train.shards, split.train), (c.train.eval_shards, split.heldout)):
        say(f"shards {Path(out).name}")
        shards = copy.deepcopy(c.shards)
        shards.input, shards.out = [str(text)], out
        if out == c.train.eval_shards:
            shards.dupe_factor, shards.num_shards, shards.num_shards_multiple = 1, 0, 1
        build_shards(shards)
    latest = CheckpointManager(c.train.out).latest() if Path(c.train.out).is_dir() else None
    if latest is None or latest.step < c.train.max_steps:
        say(f"train {c.train.max_steps} steps")
        train(c, resume="auto")
    if not Path(c.convert.out).is_dir():
        say("convert")
        convert(c.convert)
    say("measure")
    record = measure(c, split, where, vocab, name)
    if c.finetune.train and c.finetune.dev:
        if not (Path(c.finetune.out) / "results.json").is_file():
            say("fine-tune")
            finetune(c.finetune)
        record["downstream"] = downstream(Path(c.finetune.out) / "results.json")
    atomic_write_json(done, record)
    return record


def measure(c: Config, split: Split, where: Path, vocab: Vocab, name: str) -> dict:
    train_set = ShardSet.open(c.train.shards)
    shape = ModelShape(**c.model.resolved(), vocab_size=vocab.size, dropout=c.model.dropout, use_nsp=c.model.use_nsp)
    sentences = heldout_sentences(split.heldout, c.study.stats_max_mb)
    stats = tokenization_stats(vocab, sentences, c.shards.max_seq_length)
    run = Path(c.train.out)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
               if line.strip()]
    chars_per_token = text_chars_per_token(train_set, vocab)
    specials = 3 if c.model.use_nsp else 2
    global_batch = train_set_batch(c)
    curve = []
    for r in records:
        if r.get("kind") != "eval" or r.get("eval_mlm_bits_per_char") is None:
            continue
        text_tokens = max(0, r["tokens_seen"] - specials * r["sequences_seen"])
        curve.append({"step": r["step"], "tokens_seen": r["tokens_seen"], "text_tokens_seen": text_tokens,
                      "characters_seen": text_tokens * chars_per_token, "bits_per_char": r["eval_mlm_bits_per_char"],
                      "mlm_loss_per_token": r["eval_mlm_loss"], "mlm_acc": r["eval_mlm_acc"],
                      "masked_tokens": r["eval_masked_tokens"], "masked_chars": r["eval_masked_chars"]})
    speed = training_speed(records)
    if speed["tokens_per_s"] is not None:
        speed["characters_per_s"] = speed["tokens_per_s"] * chars_per_token
    cost_dir = where / "cost"
    if not (cost_dir / "encoder.onnx").is_file():
        with atomic_output_dir(cost_dir, "study") as tmp:
            export_encoder(Path(c.convert.out), tmp / "encoder.onnx", c.convert.opset)
    latency = onnx_latency(cost_dir / "encoder.onnx", Path(c.convert.out), sentences[:c.study.latency_batch],
                           c.shards.max_seq_length, c.study.latency_repeats, c.study.latency_threads)
    return {
        "name": name, "model_type": vocab.meta["model_type"], "vocab_size": vocab.size,
        "vocab_sha256": vocab.sha256, "steps": c.train.max_steps, "global_batch_size": global_batch,
        "paths": {"vocab": c.vocab.out, "shards": c.train.shards, "eval_shards": c.train.eval_shards,
                  "run": c.train.out, "release": c.convert.out},
        "tokenization": stats,
        "training_text_characters_per_token": chars_per_token,
        "learning_curve": curve,
        "final": curve[-1] if curve else None,
        "cost": {**parameter_counts(shape), **speed, **release_size(Path(c.convert.out)), "onnx_encoder": latency},
        "recipe": {name: to_dict(c.section(name)) for name in ("shards", "model", "train")},
    }


def train_set_batch(c: Config) -> int:
    """Sequences per optimizer step of a candidate's run: one rank (a study refuses horovodrun)."""
    return c.train.global_batch_size if c.train.global_batch_size else c.train.micro_batch_size


def text_chars_per_token(shard_set: ShardSet, vocab: Vocab) -> float:
    """Characters of text per text token (specials left out) over the whole training shard set."""
    lengths = vocab.char_lengths()
    special = vocab.special_table() & (lengths == 0)
    chars = tokens = 0
    for s in range(shard_set.num_shards):
        shard = shard_set.shard(s)
        for lo in range(0, len(shard.tokens), 1 << 22):
            block = shard.tokens[lo:lo + (1 << 22)]
            chars += int(lengths[block].sum())
            tokens += int((~special[block]).sum())
        if shard.mlm_labels is not None:  # static masks: the hidden tokens' text is in the labels
            chars += int(lengths[shard.mlm_labels].sum())
    return chars / max(tokens, 1)


def downstream(results_file: Path) -> dict:
    """The fine-tuning scores of `results.json`: mean +- sd per model (pretrained, from scratch), dev and test."""
    results = json.loads(results_file.read_text(encoding="utf-8"))
    out = {"results": str(results_file), "task": results["task"],
           "primary_metric": primary_metric("spearman" in results["metrics"]), "examples": results["files"]}
    for model, entry in results["models"].items():
        out[model] = {split: entry[split] for split in ("dev", "test") if entry.get(split)}
    return out
