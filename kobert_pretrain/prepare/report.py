"""The data report: report.json (every number) and report.html (tables, plots, samples of removed text).

`make_report` assembles it from the tasks' and phases' meta.json files (counters summed in task order,
samples chosen by the seed), so it is the same for any number of workers.

The plots are matplotlib PNGs (Agg, no display needed) embedded in the HTML as
base64, so the page is one self-contained file. Plot labels are English (the
fonts matplotlib ships have no Hangul); the samples, in the HTML tables, are
shown as the browser renders them.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path

import numpy as np

from kobert_pretrain.fsutil import atomic_write_json, atomic_write_text
from kobert_pretrain.plots import png, pyplot
from kobert_pretrain.prepare.filters import FILTER_NAMES, TEXT_FILTERS
from kobert_pretrain.prepare.readers import ReadCounts

TAG_SAMPLES = 7  # default_rng([seed, TAG_SAMPLES, ...]) picks the report's samples

FILTER_HELP = {
    "normalize": "Unicode NFC; control and zero-width characters removed",
    "html": "HTML tags removed, entities decoded",
    "url": "URLs removed",
    "email": "e-mail addresses removed",
    "pii": "phone and resident-registration-like numbers removed",
    "repeat": "runs of one character capped at max_char_repeat",
    "whitespace": "whitespace runs collapsed, lines stripped, empty lines dropped",
    "boilerplate": "lines found in at least boilerplate_min_docs documents",
    "short_sentence": "sentences shorter than min_sentence_chars",
    "sentence_hangul": "sentences with a Hangul share below min_sentence_hangul",
    "short_document": "documents shorter than min_document_chars",
    "document_hangul": "documents with a Hangul share below min_document_hangul",
}


def merge_filters(clean_metas: list[dict], filter_metas: list[dict], seed: int, limit: int) -> dict:
    """Filter counters summed over tasks (text filters from the clean phase, drop filters from the filter
    phase), in FILTER_NAMES order; samples: `limit` of the tasks' samples, chosen by the seed."""
    merged: dict[str, dict] = {}
    for name in FILTER_NAMES:
        metas = clean_metas if name in TEXT_FILTERS else filter_metas
        for meta in metas:
            if name not in meta["filters"]:
                continue
            s = meta["filters"][name]
            m = merged.setdefault(name, {"documents": 0, "units": 0, "chars": 0, "samples": []})
            m["documents"] += s["documents"]
            m["units"] += s["units"]
            m["chars"] += s["chars"]
            m["samples"].extend(s["samples"])
    for stream, name in enumerate(merged):
        merged[name]["samples"] = pick_samples(merged[name]["samples"], limit, seed, stream)
    return merged


def pick_samples(items: list, limit: int, seed: int, stream: int) -> list:
    if len(items) <= limit:
        return items
    chosen = np.random.default_rng([seed, TAG_SAMPLES, stream]).choice(len(items), size=limit, replace=False)
    return [items[i] for i in sorted(chosen)]


def make_report(cfg, identity, fp, input_bytes, clean_metas, filter_metas, dedup_meta, written, timings,
                dry_run) -> dict:
    """report.json's content, from the tasks' and phases' meta.json files and the writer's statistics."""
    read = ReadCounts()
    for m in clean_metas:
        read.merge(m["read"])
    filters = merge_filters(clean_metas, filter_metas, cfg.seed, cfg.samples_per_filter)
    chars_in = sum(m["chars"] for m in clean_metas)
    for m in filters.values():
        m["share_of_chars"] = m["chars"] / chars_in if chars_in else 0.0
    split_samples = [s for m in clean_metas for s in m["split"]["samples"]]
    documents_in = sum(m["documents"] for m in clean_metas)
    after_filters = sum(m["documents"] for m in filter_metas)
    return {
        "fingerprint": fp,
        "dry_run": dry_run,
        "config": cfg.generation_dict(),
        "inputs": identity["inputs"],
        "input": {"files": len(identity["inputs"]), "bytes": input_bytes, "decompressed_bytes": read.input_bytes,
                  "records": read.records, "bad_records": read.bad, "bad_record_examples": read.bad_examples,
                  "documents": documents_in, "sentences": sum(m["sentences"] for m in clean_metas),
                  "chars": chars_in},
        "filters": filters,
        "empty_documents": sum(m["empty_documents"] for m in filter_metas),
        "after_filters": {"documents": after_filters},
        "dedup": {k: v for k, v in dedup_meta.items() if k != "fingerprint"}
        | {"exact_rate": dedup_meta["exact"] / after_filters if after_filters else 0.0,
           "near_rate": dedup_meta["near"] / after_filters if after_filters else 0.0,
           "samples": written["samples"]},
        "splitter": {"name": identity["splitter"], "paragraphs": sum(m["split"]["paragraphs"] for m in clean_metas),
                     "fallbacks": sum(m["split"]["fallbacks"] for m in clean_metas),
                     "fallback_samples": pick_samples(split_samples, cfg.samples_per_filter, cfg.seed, 99)},
        "output": written["output"],
        "parts": written["parts"],
        "seconds": {k: round(v, 3) for k, v in timings.items()},
    }


