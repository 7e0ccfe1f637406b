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

Phases 1 and 3 are in `prepare.tasks`, 2, 4 and 5 in `prepare.corpus_wide`. The
work lives in a hidden sibling `.OUT.prepare-work/` (`prepare.workdir`): after a
kill (or a full disk) the same command skips what is done. It is removed once
`--out` is complete. Memory per worker is one task; rank 0's corpus-wide phases
hold one sort bucket (see `dedup`).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

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
from kobert_pretrain.prepare import corpus_wide, workdir
from kobert_pretrain.prepare import tasks as task_fns
from kobert_pretrain.prepare.output import TEXT_DIR
from kobert_pretrain.prepare.readers import plan_tasks
from kobert_pretrain.prepare.report import make_report, write_report
from kobert_pretrain.prepare.workdir import work_dir_of
from kobert_pretrain.text import resolve_inputs, warn


def build_identity(cfg: PrepareConfig, paths: list[Path]) -> dict:
    """What the output depends on: settings, input files and sizes, the splitter's and MinHash's versions."""
    from importlib.metadata import version

    splitter_version = f"kiwipiepy {version('kiwipiepy')}" if cfg.splitter == "kiwi" else "rule"
    return {"format": workdir.FORMAT, "config": cfg.generation_dict(), "splitter": splitter_version,
            "minhash": f"datasketch {version('datasketch')}", "inputs": [[str(p), p.stat().st_size] for p in paths]}


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
    fp = workdir.fingerprint(identity)
    tasks = plan_tasks(paths, cfg.format, cfg.text_documents, max(1, int(cfg.chunk_mb * 1e6)))
    if dist.is_root:
        workdir.claim(work, fp, identity)
    dist.barrier("prepare.plan")
    ctx = task_fns.TaskContext(cfg=cfg, work=work, fingerprint=fp, tasks=tasks)
    timings: dict[str, float] = {}
    input_bytes = sum(p.stat().st_size for p in paths)

    started = time.perf_counter()
    mine = [t for t in range(len(tasks)) if t % dist.size == dist.rank]
    _run_tasks(ctx, task_fns.run_clean, mine, cfg.workers, dist, "prepare: clean")
    dist.barrier("prepare.clean")
    timings["clean"] = time.perf_counter() - started

    started = time.perf_counter()
    if dist.is_root and cfg.boilerplate_min_docs and not workdir.boilerplate_file(work).is_file():
        found = corpus_wide.find_boilerplate(work, len(tasks), cfg.boilerplate_min_docs)
        atomic_write_bytes(workdir.boilerplate_file(work), workdir.npy_bytes(found))
    dist.barrier("prepare.boilerplate")
    timings["boilerplate"] = time.perf_counter() - started

    started = time.perf_counter()
    _run_tasks(ctx, task_fns.run_filter, mine, cfg.workers, dist, "prepare: filter")
    dist.barrier("prepare.filter")
    timings["filter"] = time.perf_counter() - started

    if dist.is_root:
        started = time.perf_counter()
        dedup_meta = corpus_wide.run_dedup(work, cfg, len(tasks), fp)
        timings["dedup"] = time.perf_counter() - started
        started = time.perf_counter()
        with atomic_output_dir(out, "prepare") as tmp:
            written = corpus_wide.write_corpus(work, cfg, len(tasks), None if dry_run else tmp / TEXT_DIR)
            timings["write"] = time.perf_counter() - started
            clean_metas = [workdir.read_meta(workdir.task_dir(work, "clean", t)) for t in range(len(tasks))]
            filter_metas = [workdir.read_meta(workdir.task_dir(work, "filter", t)) for t in range(len(tasks))]
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


def _run_tasks(ctx: task_fns.TaskContext, fn, tasks: list[int], workers: int, dist, desc: str) -> None:
    bar = tqdm(total=len(tasks), desc=desc, unit="task", disable=None if dist.is_root else True, file=sys.stderr)
    try:
        if workers == 1 or len(tasks) <= 1:
            for t in tasks:
                fn(t, ctx=ctx)
                bar.update(1)
        else:
            pool_ctx = dataclasses.replace(ctx, _splitter=None)
            with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn"),
                                     initializer=task_fns.init_worker, initargs=(pool_ctx,)) as pool:
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
