"""`finetune(cfg)`: fine-tune a release over seeds (and from scratch), write results.json and results.md.

    OUT/results.json   per model (pretrained, from_scratch) and seed: per-epoch dev metrics, the chosen epoch,
                       dev and test metrics there; mean and sd over seeds of every metric; the label mapping;
                       the task and its files; the config; the release identity (checkpoint step, sha256 of
                       model.safetensors)
    OUT/results.md     the same as a short markdown table
    OUT/config.json    the resolved [finetune] config

Every input file is read and checked before any training starts; the output directory appears only when
everything is done (atomic_output_dir), so a failed or interrupted run leaves nothing behind.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

from kobert_pretrain.config import FINETUNE_TASK_ALIASES, FinetuneConfig, to_dict
from kobert_pretrain.errors import ConfigError, UserError
from kobert_pretrain.finetune.metrics import metric_names, summarize
from kobert_pretrain.finetune.report import results_table, summary_line
from kobert_pretrain.finetune.tasks import detect_task, read_task, task_spec
from kobert_pretrain.fsutil import atomic_output_dir, ensure_free_output_dir, sha256_file

RELEASE_FILES = ("config.json", "model.safetensors", "tokenizer.json")
PRETRAINED, FROM_SCRATCH = "pretrained", "from_scratch"


def path_problems(cfg: FinetuneConfig, need_release: bool = True) -> list[str]:
    problems = []
    if need_release and not cfg.release:
        problems.append("finetune.release: give the release directory written by `kobert-pretrain convert`")
    if need_release and not cfg.out:
        problems.append("finetune.out: give an output directory with --out")
    if not cfg.train:
        problems.append("finetune.train: give the training file with --train")
    if not cfg.dev:
        problems.append("finetune.dev: give the development file with --dev")
    return problems


def release_identity(release: str | Path) -> dict:
    """Which model this is: the checkpoint step and path `convert` recorded, and the weights' sha256."""
    release = Path(release)
    if not release.is_dir():
        raise UserError(f"release {release} is not a directory; give the --out of `kobert-pretrain convert`")
    missing = [name for name in RELEASE_FILES if not (release / name).is_file()]
    if missing:
        raise UserError(f"release {release} has no {', '.join(missing)}; give the --out of `kobert-pretrain convert`")
    report = {}
    if (release / "conversion_report.json").is_file():
        try:
            report = json.loads((release / "conversion_report.json").read_text(encoding="utf-8"))
        except ValueError:
            raise UserError(f"release {release}: conversion_report.json is not valid JSON") from None
    return {"path": str(release.resolve()), "step": report.get("step"), "checkpoint": report.get("checkpoint"),
            "model_sha256": sha256_file(release / "model.safetensors")}


def prepare_task(cfg: FinetuneConfig):
    """(task spec, train, dev, test, class labels): the files read and checked, the task detected if `auto`."""
    task = FINETUNE_TASK_ALIASES.get(cfg.task, cfg.task)
    if task == "auto":
        task = detect_task(cfg.train, cfg.text_column, cfg.text_pair_column, cfg.label_column)
    spec = task_spec(task, cfg.text_column, cfg.text_pair_column, cfg.label_column)
    train, dev, test, labels = read_task(spec, cfg.train, cfg.dev, cfg.test, cfg.labels, cfg.max_train_examples)
    return spec, train, dev, test, labels


def finetune(cfg: FinetuneConfig) -> Path:
    problems = path_problems(cfg) + cfg.validate()
    if problems:
        raise ConfigError(problems)
    out = Path(cfg.out)
    ensure_free_output_dir(out, "finetune")
    identity = release_identity(cfg.release)
    spec, train, dev, test, labels = prepare_task(cfg)
    results = run_seeds(cfg, spec, train, dev, test, labels, identity)
    with atomic_output_dir(out, "finetune") as tmp:
        (tmp / "results.json").write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        (tmp / "results.md").write_text(results_table(results), encoding="utf-8")
        (tmp / "config.json").write_text(json.dumps(to_dict(cfg), indent=2, ensure_ascii=False) + "\n",
                                         encoding="utf-8")
    for line in summary_line(results):
        print(f"finetune: {line}", file=sys.stderr)
    return out


def run_seeds(cfg: FinetuneConfig, spec, train, dev, test, labels, identity: dict,
              models: tuple[str, ...] | None = None) -> dict:
    """Every seed of the pretrained model (and from scratch, if configured): the results.json content."""
    try:
        import torch
        import transformers
        from transformers import AutoConfig, AutoTokenizer
    except ImportError as e:
        raise UserError(f"fine-tuning needs the convert extra ({e}): pip install -e '.[convert]'") from None
    from kobert_pretrain.finetune import trainer

    # "Some weights were not initialized" (the new classifier) and "not used" (the MLM/NSP heads) are expected.
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    tokenizer = AutoTokenizer.from_pretrained(cfg.release)
    positions = AutoConfig.from_pretrained(cfg.release).max_position_embeddings
    if cfg.max_seq_length > positions:
        raise UserError(f"finetune.max_seq_length={cfg.max_seq_length}: the release has {positions} positions")
    device = trainer.resolve_device(cfg.device)
    if cfg.cpu_threads:
        torch.set_num_threads(cfg.cpu_threads)
    encoded = [trainer.encode(tokenizer, d, cfg.max_seq_length, spec.is_regression) if d is not None else None
               for d in (train, dev, test)]
    num_labels = 1 if spec.is_regression else len(labels)
    models = models or ((PRETRAINED, FROM_SCRATCH) if cfg.from_scratch else (PRETRAINED,))
    results = {
        "task": spec.task, "columns": dataclasses.asdict(spec), "labels": labels,
        "metrics": list(metric_names(spec.is_regression)),
        "files": {name: {"path": str(Path(d.path).resolve()), "examples": len(d)}
                  for name, d in (("train", train), ("dev", dev), ("test", test)) if d is not None},
        "release": identity, "device": str(device), "torch": torch.__version__, "config": to_dict(cfg),
        "models": {},
    }
    for model in models:
        runs = [trainer.fine_tune(cfg.release, *encoded, cfg, seed, num_labels, spec.is_regression,
                                  model == FROM_SCRATCH, tokenizer.pad_token_id, device,
                                  label=f"{model.replace('_', ' ')} ")
                for seed in cfg.seeds]
        results["models"][model] = {
            "seeds": runs,
            "dev": summarize([r["dev"] for r in runs]),
            "test": summarize([r["test"] for r in runs]) if test is not None else None,
            "chosen_epochs": [r["chosen_epoch"] for r in runs],
        }
    return results
