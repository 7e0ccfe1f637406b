"""The study on one page: study.json, study.md (one row per candidate) and two plots.

    bits_per_char.png   held-out MLM loss in bits per character against characters of text seen
    cost_quality.png    quality (bits/char at equal text seen; the downstream score) against cost
                        (parameters, ONNX encoder latency)

Candidates see different amounts of text in the same number of steps (a larger vocabulary packs more
text into an instance), so they are compared at the same amount of text: the bits per character each
reached after the text the slowest candidate saw in its run, interpolated along its learning curve.
"""

from __future__ import annotations

import numpy as np

from kobert_pretrain.finetune.metrics import format_mean_sd
from kobert_pretrain.plots import png, pyplot


def at_equal_text(candidates: list[dict]) -> float | None:
    """Characters of text every candidate has seen: the least any of them saw by its last evaluation."""
    ends = [c["final"]["characters_seen"] for c in candidates if c.get("final")]
    return min(ends) if ends else None


def bits_at(candidate: dict, characters: float) -> float | None:
    """Bits per character along the candidate's learning curve at `characters` of text seen (interpolated)."""
    curve = candidate["learning_curve"]
    if not curve or characters is None:
        return None
    x = np.array([p["characters_seen"] for p in curve], dtype=float)
    y = np.array([p["bits_per_char"] for p in curve], dtype=float)
    if characters < x[0]:
        return None
    return float(np.interp(characters, x, y))


def summarize(candidates: list[dict]) -> dict:
    """Per candidate: the numbers the table and the plots show."""
    equal = at_equal_text(candidates)
    rows = []
    for c in candidates:
        t, cost, final = c["tokenization"], c["cost"], c.get("final") or {}
        down = c.get("downstream") or {}
        metric = down.get("primary_metric")
        score = {model: down[model]["dev"][metric] for model in ("pretrained", "from_scratch")
                 if metric and model in down and "dev" in down[model]}
        rows.append({
            "name": c["name"], "vocab_size": c["vocab_size"], "model_type": c["model_type"],
            "parameters": cost["parameters"], "vocabulary_share": cost["vocabulary_share"],
            "pieces_per_eojeol": t["pieces_per_eojeol"], "pieces_per_character": t["pieces_per_character"],
            "unigram_bits_per_char": t.get("unigram_bits_per_char"),
            "unk_rate": t["unk_rate"], "single_syllable_token_share": t["single_syllable_token_share"],
            "characters_per_instance": t["characters_per_instance"],
            "final_bits_per_char": final.get("bits_per_char"), "characters_seen": final.get("characters_seen"),
            "bits_per_char_at_equal_text": bits_at(c, equal),
            "sequences_per_s": cost["sequences_per_s"], "characters_per_s": cost.get("characters_per_s"),
            "release_mb": cost["release_bytes"] / 1e6, "onnx_latency_ms": cost["onnx_encoder"]["latency_s"] * 1e3,
            "onnx_sentences_per_s": cost["onnx_encoder"]["sentences_per_s"],
            "downstream_metric": metric, "downstream_dev": score,
        })
    return {"equal_text_characters": equal, "rows": rows}


def _number(value, fmt: str) -> str:
    return "n/a" if value is None else format(value, fmt)


def _millions(characters) -> str:
    return "n/a" if characters is None else f"{characters / 1e6:.2f}M"


