"""The two kinds of per-task work of `prepare` (see `prepare.build`), each run by any worker process or
rank: `run_clean` (phase 1: read a task's records, text filters, sentence splitting) and `run_filter`
(phase 3: drop boilerplate lines, short and non-Hangul text; hash and MinHash-sign what is left).
Each writes its result directory in the work directory (`prepare.workdir`) and returns its meta."""

from __future__ import annotations

import dataclasses
import functools
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kobert_pretrain.config import PrepareConfig
from kobert_pretrain.prepare import dedup as dd
from kobert_pretrain.prepare import workdir
from kobert_pretrain.prepare.filters import Filters, non_space_chars
from kobert_pretrain.prepare.readers import ReadCounts, Segment, iter_documents
from kobert_pretrain.prepare.split import Splitter


@dataclass
class TaskContext:
    """What every task needs; one per worker process (the splitter loads its model once)."""

    cfg: PrepareConfig
    work: Path
    fingerprint: str
    tasks: list[list[Segment]]
    _splitter: Splitter | None = None

    def splitter(self) -> Splitter:
        if self._splitter is None:
            self._splitter = Splitter(self.cfg.splitter, self.cfg.samples_per_filter)
        return self._splitter


_CONTEXT: TaskContext | None = None


def init_worker(ctx: TaskContext) -> None:
    global _CONTEXT
    _CONTEXT = ctx


def phase_task(phase: str):
    """`fn(t, ctx, final)` as `run(t, ctx=None)`: the task's result when it is finished already (a resume),
    else fn's, written to `final`; ctx defaults to this worker process's context."""
    def wrap(fn):
        @functools.wraps(fn)
        def run(t: int, ctx: TaskContext | None = None) -> dict:
            ctx = ctx or _CONTEXT
            final = workdir.task_dir(ctx.work, phase, t)
            meta = workdir.finished(final, ctx.fingerprint)
            return meta if meta is not None else fn(t, ctx, final)
        return run
    return wrap


# ---------------------------------------------------------------------------- phase 1: clean


@phase_task("clean")
def run_clean(t: int, ctx: TaskContext, final: Path) -> dict:
    """Read task t's records, apply the text filters, split paragraphs into sentences."""
    cfg = ctx.cfg
    filters = Filters(cfg)
    splitter = ctx.splitter()  # one per worker process: its counters run on over tasks
    paragraphs_before, fallbacks_before = splitter.paragraphs, splitter.fallbacks
    splitter.fallback_samples = []
    counts = ReadCounts()
    tmp = workdir.begin(final)
    line_hashes: list[int] = []
    doc_line_hashes: list[int] = []
    chars_in = sentences = documents = 0
    with open(tmp / "documents.jsonl", "w", encoding="utf-8") as f:
        for segment in ctx.tasks[t]:
            for raw in iter_documents(segment, cfg.text_documents, cfg.text_field, counts):
                chars_in += len(raw)
                documents += 1
                lines = filters.clean(raw)
                split = [splitter.split(line) for line in lines]
                sentences += sum(map(len, split))
                hashes = [dd.hash64(line) for line in lines]
                line_hashes.extend(hashes)
                doc_line_hashes.extend(dict.fromkeys(hashes))  # each line once per document
                f.write(json.dumps(split, ensure_ascii=False) + "\n")
    workdir.save_npy(tmp / "line_hash.npy", np.array(line_hashes, dtype=np.uint64))
    workdir.save_npy(tmp / "doc_line_hash.npy", np.array(doc_line_hashes, dtype=np.uint64))
    meta = {
        "fingerprint": ctx.fingerprint, "task": t, "documents": documents, "chars": chars_in,
        "sentences": sentences, "read": dataclasses.asdict(counts),
        "filters": {name: s.to_dict() for name, s in filters.stats.items()},
        "split": {"paragraphs": splitter.paragraphs - paragraphs_before,
                  "fallbacks": splitter.fallbacks - fallbacks_before,
                  "samples": splitter.fallback_samples},
    }
    workdir.publish(tmp, final, meta)
    return meta


# --------------------------------------------------------------------------- phase 3: filter


@phase_task("filter")
def run_filter(t: int, ctx: TaskContext, final: Path) -> dict:
    """Drop boilerplate lines, short and non-Hangul sentences and documents; hash and sign the rest."""
    cfg = ctx.cfg
    filters = Filters(cfg)
    src = workdir.task_dir(ctx.work, "clean", t)
    boilerplate = np.load(workdir.boilerplate_file(ctx.work)) if cfg.boilerplate_min_docs \
        else np.zeros(0, np.uint64)
    line_hash = np.load(src / "line_hash.npy")
    is_boilerplate = np.isin(line_hash, boilerplate) if len(boilerplate) else np.zeros(len(line_hash), bool)
    signer = dd.Signer(cfg.minhash_num_perm, cfg.minhash_ngram, cfg.seed, cfg.near_dup_threshold)
    tmp = workdir.begin(final)
    doc_hash, doc_sentences, sent_hash, sent_chars, signatures = [], [], [], [], []
    empty = 0
    line = 0
    with open(src / "documents.jsonl", encoding="utf-8") as f, \
            open(tmp / "documents.txt", "w", encoding="utf-8") as out:
        for record in f:
            touched: set[str] = set()  # the drop filters that removed something from this document
            kept: list[str] = []
            for paragraph in json.loads(record):
                if is_boilerplate[line]:
                    filters.drop_line("boilerplate", " ".join(paragraph))
                    touched.add("boilerplate")
                else:
                    for sentence in paragraph:
                        reason = filters.sentence_drop(sentence)
                        if reason is None:
                            kept.append(sentence)
                        else:
                            touched.add(reason)
                line += 1
            text = "\n".join(kept)
            reason = filters.document_drop(text) if kept else None
            if reason is not None:
                touched.add(reason)
            filters.mark_documents(touched)
            if not kept:
                empty += 1
            if not kept or reason is not None:
                continue
            out.write(text + "\n\n")
            doc_hash.append(dd.hash64(text))
            doc_sentences.append(len(kept))
            sent_hash.extend(dd.hash64(s) for s in kept)
            sent_chars.extend(non_space_chars(s) for s in kept)
            if signer.bands:
                signatures.append(signer.signature(text))
    sig = np.array(signatures, dtype=np.uint32).reshape(len(signatures), cfg.minhash_num_perm) \
        if signer.bands else np.zeros((len(doc_hash), 0), np.uint32)
    workdir.save_npy(tmp / "doc_hash.npy", np.array(doc_hash, dtype=np.uint64))
    workdir.save_npy(tmp / "doc_sentences.npy", np.array(doc_sentences, dtype=np.int32))
    workdir.save_npy(tmp / "sent_hash.npy", np.array(sent_hash, dtype=np.uint64))
    workdir.save_npy(tmp / "sent_chars.npy", np.array(sent_chars, dtype=np.int32))
    workdir.save_npy(tmp / "signature.npy", sig)
    workdir.save_npy(tmp / "bands.npy", signer.band_keys(sig) if signer.bands else np.zeros((len(doc_hash), 0), np.uint64))
    meta = {"fingerprint": ctx.fingerprint, "task": t, "documents": len(doc_hash), "empty_documents": empty,
            "filters": {name: s.to_dict() for name, s in filters.stats.items()}}
    workdir.publish(tmp, final, meta)
    return meta
