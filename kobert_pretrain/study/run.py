"""`study_vocab(cfg)`: build, train and measure the same model with each candidate vocabulary.

    STUDY/study-config.json   the settings every candidate shares (a re-run must match them)
    STUDY/data/               train.txt and heldout.txt: the one split every candidate uses
    STUDY/candidates/NAME/    vocab/, shards/, eval_shards/, run/, release/, cost/, finetune/, candidate.json
    STUDY/study.json          every candidate's record and the comparison
    STUDY/study.md            the table
    STUDY/bits_per_char.png   learning speed against text seen
    STUDY/cost_quality.png    quality against cost

Sizes and model types may be added on a later run (their candidates are built, the finished ones
re-used); any other setting that differs from the study's is refused: the candidates would not be
comparable.
"""

from __future__ import annotations

import json
import os
import platform
import sys
from pathlib import Path

from kobert_pretrain import __version__
from kobert_pretrain.config import Config, to_dict
from kobert_pretrain.errors import ConfigError, UserError
from kobert_pretrain.finetune.run import path_problems
from kobert_pretrain.fsutil import atomic_write_bytes, atomic_write_json, atomic_write_text, check_parents_are_dirs
from kobert_pretrain.study.report import cost_quality_png, learning_curves_png, markdown, summarize
from kobert_pretrain.study.candidate import candidate_name, run_candidate
from kobert_pretrain.study.heldout import split_corpus

SETTINGS_FILE = "study-config.json"
# Fields each candidate fills in itself, or that may differ between runs of one study.
PER_CANDIDATE = {
    "study": {"out", "sizes", "model_types", "latency_repeats", "latency_threads"},
    "vocab": {"input", "out", "vocab_size", "model_type"},
    "shards": {"input", "out", "vocab", "workers"},
    "train": {"shards", "eval_shards", "vocab", "out"},
    "convert": {"source", "out", "vocab"},
    "finetune": {"release", "out", "cpu_threads", "device"},
}
SHARED_SECTIONS = ("study", "vocab", "shards", "model", "train", "log", "checkpoint", "convert", "finetune")


def shared_settings(cfg: Config) -> dict:
    """What every candidate has in common; the study's identity."""
    settings = {}
    for name in SHARED_SECTIONS:
        fields = to_dict(cfg.section(name))
        settings[name] = {k: v for k, v in sorted(fields.items()) if k not in PER_CANDIDATE.get(name, ())}
    settings["study"]["input"] = [os.path.abspath(p) for p in cfg.study.input]
    for key in ("train", "dev", "test"):
        if settings["finetune"][key]:
            settings["finetune"][key] = os.path.abspath(settings["finetune"][key])
    return settings


def differences(old: dict, new: dict) -> list[str]:
    return [f"{section}.{key}" for section in sorted(set(old) | set(new))
            for key in sorted(set(old.get(section, {})) | set(new.get(section, {})))
            if old.get(section, {}).get(key) != new.get(section, {}).get(key)]


def check_settings(out: Path, settings: dict) -> None:
    path = out / SETTINGS_FILE
    if not path.is_file():
        if out.is_dir() and any(out.iterdir()):
            raise UserError(f"--out {out} already holds files that are not a vocabulary study; choose a new directory")
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, settings)
        return
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise UserError(f"{path} is unreadable ({e}); it records the study's settings") from None
    changed = differences(old, settings)
    if changed:
        shown = ", ".join(changed[:6]) + (", ..." if len(changed) > 6 else "")
        raise UserError(f"{out} holds a study with other settings ({shown} differ): its candidates would not be "
                        "comparable; use a new --out, or the settings in " + str(path))


def study_vocab(cfg: Config) -> Path:
    if int(os.environ.get("HOROVOD_SIZE", "1")) > 1:
        raise UserError("study vocab runs as one process (its candidates are trained one after another): "
                        "start it without horovodrun")
    problems = cfg.study.validate()
    if cfg.finetune.train or cfg.finetune.dev:
        problems += path_problems(cfg.finetune, need_release=False) + cfg.finetune.validate()
    for name in ("vocab", "shards", "model", "train", "log", "checkpoint", "convert"):
        # the per-candidate paths are filled in later; only the recipe is checked here
        problems += [p for p in cfg.section(name).validate() if not _is_path_problem(p)]
    if problems:
        raise ConfigError(problems, title="cannot start the study")
    out = Path(cfg.study.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file, not a directory")
    check_parents_are_dirs(out, "--out")
    check_settings(out, shared_settings(cfg))
    split = split_corpus(cfg.study.input, out / "data", cfg.study.heldout_every, cfg.study.heldout_max_mb,
                         cfg.shards.input_format)
    print(f"study: {split.meta['train']['documents']:,} training and {split.meta['heldout']['documents']:,} "
          f"held-out documents ({split.meta['heldout']['bytes'] / 1e6:.2f} MB held out) -> {out}",
          file=sys.stderr, flush=True)
    candidates = []
    for model_type in cfg.study.model_types:
        for size in cfg.study.sizes:
            name = candidate_name(model_type, size)
            candidates.append(run_candidate(cfg, split, out / "candidates" / name, model_type, size))
    write_report(out, cfg, split.meta, candidates)
    return out


def _is_path_problem(problem: str) -> bool:
    """A "give the path" problem of a field the study fills in per candidate."""
    return any(problem.startswith(f"{section}.{key}:") for section, keys in PER_CANDIDATE.items() for key in keys)


def write_report(out: Path, cfg: Config, split: dict, candidates: list[dict]) -> None:
    study = {"steps": cfg.study.steps or cfg.train.max_steps, "max_seq_length": cfg.shards.max_seq_length,
             "latency_batch": cfg.study.latency_batch, "latency_threads": cfg.study.latency_threads}
    summary = summarize(candidates)
    document = {"version": __version__, "study": study, "settings": shared_settings(cfg), "split": split,
                "machine": {"platform": platform.platform(), "processor": platform.processor(),
                            "cpus": os.cpu_count(), "python": platform.python_version()},
                "comparison": summary, "candidates": candidates}
    atomic_write_json(out / "study.json", document)
    atomic_write_text(out / "study.md", markdown(summary, study))
    atomic_write_bytes(out / "bits_per_char.png", learning_curves_png(candidates,
                                                                            summary["equal_text_characters"]))
    atomic_write_bytes(out / "cost_quality.png", cost_quality_png(summary))
    print(markdown(summary, study), file=sys.stderr)