def markdown(summary: dict, study: dict) -> str:
    rows = summary["rows"]
    equal = summary["equal_text_characters"]
    metric = next((r["downstream_metric"] for r in rows if r["downstream_metric"]), None)
    head = ["candidate", "parameters (vocab share)", "pieces / eojeol", "pieces / char", "[UNK]",
            "1-syllable tokens", f"chars / {study['max_seq_length']}-token instance", "bits/char at equal text",
            "bits/char at end (text seen)", "context-free bits/char", "train seq/s", "train chars/s", "release MB",
            "ONNX ms / batch", "ONNX sentences/s"]
    if metric:
        head += [f"dev {metric} (pretrained)", f"dev {metric} (from scratch)"]
    lines = [f"# Vocabulary study: {study['steps']} steps per candidate", "",
             f"Bits per character of the masked held-out text (whole-word masking), compared at equal text seen: "
             f"{_millions(equal)} characters. ONNX: the encoder on a batch of "
             f"{study['latency_batch']} held-out sentences, {study['latency_threads']} thread(s).", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["name"], f"{r['parameters'] / 1e6:.2f}M ({r['vocabulary_share']:.0%})",
                 f"{r['pieces_per_eojeol']:.2f}", f"{r['pieces_per_character']:.3f}", f"{r['unk_rate']:.3%}",
                 f"{r['single_syllable_token_share']:.0%}", f"{r['characters_per_instance']:.0f}",
                 _number(r["bits_per_char_at_equal_text"], ".3f"),
                 f"{_number(r['final_bits_per_char'], '.3f')} ({_millions(r['characters_seen'])})",
                 _number(r["unigram_bits_per_char"], ".3f"),
                 _number(r["sequences_per_s"], ".1f"), _number(r["characters_per_s"], ",.0f"),
                 f"{r['release_mb']:.1f}", f"{r['onnx_latency_ms']:.1f}", f"{r['onnx_sentences_per_s']:.0f}"]
        if metric:
            cells += [format_mean_sd(r["downstream_dev"][m]) if m in r["downstream_dev"] else "n/a"
                      for m in ("pretrained", "from_scratch")]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Context-free bits/char: the entropy of the held-out text's own piece frequencies per character, "
              "what a model that ignores context scores; a model near it has learned piece frequencies only, and "
              "a larger vocabulary is always ahead there. Per-token MLM loss is not comparable across "
              "vocabularies and is not shown (it is in study.json, beside each learning-curve point).", ""]
    return "\n".join(lines)


def learning_curves_png(candidates: list[dict], equal: float | None) -> bytes:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    for c in candidates:
        curve = c["learning_curve"]
        line, = ax.plot([p["characters_seen"] / 1e6 for p in curve], [p["bits_per_char"] for p in curve], "o-",
                        markersize=3, label=c["name"])
        unigram = c["tokenization"].get("unigram_bits_per_char")
        if unigram is not None:
            ax.axhline(unigram, color=line.get_color(), linestyle="--", linewidth=0.8, alpha=0.7)
    if equal:
        ax.axvline(equal / 1e6, color="tab:gray", linestyle=":", label="equal text seen")
    ax.set_xlabel("characters of training text seen (millions)")
    ax.set_ylabel("held-out MLM loss (bits per character)")
    ax.set_title("Learning speed, independent of the vocabulary (dashed: context-free level)")
    ax.legend(fontsize=8)
    return png(fig)


def cost_quality_png(summary: dict) -> bytes:
    plt = pyplot()
    rows = summary["rows"]
    with_task = [r for r in rows if r["downstream_dev"].get("pretrained")]
    panels = 3 if with_task else 2
    fig, axes = plt.subplots(1, panels, figsize=(4.2 * panels, 3.8), dpi=120)
    quality = [r["bits_per_char_at_equal_text"] for r in rows]
    for ax, key, label in ((axes[0], "parameters", "parameters (millions)"),
                           (axes[1], "onnx_latency_ms", "ONNX encoder latency per batch (ms)")):
        xs = [r[key] / (1e6 if key == "parameters" else 1) for r in rows]
        ax.plot(xs, quality, "o")
        for x, y, r in zip(xs, quality, rows):
            if y is not None:
                ax.annotate(r["name"], (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax.set_xlabel(label)
        ax.set_ylabel("bits/char at equal text (lower is better)")
    if with_task:
        ax = axes[2]
        metric = with_task[0]["downstream_metric"]
        xs = [r["onnx_latency_ms"] for r in with_task]
        stats = [r["downstream_dev"]["pretrained"] for r in with_task]
        ax.errorbar(xs, [s["mean"] for s in stats], yerr=[s["sd"] or 0.0 for s in stats], fmt="o", capsize=3)
        for x, s, r in zip(xs, stats, with_task):
            ax.annotate(r["name"], (x, s["mean"]), fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax.set_xlabel("ONNX encoder latency per batch (ms)")
        ax.set_ylabel(f"dev {metric} (higher is better)")
    fig.suptitle("Cost against quality", fontsize=10)
    return png(fig)