def write_report(directory: Path, report: dict, coverage_curve: list[float]) -> None:
    atomic_write_json(directory / "report.json", report)
    atomic_write_text(directory / "report.html", render_html(report, plots(report, coverage_curve)))


def plots(report: dict, coverage_curve: list[float]) -> dict[str, bytes]:
    """PNG bytes by name: removal by filter, sentence and document length, character coverage."""
    plt = pyplot()
    out = report["output"]
    images = {}

    fig, ax = plt.subplots(figsize=(7, 3.2))
    names = [n for n in FILTER_NAMES if n in report["filters"]]
    shares = [100 * report["filters"][n]["share_of_chars"] for n in names]
    ax.barh(names[::-1], shares[::-1], color="#4c72b0")
    ax.set_xlabel("characters removed, % of input")
    ax.set_title("What each filter removed")
    images["filters"] = _png(fig)

    bins = out["sentence_length_bins"]
    labels = [f"{a}-{b - 1}" for a, b in zip(bins, bins[1:])] + [f"{bins[-1]}+"]
    images["sentence_length"] = _histogram(plt, labels, out["sentence_length_counts"], "#55a868",
                                           "sentence length, characters", "sentences", "Sentence length (output)")
    bins = out["document_sentences_bins"]
    labels = [str(a) if b == a + 1 else f"{a}-{b - 1}" for a, b in zip(bins, bins[1:])] + [f"{bins[-1]}+"]
    images["document_length"] = _histogram(plt, labels, out["document_sentences_counts"], "#c44e52",
                                           "document length, sentences", "documents", "Document length (output)")

    fig, ax = plt.subplots(figsize=(7, 3.2))
    if coverage_curve:
        ax.plot(range(1, len(coverage_curve) + 1), [100 * c for c in coverage_curve], color="#8172b2")
        ax.set_xscale("log")
        ax.axvline(8002, color="grey", linestyle="--", linewidth=1)
        ax.text(8002, 5, " 8,002", color="grey")
    ax.set_xlabel("most frequent characters (N)")
    ax.set_ylabel("% of characters covered")
    ax.set_ylim(0, 101)
    ax.set_title("Character coverage (output)")
    images["coverage"] = _png(fig)
    return images


def _histogram(plt, labels: list[str], counts: list[int], color: str, xlabel: str, ylabel: str, title: str) -> bytes:
    fig, ax = plt.subplots(figsize=(7, 3.2))
    ax.bar(labels, counts, color=color)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.tick_params(axis="x", rotation=45)
    return _png(fig)


def _png(fig) -> bytes:
    return png(fig, dpi=100)


def _e(value) -> str:
    return html.escape(str(value))


def _table(header: list[str], rows: list[list]) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _samples(items: list[str]) -> str:
    if not items:
        return "<p class=none>none</p>"
    return "<ol class=samples>" + "".join(f"<li>{_e(s)}</li>" for s in items) + "</ol>"


def _img(images: dict[str, bytes], name: str, alt: str) -> str:
    return f'<img alt="{_e(alt)}" src="data:image/png;base64,{base64.b64encode(images[name]).decode()}">'


