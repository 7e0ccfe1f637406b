"""`evaluate(ecfg, fcfg)`: the downstream score of a run's checkpoints, against pretraining step and tokens seen.

    OUT/step-00001000/results.json, results.md   `finetune` of that checkpoint's release (the [finetune] recipe)
    OUT/from_scratch/results.json, results.md    the same recipe from random weights (with --from-scratch), once
    OUT/evaluate.json   per step: tokens seen, held-out MLM loss (metrics.jsonl), mean +- sd of every metric
    OUT/evaluate.png    the primary dev (and test) metric and the held-out MLM loss against step and tokens

OUT defaults to RUN_DIR/evaluate. Each checkpoint is converted by `kobert-pretrain convert` in a child
process (MXNet and torch are then never loaded together here, and the release's memory is returned), into
a temporary directory removed afterwards. A step whose results.json exists is not evaluated again (its
recipe must be this one); a checkpoint that retention deleted meanwhile is skipped with a warning.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from kobert_pretrain.checkpoint import CHECKPOINTS, CheckpointManager, checkpoint_name
from kobert_pretrain.config import EvaluateConfig, FinetuneConfig, to_dict
from kobert_pretrain.errors import ConfigError, UserError
from kobert_pretrain.finetune.metrics import format_mean_sd, primary_metric
from kobert_pretrain.finetune.report import results_table
from kobert_pretrain.finetune.run import FROM_SCRATCH, PRETRAINED, path_problems, prepare_task, release_identity, \
    run_seeds
from kobert_pretrain.fsutil import atomic_output_dir, atomic_write_bytes, atomic_write_json
from kobert_pretrain.plots import png, pyplot
from kobert_pretrain.text import warn

_STEP = re.compile(r"^step-(\d{8})$")
# Fields that differ per checkpoint or only say where to write: not part of the recipe a re-run must share.
_PER_RUN = ("release", "out")


def evaluate(ecfg: EvaluateConfig, fcfg: FinetuneConfig) -> Path:
    problems = ([] if ecfg.run_dir else ["evaluate.run_dir: give the run directory"]) \
        + path_problems(fcfg, need_release=False) + fcfg.validate() + ecfg.validate()
    if problems:
        raise ConfigError(problems)
    run = Path(ecfg.run_dir)
    if not (run / CHECKPOINTS).is_dir():
        raise UserError(f"{run} is not a run directory of `kobert-pretrain train` (no {CHECKPOINTS}/)")
    out = Path(ecfg.out) if ecfg.out else run / "evaluate"
    steps = select_steps(run, ecfg)
    spec, train, dev, test, labels = prepare_task(fcfg)  # every file checked before the first conversion
    recipe = _recipe(fcfg)
    done = _done_steps(out, recipe)
    out.mkdir(parents=True, exist_ok=True)
    manager = CheckpointManager(run)
    for step in steps:
        baseline_due = fcfg.from_scratch and not (out / FROM_SCRATCH / "results.json").is_file()
        if step in done and not baseline_due:
            continue
        path = run / CHECKPOINTS / checkpoint_name(step)
        ckpt, why = manager.check(path)
        if ckpt is None:
            warn(f"evaluate: step {step}: checkpoint {path} is gone or incomplete ({why}; deleted by retention?); "
                 "skipped")
            continue
        release = out / f".release-{checkpoint_name(step)}.tmp-{os.getpid()}"
        shutil.rmtree(release, ignore_errors=True)
        try:
            if not _convert(ckpt.path, release, ecfg.vocab, manager):
                continue
            cfg = FinetuneConfig(**{**to_dict(fcfg), "release": str(release)})
            identity = release_identity(release)
            if baseline_due:
                _write_results(out / FROM_SCRATCH, run_seeds(cfg, spec, train, dev, test, labels, identity,
                                                             models=(FROM_SCRATCH,)), recipe, None)
            if step not in done:
                state = ckpt.training_state()
                pretraining = {"step": state["step"], "tokens_seen": state["tokens_seen"],
                               "checkpoint": str(ckpt.path)}
                _write_results(out / checkpoint_name(step), run_seeds(cfg, spec, train, dev, test, labels, identity,
                                                                      models=(PRETRAINED,)), recipe, pretraining)
                done.add(step)
        finally:
            shutil.rmtree(release, ignore_errors=True)
        write_summary(out, run)
    summary = write_summary(out, run)
    for point in summary["points"]:
        score = point["dev"][summary["primary_metric"]]
        print(f"evaluate: step {point['step']:,}: dev {summary['primary_metric']} {format_mean_sd(score)}",
              file=sys.stderr)
    return out


def select_steps(run: Path, ecfg: EvaluateConfig) -> list[int]:
    """The checkpoint steps to evaluate: --steps exactly, or every multiple of --every, or all kept ones."""
    kept = sorted(int(m.group(1)) for p in (run / CHECKPOINTS).iterdir() if (m := _STEP.match(p.name)))
    if ecfg.steps:
        missing = sorted(set(ecfg.steps) - set(kept))
        if len(missing) == len(set(ecfg.steps)):
            raise UserError(f"{run} has no checkpoint at step(s) {', '.join(map(str, missing))} (kept: "
                            f"{', '.join(map(str, kept)) or 'none'})")
        for step in missing:
            warn(f"evaluate: {run} has no checkpoint at step {step} (deleted by retention?); skipped")
        return sorted(set(ecfg.steps) & set(kept))
    chosen = [s for s in kept if not ecfg.every or s % ecfg.every == 0]
    if not chosen:
        every = f" at a multiple of {ecfg.every}" if ecfg.every else ""
        raise UserError(f"{run} has no checkpoint{every} (kept: {', '.join(map(str, kept)) or 'none'})")
    return chosen


def _recipe(fcfg: FinetuneConfig) -> dict:
    recipe = {k: v for k, v in to_dict(fcfg).items() if k not in _PER_RUN}
    for name in ("train", "dev", "test"):
        recipe[name] = str(Path(recipe[name]).resolve()) if recipe[name] else ""
    return recipe


def _done_steps(out: Path, recipe: dict) -> set[int]:
    """Steps already evaluated under `out`, after checking they were made with this recipe."""
    done = set()
    if not out.is_dir():
        return done
    for path in sorted(out.glob("step-*/results.json")) + sorted(out.glob(f"{FROM_SCRATCH}/results.json")):
        earlier = json.loads(path.read_text(encoding="utf-8")).get("recipe", {})
        differ = sorted(k for k in set(recipe) | set(earlier) if recipe.get(k) != earlier.get(k))
        if differ:
            raise UserError(f"{path.parent} was evaluated with another recipe (different "
                            f"{', '.join('finetune.' + k for k in differ)}); use the same settings to continue, "
                            "or another --evaluate.out")
        if m := _STEP.match(path.parent.name):
            done.add(int(m.group(1)))
    return done


def _convert(checkpoint: Path, release: Path, vocab: str, manager: CheckpointManager) -> bool:
    """`kobert-pretrain convert CHECKPOINT --out RELEASE` in a child process; False if the checkpoint vanished."""
    command = [sys.executable, "-m", "kobert_pretrain", "convert", str(checkpoint), "--out", str(release)]
    if vocab:
        command += ["--vocab", vocab]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode == 0:
        return True
    if manager.check(checkpoint)[0] is None:
        warn(f"evaluate: checkpoint {checkpoint} was deleted while it was converted (by retention?); skipped")
        return False
    errors = [ln for ln in result.stderr.splitlines() if ln.startswith("kobert-pretrain: error: ")]
    if errors:
        raise UserError(f"converting {checkpoint}: {errors[-1].removeprefix('kobert-pretrain: error: ')}")
    raise RuntimeError(f"kobert-pretrain convert {checkpoint} failed ({result.returncode}):\n{result.stderr}")


def _write_results(target: Path, results: dict, recipe: dict, pretraining: dict | None) -> None:
    results["recipe"] = recipe
    results["release"]["path"] = None  # the temporary release is gone; the checkpoint names the model
    if pretraining is not None:
        results["pretraining"] = pretraining
    with atomic_output_dir(target, "evaluate") as tmp:
        (tmp / "results.json").write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        (tmp / "results.md").write_text(results_table(results), encoding="utf-8")


def heldout_mlm_loss(run: Path) -> dict[int, float]:
    """eval_mlm_loss by step, from the run's metrics.jsonl (the last record of a step wins)."""
    losses = {}
    metrics = run / "metrics.jsonl"
    if not metrics.is_file():
        return losses
    for line in metrics.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a line cut short by a killed run
        if isinstance(record, dict) and record.get("kind") == "eval" and record.get("eval_mlm_loss") is not None:
            losses[int(record["step"])] = float(record["eval_mlm_loss"])
    return losses


