"""`prepare(cfg)`: raw documents -> cleaned, deduplicated, sentence-split corpus + data report.

Five phases. Tasks (`readers.plan_tasks`, about `chunk_mb` of input each) are
shared by worker processes and Horovod ranks (task t on rank t % size); the
corpus-wide decisions run on rank 0, in input order. Nothing depends on the
number of workers or ranks, so the output is byte-identical for any of them.

1. clean (tasks): read records, text filters, sentence splitting; per task a
   JSON-lines file of documents (paragraphs of sentences) and the hashes of
   their lines.
2. boilerplate (rank 0): count in how many documents each line occurs (sorted
   hash buckets, exact); lines in at least `boilerplate_min_docs` are boilerplate.
3. filter (tasks): drop boilerplate lines, short or non-Hangul sentences and
   documents; hash documents and sentences, MinHash signatures and LSH keys.
4. dedup (rank 0): exact, near-duplicate and sentence decisions (`dedup`).
5. write (rank 0): the surviving text into parts, `report.json`, `report.html`,
   `config.json`, in a temporary directory renamed to `--out` when complete.

The work lives in a hidden sibling `.OUT.prepare-work/` that carries the
fingerprint of the inputs and settings: every task and phase result is renamed
into place when complete, so after a kill (or a full disk) the same command
skips what is done. It is removed once `--out` is complete. Memory per worker
is one task; rank 0's corpus-wide phases hold one sort bucket (see `dedup`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from tqdm import tqdm

from kobert_pretrain import distributed
from kobert_pretrain.config import PrepareConfig
from kobert_pretrain.errors import ConfigError, UserError
from kobert_pretrain.fsutil import (
    atomic_output_dir,
    atomic_write_bytes,
    atomic_write_json,
    disk_full_error,
    ensure_free_output_dir,
)
from kobert_pretrain.prepare import dedup as dd
from kobert_pretrain.prepare.filters import Filters, non_space_chars
from kobert_pretrain.prepare.output import TEXT_DIR, OutputStats, PartWriter
from kobert_pretrain.prepare.readers import ReadCounts, Segment, iter_documents, plan_tasks
from kobert_pretrain.prepare.report import make_report, write_report
from kobert_pretrain.prepare.split import Splitter
from kobert_pretrain.text import resolve_inputs, warn

FORMAT = 1  # version of the work files; part of the fingerprint
PLAN_FILE = "plan.json"
META_FILE = "meta.json"


def work_dir_of(out: Path) -> Path:
    return out.with_name(f".{out.name}.prepare-work")


def build_identity(cfg: PrepareConfig, paths: list[Path]) -> dict:
    """What the output depends on: settings, input files and sizes, the splitter's and MinHash's versions."""
    from importlib.metadata import version

    splitter_version = f"kiwipiepy {version('kiwipiepy')}" if cfg.splitter == "kiwi" else "rule"
    return {"format": FORMAT, "config": cfg.generation_dict(), "splitter": splitter_version,
            "minhash": f"datasketch {version('datasketch')}", "inputs": [[str(p), p.stat().st_size] for p in paths]}


def fingerprint(identity: dict) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


# ------------------------------------------------------------------------------- task context


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


def _init_worker(ctx: TaskContext) -> None:
    global _CONTEXT
    _CONTEXT = ctx


def task_dir(work: Path, phase: str, t: int) -> Path:
    return work / phase / f"task-{t:06d}"


def _finished(path: Path, fp: str) -> dict | None:
    """A task directory's meta.json if it is complete and from this fingerprint."""
    try:
        meta = json.loads((path / META_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return meta if meta.get("fingerprint") == fp else None


def _publish(tmp: Path, final: Path, meta: dict) -> None:
    """Files synced, meta.json last, then rename: a task directory exists under its name only when complete."""
    for child in tmp.iterdir():
        with open(child, "rb") as f:
            os.fsync(f.fileno())
    atomic_write_json(tmp / META_FILE, meta)
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)


def _save_npy(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as f:
        np.save(f, array)


# ---------------------------------------------------------------------------- phase 1: clean


def run_clean(t: int, ctx: TaskContext | None = None) -> dict:
    """Read task t's records, apply the text filters, split paragraphs into sentences."""
    ctx = ctx or _CONTEXT
    final = task_dir(ctx.work, "clean", t)
    meta = _finished(final, ctx.fingerprint)
    if meta is not None:
        return meta
    cfg = ctx.cfg
    filters = Filters(cfg)
    splitter = ctx.splitter()  # one per worker process: its counters run on over tasks
    paragraphs_before, fallbacks_before = splitter.paragraphs, splitter.fallbacks
    splitter.fallback_samples = []
    counts = ReadCounts()
    tmp = final.with_name(final.name + f".tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
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
    _save_npy(tmp / "line_hash.npy", np.array(line_hashes, dtype=np.uint64))
    _save_npy(tmp / "doc_line_hash.npy", np.array(doc_line_hashes, dtype=np.uint64))
    meta = {
        "fingerprint": ctx.fingerprint, "task": t, "documents": documents, "chars": chars_in,
        "sentences": sentences, "read": dataclasses.asdict(counts),
        "filters": {name: s.to_dict() for name, s in filters.stats.items()},
        "split": {"paragraphs": splitter.paragraphs - paragraphs_before,
                  "fallbacks": splitter.fallbacks - fallbacks_before,
                  "samples": splitter.fallback_samples},
    }
    _publish(tmp, final, meta)
    return meta


# ---------------------------------------------------------------------- phase 2: boilerplate


def find_boilerplate(work: Path, num_tasks: int, min_docs: int) -> np.ndarray:
    """Sorted hashes of lines that occur in at least `min_docs` documents (exact counts, in hash buckets)."""
    parts = [np.load(task_dir(work, "clean", t) / "doc_line_hash.npy", mmap_mode="r") for t in range(num_tasks)]
    total = sum(len(p) for p in parts)
    buckets = max(1, -(-total // dd.SORT_BUCKET_ITEMS))
    found = []
    for bucket in range(buckets):
        keys = np.concatenate([np.asarray(p)[np.asarray(p) % np.uint64(buckets) == np.uint64(bucket)]
                               for p in parts]) if parts else np.zeros(0, np.uint64)
        unique, counts = np.unique(keys, return_counts=True)
        found.append(unique[counts >= min_docs])
    return np.sort(np.concatenate(found)) if found else np.zeros(0, np.uint64)


# --------------------------------------------------------------------------- phase 3: filter


def run_filter(t: int, ctx: TaskContext | None = None) -> dict:
    """Drop boilerplate lines, short and non-Hangul sentences and documents; hash and sign the rest."""
    ctx = ctx or _CONTEXT
    final = task_dir(ctx.work, "filter", t)
    meta = _finished(final, ctx.fingerprint)
    if meta is not None:
        return meta
    cfg = ctx.cfg
    filters = Filters(cfg)
    src = task_dir(ctx.work, "clean", t)
    boilerplate = np.load(ctx.work / "boilerplate.npy") if cfg.boilerplate_min_docs else np.zeros(0, np.uint64)
    line_hash = np.load(src / "line_hash.npy")
    is_boilerplate = np.isin(line_hash, boilerplate) if len(boilerplate) else np.zeros(len(line_hash), bool)
    signer = dd.Signer(cfg.minhash_num_perm, cfg.minhash_ngram, cfg.seed, cfg.near_dup_threshold)
    tmp = final.with_name(final.name + f".tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
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
    _save_npy(tmp / "doc_hash.npy", np.array(doc_hash, dtype=np.uint64))
    _save_npy(tmp / "doc_sentences.npy", np.array(doc_sentences, dtype=np.int32))
    _save_npy(tmp / "sent_hash.npy", np.array(sent_hash, dtype=np.uint64))
    _save_npy(tmp / "sent_chars.npy", np.array(sent_chars, dtype=np.int32))
    _save_npy(tmp / "signature.npy", sig)
    _save_npy(tmp / "bands.npy", signer.band_keys(sig) if signer.bands else np.zeros((len(doc_hash), 0), np.uint64))
    meta = {"fingerprint": ctx.fingerprint, "task": t, "documents": len(doc_hash), "empty_documents": empty,
            "filters": {name: s.to_dict() for name, s in filters.stats.items()}}
    _publish(tmp, final, meta)
    return meta


# ---------------------------------------------------------------------------- phase 4: dedup


def run_dedup(work: Path, cfg: PrepareConfig, num_tasks: int, fp: str) -> dict:
    """Corpus-wide duplicate decisions; per task: document status and sentence keep flags."""
    final = work / "dedup"
    meta = _finished(final, fp)
    if meta is not None:
        return meta
    src = [task_dir(work, "filter", t) for t in range(num_tasks)]
    load = lambda name: [np.load(d / name, mmap_mode="r") for d in src]  # noqa: E731
    doc_hash, doc_sentences = load("doc_hash.npy"), load("doc_sentences.npy")
    sizes = [len(p) for p in doc_hash]
    total = sum(sizes)
    status = np.zeros(total, dtype=np.uint8)
    if cfg.dedup_documents:
        leader = dd.bucketed_first_of_group(doc_hash)
        status[leader != np.arange(total)] = dd.EXACT_DUP
    matched = np.full(total, -1, dtype=np.int64)
    similarity = np.zeros(total, dtype=np.float32)
    if cfg.near_dup_threshold:
        near, matched, similarity = dd.near_duplicates(load("bands.npy"), load("signature.npy"),
                                                       status == dd.KEEP, cfg.near_dup_threshold)
        status[near] = dd.NEAR_DUP
    sent_chars = load("sent_chars.npy")
    doc_offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    sentence_doc = lambda i: np.repeat(np.arange(sizes[i]), np.asarray(doc_sentences[i]))  # noqa: E731
    alive = lambda i: status[doc_offsets[i]:doc_offsets[i + 1]] == dd.KEEP  # noqa: E731
    sent_offsets = np.concatenate([[0], np.cumsum([len(c) for c in sent_chars])]).astype(np.int64)
    duplicate = np.zeros(int(sent_offsets[-1]), dtype=bool)
    if cfg.dedup_sentences:
        select = [alive(i)[sentence_doc(i)] & (np.asarray(sent_chars[i]) >= cfg.dedup_sentence_min_chars)
                  for i in range(num_tasks)]
        duplicate = dd.bucketed_duplicates(load("sent_hash.npy"), select)
        del select
    tmp = final.with_name(f"dedup.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    emptied = 0
    for i in range(num_tasks):
        doc_status = status[doc_offsets[i]:doc_offsets[i + 1]].copy()
        keep = ~duplicate[sent_offsets[i]:sent_offsets[i + 1]]
        kept_chars = np.bincount(sentence_doc(i), weights=np.asarray(sent_chars[i]) * keep, minlength=sizes[i])
        is_emptied = alive(i) & (kept_chars < max(1, cfg.min_document_chars))
        doc_status[is_emptied] = dd.EMPTIED
        emptied += int(is_emptied.sum())
        _save_npy(tmp / f"status-{i:06d}.npy", doc_status)
        _save_npy(tmp / f"keep-{i:06d}.npy", keep)
        _save_npy(tmp / f"match-{i:06d}.npy", matched[doc_offsets[i]:doc_offsets[i + 1]])
        _save_npy(tmp / f"similarity-{i:06d}.npy", similarity[doc_offsets[i]:doc_offsets[i + 1]])
    meta = {"fingerprint": fp, "documents": total, "exact": int((status == dd.EXACT_DUP).sum()),
            "near": int((status == dd.NEAR_DUP).sum()), "sentences": int(duplicate.sum()), "emptied": emptied}
    if cfg.near_dup_threshold:
        meta["bands"], meta["rows"] = dd.lsh_bands(cfg.near_dup_threshold, cfg.minhash_num_perm)
    _publish(tmp, final, meta)
    return meta


# ---------------------------------------------------------------------------- phase 5: write


class DedupSamples:
    """A few removed documents and sentences per kind of duplicate, for the report."""

    def __init__(self, limit: int):
        self.limit = limit
        self.exact: list[str] = []
        self.near: list[dict] = []
        self.sentences: list[str] = []
        self.emptied: list[str] = []

    def add(self, kind: list, item) -> None:
        if len(kind) < self.limit:
            kind.append(item)


def _short(text: str, n: int = 300) -> str:
    return text if len(text) <= n else text[:n] + "…"


def write_corpus(work: Path, cfg: PrepareConfig, num_tasks: int, text_dir: Path | None) -> dict:
    """Stream the surviving documents in input order into parts; statistics and samples of the removed."""
    writer = PartWriter(text_dir, max(1, int(cfg.part_mb * 1e6)))
    stats = OutputStats()
    samples = DedupSamples(cfg.samples_per_filter)
    wanted_matches: dict[int, list[dict]] = {}
    for t in range(num_tasks):
        dedup_dir = work / "dedup"
        status = np.load(dedup_dir / f"status-{t:06d}.npy")
        keep = np.load(dedup_dir / f"keep-{t:06d}.npy")
        match = np.load(dedup_dir / f"match-{t:06d}.npy")
        similarity = np.load(dedup_dir / f"similarity-{t:06d}.npy")
        s = 0  # this document's first sentence in `keep`
        for d, sentences in enumerate(_documents(task_dir(work, "filter", t) / "documents.txt")):
            flags = keep[s:s + len(sentences)]
            s += len(sentences)
            if status[d] == dd.EXACT_DUP:
                samples.add(samples.exact, _short(" ".join(sentences)))
            elif status[d] == dd.NEAR_DUP:
                if len(samples.near) < samples.limit:
                    item = {"removed": _short(" ".join(sentences)), "similarity": round(float(similarity[d]), 3),
                            "kept": None}
                    samples.near.append(item)
                    wanted_matches.setdefault(int(match[d]), []).append(item)
            elif status[d] == dd.EMPTIED:
                samples.add(samples.emptied, _short(" ".join(sentences)))
            else:
                kept = [x for x, k in zip(sentences, flags) if k]
                for x, k in zip(sentences, flags):
                    if not k:
                        samples.add(samples.sentences, _short(x))
                writer.write(kept)
                stats.add(kept)
    parts = writer.close()
    _fill_matches(work, num_tasks, wanted_matches)
    return {"parts": parts, "output": stats.to_dict(), "coverage_curve": stats.coverage_curve(),
            "samples": {"exact": samples.exact, "near": samples.near, "sentences": samples.sentences,
                        "emptied": samples.emptied}}


def _fill_matches(work: Path, num_tasks: int, wanted: dict[int, list[dict]]) -> None:
    """The kept document each sampled near-duplicate was matched with (a second, targeted read)."""
    if not wanted:
        return
    offset = 0
    for t in range(num_tasks):
        n = len(np.load(task_dir(work, "filter", t) / "doc_hash.npy", mmap_mode="r"))
        ids = [i for i in wanted if offset <= i < offset + n]
        if ids:
            for d, sentences in enumerate(_documents(task_dir(work, "filter", t) / "documents.txt")):
                for item in wanted.get(offset + d, []):
                    item["kept"] = _short(" ".join(sentences))
        offset += n


def _documents(path: Path):
    """The documents of a filter-phase file (one sentence per line, a blank line after each)."""
    current: list[str] = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.rstrip("\n")
            if line:
                current.append(line)
            else:
                yield current
                current = []


# ------------------------------------------------------------------------------- the stage


def prepare(cfg: PrepareConfig, dry_run: bool = False) -> Path:
    """Prepare the corpus `cfg.out` (with `dry_run`, only its report.json and report.html); return its path.

    An interruption (Ctrl-C, a kill, a full disk) keeps the finished work in `.OUT.prepare-work/` and the
    same command resumes; `--out` appears only when complete.
    """
    problems = cfg.validate()
    if problems:
        raise ConfigError(problems)
    out = Path(cfg.out).absolute()
    ensure_free_output_dir(out, "prepare")
    paths = resolve_inputs(cfg.input)
    cfg = dataclasses.replace(cfg, input=[os.path.abspath(p) for p in cfg.input], out=str(out))
    dist = distributed.init()
    work = work_dir_of(out)
    try:
        return _prepare(cfg, dist, paths, out, work, dry_run)
    except OSError as e:
        full = disk_full_error(e)
        if full is not None:
            where = e.filename or full.filename or out
            raise UserError(f"no space left on device while writing {where}; the finished work is kept in {work}: "
                            "free some space and run the same command to resume") from None
        raise


def _prepare(cfg: PrepareConfig, dist, paths: list[Path], out: Path, work: Path, dry_run: bool) -> Path:
    identity = build_identity(cfg, paths)
    fp = fingerprint(identity)
    tasks = plan_tasks(paths, cfg.format, cfg.text_documents, max(1, int(cfg.chunk_mb * 1e6)))
    if dist.is_root:
        _claim_work_dir(work, fp, identity)
    dist.barrier("prepare.plan")
    ctx = TaskContext(cfg=cfg, work=work, fingerprint=fp, tasks=tasks)
    timings: dict[str, float] = {}
    input_bytes = sum(p.stat().st_size for p in paths)

    started = time.perf_counter()
    mine = [t for t in range(len(tasks)) if t % dist.size == dist.rank]
    _run_tasks(ctx, run_clean, mine, cfg.workers, dist, "prepare: clean")
    dist.barrier("prepare.clean")
    timings["clean"] = time.perf_counter() - started

    started = time.perf_counter()
    if dist.is_root and cfg.boilerplate_min_docs and not (work / "boilerplate.npy").is_file():
        found = find_boilerplate(work, len(tasks), cfg.boilerplate_min_docs)
        atomic_write_bytes(work / "boilerplate.npy", _npy_bytes(found))
    dist.barrier("prepare.boilerplate")
    timings["boilerplate"] = time.perf_counter() - started

    started = time.perf_counter()
    _run_tasks(ctx, run_filter, mine, cfg.workers, dist, "prepare: filter")
    dist.barrier("prepare.filter")
    timings["filter"] = time.perf_counter() - started

    if dist.is_root:
        started = time.perf_counter()
        dedup_meta = run_dedup(work, cfg, len(tasks), fp)
        timings["dedup"] = time.perf_counter() - started
        started = time.perf_counter()
        with atomic_output_dir(out, "prepare") as tmp:
            written = write_corpus(work, cfg, len(tasks), None if dry_run else tmp / TEXT_DIR)
            timings["write"] = time.perf_counter() - started
            clean_metas = [json.loads((task_dir(work, "clean", t) / META_FILE).read_text()) for t in range(len(tasks))]
            filter_metas = [json.loads((task_dir(work, "filter", t) / META_FILE).read_text())
                            for t in range(len(tasks))]
            report = make_report(cfg, identity, fp, input_bytes, clean_metas, filter_metas, dedup_meta, written,
                                 timings, dry_run)
            if report["output"]["documents"] == 0:
                shutil.rmtree(work, ignore_errors=True)  # a final verdict: nothing to resume
                raise UserError(_nothing_left(report))
            write_report(tmp, report, written["coverage_curve"])
            if not dry_run:
                atomic_write_json(tmp / "config.json", cfg.generation_dict())
        shutil.rmtree(work, ignore_errors=True)
        _print_summary(report, out, dry_run)
    dist.barrier("prepare.write")
    return out


def _npy_bytes(array: np.ndarray) -> bytes:
    import io

    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def _claim_work_dir(work: Path, fp: str, identity: dict) -> None:
    """Start or resume the work directory; refuse one left by a run of other inputs or settings."""
    plan = work / PLAN_FILE
    if plan.is_file():
        try:
            planned = json.loads(plan.read_text(encoding="utf-8"))
        except ValueError:
            planned = {}
        if planned.get("fingerprint") == fp:
            return
        raise UserError(f"{work} holds an interrupted prepare of other inputs or settings: re-run it with its "
                        f"original arguments to finish it, or remove {work}")
    if work.exists() and not work.is_dir():
        raise UserError(f"{work} is in the way (a file where prepare keeps its work): remove it")
    work.mkdir(parents=True, exist_ok=True)
    atomic_write_json(plan, {"fingerprint": fp, "identity": identity})


def _run_tasks(ctx: TaskContext, fn, tasks: list[int], workers: int, dist, desc: str) -> None:
    bar = tqdm(total=len(tasks), desc=desc, unit="task", disable=None if dist.is_root else True, file=sys.stderr)
    try:
        if workers == 1 or len(tasks) <= 1:
            for t in tasks:
                fn(t, ctx=ctx)
                bar.update(1)
        else:
            pool_ctx = dataclasses.replace(ctx, _splitter=None)
            with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn"),
                                     initializer=_init_worker, initargs=(pool_ctx,)) as pool:
                for _ in pool.map(fn, tasks):
                    bar.update(1)
    finally:
        bar.close()


def _nothing_left(report: dict) -> str:
    bad = report["input"]["bad_records"]
    if not report["input"]["records"] and bad:
        kind = max(bad, key=bad.get)
        return (f"no document could be read: {sum(bad.values()):,} bad record(s), most of them {kind} "
                f"(e.g. {report['input']['bad_record_examples'][kind]})")
    return (f"no text is left: the filters and deduplication removed all {report['input']['documents']:,} "
            "document(s); see the [prepare] settings (min_document_chars, min_*_hangul, boilerplate_min_docs)")


def _print_summary(report: dict, out: Path, dry_run: bool) -> None:
    i, o = report["input"], report["output"]
    bad = sum(i["bad_records"].values())
    if bad:
        warn(f"skipped {bad:,} bad record(s): " + ", ".join(f"{n:,} {k}" for k, n in i["bad_records"].items()))
    d = report["dedup"]
    print(f"prepare: {i['documents']:,} documents ({i['chars']:,} characters) -> {o['documents']:,} documents, "
          f"{o['sentences']:,} sentences ({o['chars']:,} characters); duplicates: {d['exact']:,} exact, "
          f"{d['near']:,} near, {d['sentences']:,} sentences; splitter fell back on "
          f"{report['splitter']['fallbacks']:,} of {report['splitter']['paragraphs']:,} paragraphs", file=sys.stderr)
    where = out if dry_run else out / TEXT_DIR
    print(f"prepare: report {out / 'report.html'}" + ("" if dry_run else f"; corpus {where} "
          f"({len(report['parts'])} part(s)): use it as --input of vocab and shards"), file=sys.stderr)