def render_html(report: dict, images: dict[str, bytes]) -> str:
    i, o, d, sp = report["input"], report["output"], report["dedup"], report["splitter"]
    pct = lambda part, whole: f"{100 * part / whole:.2f}%" if whole else "-"  # noqa: E731
    totals = _table(["", "documents", "sentences", "characters"], [
        ["in", f"{i['documents']:,}", f"{i['sentences']:,}", f"{i['chars']:,}"],
        ["out", f"{o['documents']:,}", f"{o['sentences']:,}", f"{o['chars']:,}"],
        ["kept", pct(o["documents"], i["documents"]), pct(o["sentences"], i["sentences"]),
         pct(o["chars"], i["chars"])],
    ])
    bad = _table(["kind", "records", "first example"],
                 [[k, f"{n:,}", i["bad_record_examples"].get(k, "")] for k, n in i["bad_records"].items()]) \
        if i["bad_records"] else "<p class=none>none</p>"
    filter_rows = [[name, FILTER_HELP[name], f"{f['documents']:,}", f"{f['units']:,}", f"{f['chars']:,}",
                    f"{100 * f['share_of_chars']:.3f}%"] for name, f in report["filters"].items()]
    filters = _table(["filter", "what", "documents touched", "pieces / units", "characters", "share"], filter_rows)
    dedup = _table(["", "documents", "share of documents after the filters"], [
        ["exact duplicates", f"{d['exact']:,}", f"{100 * d['exact_rate']:.2f}%"],
        ["near duplicates (MinHash)", f"{d['near']:,}", f"{100 * d['near_rate']:.2f}%"],
        ["emptied by sentence dedup", f"{d['emptied']:,}", ""],
        ["duplicate sentences removed", f"{d['sentences']:,}", ""],
    ])
    near = d["samples"]["near"]
    near_html = _table(["removed", "Jaccard estimate", "kept earlier document"],
                       [[s["removed"], s["similarity"], s["kept"] or ""] for s in near]) if near \
        else "<p class=none>none</p>"
    coverage = _table(["most frequent N characters", "share of characters"],
                      [[f"{int(n):,}", f"{100 * v:.3f}%"] for n, v in o["char_coverage"].items()])
    sample_sections = "".join(
        f"<h3>{_e(name)}</h3><p class=help>{_e(FILTER_HELP[name])}</p>{_samples(f['samples'])}"
        for name, f in report["filters"].items())
    parts = _table(["part", "documents", "bytes"], [[p["name"], f"{p['documents']:,}", f"{p['bytes']:,}"]
                                                   for p in report["parts"]]) if not report["dry_run"] else \
        "<p class=none>dry run: no text written</p>"
    seconds = ", ".join(f"{k} {v:.1f}s" for k, v in report["seconds"].items())
    return f"""<!DOCTYPE html>
<html lang="ko"><head><meta charset="utf-8"><title>kobert-pretrain prepare: data report</title>
<style>
body {{ font-family: "Noto Sans KR", "Apple SD Gothic Neo", "Malgun Gothic", sans-serif; max-width: 1100px; margin: 2em auto; color: #222; }}
table {{ border-collapse: collapse; margin: 0.5em 0 1.5em; }}
td, th {{ border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; vertical-align: top; }}
th {{ background: #f0f0f0; }}
.samples li {{ font-family: monospace; white-space: pre-wrap; margin-bottom: 0.3em; }}
.none, .help {{ color: #777; }}
img {{ max-width: 100%; }}
</style></head><body>
<h1>Data report</h1>
<p>{i['files']:,} input file(s), {i['bytes']:,} bytes ({i['decompressed_bytes']:,} decompressed),
{i['records']:,} records read. Splitter: {_e(sp['name'])}. Time: {_e(seconds)}.
Fingerprint <code>{_e(report['fingerprint'][:16])}</code>.</p>
<h2>In and out</h2>{totals}
<h2>Bad records (skipped)</h2>{bad}
<h2>Filters</h2>{filters}{_img(images, "filters", "characters removed by filter")}
<p>{report['empty_documents']:,} document(s) had no text left after the filters.</p>
<h2>Duplicates</h2>{dedup}
<h3>near duplicates</h3>{near_html}
<h3>exact duplicate documents</h3>{_samples(d['samples']['exact'])}
<h3>duplicate sentences</h3>{_samples(d['samples']['sentences'])}
<h2>Sentence splitting</h2>
<p>{sp['paragraphs']:,} paragraphs split; {sp['fallbacks']:,} failed the round-trip check
(the sentences did not hold the paragraph's text) and were split by the rule instead.</p>
{_samples(sp['fallback_samples'])}
<h2>Lengths</h2>{_img(images, "sentence_length", "sentence length histogram")}
{_img(images, "document_length", "document length histogram")}
<h2>Character coverage</h2>
<p>{o['distinct_chars']:,} distinct characters; the share of the text a vocabulary that knows the N most
frequent characters can spell without [UNK].</p>{coverage}{_img(images, "coverage", "character coverage")}
<h2>Samples of removed text, by filter</h2>{sample_sections}
<h2>Output</h2>{parts}
</body></html>
"""