def write_summary(out: Path, run: Path) -> dict:
    """evaluate.json and evaluate.png from the per-step results under `out`."""
    losses = heldout_mlm_loss(run)
    points: list[dict] = []
    summary = {"run_dir": str(run.resolve()), "points": points, "from_scratch": None}
    for path in sorted(out.glob("step-*/results.json")):
        results = json.loads(path.read_text(encoding="utf-8"))
        entry = results["models"][PRETRAINED]
        step = results["pretraining"]["step"]
        summary.update(task=results["task"], metrics=results["metrics"],
                       primary_metric=primary_metric(results["task"] == "pair-regression"))
        points.append({"step": step, "tokens_seen": results["pretraining"]["tokens_seen"],
                       "eval_mlm_loss": losses.get(step), "model_sha256": results["release"]["model_sha256"],
                       "dev": entry["dev"], "test": entry["test"], "chosen_epochs": entry["chosen_epochs"]})
    baseline = out / FROM_SCRATCH / "results.json"
    if baseline.is_file():
        entry = json.loads(baseline.read_text(encoding="utf-8"))["models"][FROM_SCRATCH]
        summary["from_scratch"] = {"dev": entry["dev"], "test": entry["test"], "chosen_epochs": entry["chosen_epochs"]}
    summary["heldout_mlm_loss"] = [{"step": s, "eval_mlm_loss": v} for s, v in sorted(losses.items())]
    atomic_write_json(out / "evaluate.json", summary)
    if points:
        atomic_write_bytes(out / "evaluate.png", plot(summary))
    return summary


