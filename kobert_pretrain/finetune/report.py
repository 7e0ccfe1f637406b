"""results.json as a short markdown table and one summary line per model."""

from __future__ import annotations

from kobert_pretrain.finetune.metrics import format_mean_sd

MODEL_NAMES = {"pretrained": "pretrained", "from_scratch": "from scratch (same architecture, random init)"}


def _model_name(results: dict, model: str) -> str:
    name = MODEL_NAMES.get(model, model)
    step = results["release"].get("step")
    return f"{name}, step {step:,}" if model == "pretrained" and step is not None else name


def results_table(results: dict) -> str:
    """| model | dev metrics | test metrics | chosen epochs |, mean ± sd over the seeds."""
    metrics = results["metrics"]
    splits = ["dev"] + (["test"] if "test" in results["files"] else [])
    seeds = ",".join(str(s) for s in results["config"]["seeds"])
    lines = [f"{results['task']} on `{results['files']['train']['path']}` "
             f"({results['files']['train']['examples']:,} training examples), seeds {seeds}: "
             "mean ± sd at the epoch chosen on dev", "",
             "| model | " + " | ".join(f"{split} {m}" for split in splits for m in metrics) + " | chosen epochs |",
             "|---|" + "---:|" * (len(splits) * len(metrics)) + "---|"]
    for model, entry in results["models"].items():
        cells = [format_mean_sd(entry[split][m]) for split in splits for m in metrics]
        lines.append(f"| {_model_name(results, model)} | " + " | ".join(cells)
                     + f" | {', '.join(map(str, entry['chosen_epochs']))} |")
    return "\n".join(lines) + "\n"


def summary_line(results: dict) -> list[str]:
    """`pretrained (step 60): dev accuracy 0.8123 ± 0.0040, test accuracy ...` per model."""
    metric = results["metrics"][0]
    lines = []
    for model, entry in results["models"].items():
        parts = [f"{split} {metric} {format_mean_sd(entry[split][metric])}" for split in ("dev", "test")
                 if entry.get(split)]
        lines.append(f"{_model_name(results, model)}: " + ", ".join(parts))
    return lines