def plot(summary: dict) -> bytes:
    """The curve to watch: downstream score (mean ± sd) and held-out MLM loss against step; tokens on top."""
    plt = pyplot()
    import numpy as np

    metric = summary["primary_metric"]
    points = summary["points"]
    steps = np.array([p["step"] for p in points], dtype=float)
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    for split, style in (("dev", "o-"), ("test", "s--")):
        if all(p[split] for p in points):
            mean = [p[split][metric]["mean"] for p in points]
            sd = [p[split][metric]["sd"] or 0.0 for p in points]
            ax.errorbar(steps, mean, yerr=sd, fmt=style, capsize=3, color="tab:blue" if split == "dev" else "tab:cyan",
                        label=f"{split} {metric} (pretrained)")
    if summary["from_scratch"]:
        stat = summary["from_scratch"]["dev"][metric]
        ax.axhline(stat["mean"], color="tab:gray", linestyle=":", label=f"dev {metric} (from scratch)")
        if stat["sd"]:
            ax.axhspan(stat["mean"] - stat["sd"], stat["mean"] + stat["sd"], color="tab:gray", alpha=0.15)
    ax.set_xlabel("pretraining step")
    ax.set_ylabel(f"downstream {metric} ({summary['task']})")
    handles, names = ax.get_legend_handles_labels()
    curve = summary["heldout_mlm_loss"]
    if curve:
        loss_ax = ax.twinx()
        loss_ax.plot([c["step"] for c in curve], [c["eval_mlm_loss"] for c in curve], color="tab:red", alpha=0.7,
                     label="held-out MLM loss")
        loss_ax.set_ylabel("held-out MLM loss", color="tab:red")
        more = loss_ax.get_legend_handles_labels()
        handles, names = handles + more[0], names + more[1]
    ax.legend(handles, names, loc="best", fontsize=8)
    tokens = np.array([p["tokens_seen"] for p in points], dtype=float)
    if steps.max() > 0:
        known_steps, known_tokens = np.concatenate([[0.0], steps]), np.concatenate([[0.0], tokens])
        top = ax.secondary_xaxis("top", functions=(lambda s: np.interp(s, known_steps, known_tokens),
                                                   lambda t: np.interp(t, known_tokens, known_steps)))
        top.set_xlabel("tokens seen")
    return png(fig)
