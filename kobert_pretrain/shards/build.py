"""`build_shards(cfg)`: text -> documents -> pairs -> (masked) instances -> shard files.

Two phases, each a list of independent tasks that any number of worker
processes (and Horovod ranks) can share without changing a byte of output:

1. chunks: the input is cut into chunks of about `chunk_mb` MB at document
   boundaries. Each chunk is read, tokenized and paired `dupe_factor` times
   (random-next segments come from the chunk's own documents, which bounds
   memory), its instances shuffled, optionally masked, and written to
   OUT/.work/chunk-NNNNNN/. RNG: np.random.default_rng([seed, tag, chunk, pass]).
2. shards: the chunks, in an order permuted by the seed, form one sequence of N
   instances; shard s takes instances [s*N//S, (s+1)*N//S) (so counts differ by
   at most 1), shuffled with default_rng([seed, tag, s]), and is written to
   OUT/shard-NNNNN/ in output blocks of SHARD_BLOCK_TOKENS tokens, each gathered
   by one sequential read of the chunk files (never the whole shard in memory).

index.json is written last, then .work is removed. Every chunk and shard
directory is renamed into place only when complete and carries sha256 sums, so
a re-run with the same arguments (however its paths are spelled) verifies and
skips finished work and redoes the rest; a set whose index.json was deleted is
completed the same way. A run that fails on its input (a UserError) removes what
it created; an interruption (Ctrl-C, kill, a full disk) keeps it for the resume.
Peak memory per worker is one chunk (~20x chunk_mb at dupe_factor 5) or one output
block plus 4-20 bytes per instance of the shard, whatever the corpus and shard sizes;
`shards` prints the measured peak at the end.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from tqdm import tqdm

from kobert_pretrain import distributed
from kobert_pretrain.config import ShardsConfig
from kobert_pretrain.errors import ConfigError, UserError
from kobert_pretrain.fsutil import atomic_write_json, disk_full_error
from kobert_pretrain.shards.format import (
    FORMAT,
    INDEX_FILE,
    SHARD_DIR_RE,
    DiskFullError,
    disk_full,
    read_array_meta,
    shard_name,
    verify_array_dir,
)
from kobert_pretrain.shards.identity import build_identity, fingerprint, identity_differences
from kobert_pretrain.shards.tasks import (
    TAG_CHUNK_ORDER,
    WORK_DIR,
    TaskContext,
    chunk_dir,
    init_worker,
    make_context,
    run_chunk,
    run_shard,
)
from kobert_pretrain.text import record_boundary, resolve_inputs, warn
from kobert_pretrain.vocab import SPECIAL_IDS, Vocab

PLAN_FILE = "plan.json"


# ---------------------------------------------------------------------------------------- plan


def plan_chunks(paths: list[Path], chunk_bytes: int, input_format: str) -> list[list[tuple[str, int, int]]]:
    """Cut the concatenated inputs into chunks of at least `chunk_bytes` at document boundaries.

    Depends only on the files and chunk_bytes, never on the number of workers.
    """
    chunks: list[list[tuple[str, int, int]]] = []
    current: list[tuple[str, int, int]] = []
    current_bytes = 0
    for path in paths:
        size = path.stat().st_size
        pos = 0
        with open(path, "rb") as f:
            while pos < size:
                need = chunk_bytes - current_bytes
                cut = size if size - pos <= need else record_boundary(f, pos + need, size, by_line=input_format == "documents")
                current.append((str(path), pos, cut))
                current_bytes += cut - pos
                pos = cut
                if current_bytes >= chunk_bytes:
                    chunks.append(current)
                    current, current_bytes = [], 0
    if current:
        chunks.append(current)
    return chunks


# ---------------------------------------------------------------------------------- the stage


def build_shards(cfg: ShardsConfig) -> Path:
    """Generate (or resume) the shard set `cfg.out`; return its path.

    A failure that is the input's fault (a UserError: no instances, too many shards, ...)
    leaves `out` as it was before the run. An interruption (Ctrl-C, a crash, a full disk)
    keeps the finished chunks and shards, and the same command resumes.
    """
    problems = cfg.validate()
    if problems:
        raise ConfigError(problems)
    dist = distributed.init()
    vocab = Vocab.load(cfg.vocab)
    # Record absolute paths (index.json's config is how `inspect` and `train` find the vocabulary
    # from any working directory).
    cfg = dataclasses.replace(cfg, vocab=str(vocab.path.resolve()), input=[os.path.abspath(p) for p in cfg.input])
    paths = resolve_inputs(cfg.input)
    out = Path(cfg.out)
    before = _snapshot(out) if dist.is_root else None
    try:
        return _build(cfg, dist, vocab, paths, out)
    except DiskFullError:
        raise
    except UserError:
        if dist.is_root:
            _restore(out, before)
        raise
    except OSError as e:
        if disk_full_error(e) is not None:
            raise disk_full(Path(e.filename) if e.filename else out) from None
        raise


def _snapshot(out: Path) -> tuple[set[str], set[str] | None] | None:
    """The names in `out` and in `out/.work` before this run (None where a directory did not exist)."""
    if not out.is_dir():
        return None
    names = {p.name for p in out.iterdir()}
    work = out / WORK_DIR
    return names, ({p.name for p in work.iterdir()} if WORK_DIR in names and work.is_dir() else None)


def _restore(out: Path, before: tuple[set[str], set[str] | None] | None) -> None:
    """Remove what this run created in `out` (all of `out` if it did not exist before)."""
    if before is None:
        shutil.rmtree(out, ignore_errors=True)
        return
    names, work_names = before
    if not out.is_dir():
        return
    created = [p for p in out.iterdir() if p.name not in names]
    work = out / WORK_DIR
    if work_names is not None and work.is_dir():
        created += [p for p in work.iterdir() if p.name not in work_names]
    for p in created:
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)


def _build(cfg: ShardsConfig, dist, vocab: Vocab, paths: list[Path], out: Path) -> Path:
    identity = build_identity(cfg, vocab.sha256, paths)
    fp = fingerprint(identity)
    work = out / WORK_DIR
    chunks = plan_chunks(paths, max(1, int(cfg.chunk_mb * 1e6)), cfg.input_format)
    # Rank 0 inspects the output directory and writes the plan; the others look only after it
    # has (before, they could see rank 0's half-created .work and mistake it for foreign files).
    if dist.is_root:
        existing = _check_output_dir(out, fp, identity)
        work.mkdir(parents=True, exist_ok=True)
        if not (work / PLAN_FILE).is_file():
            atomic_write_json(work / PLAN_FILE, {"fingerprint": fp, "num_chunks": len(chunks), "identity": identity})
    dist.barrier("shards.plan")
    if not dist.is_root:
        existing = _check_output_dir(out, fp, identity)
    ctx = make_context(cfg, fp)
    started = time.time()

    if existing is not None:
        chunk_counts = existing["chunk_counts"]
        num_shards = len(existing["shards"])
        todo_shards = [s for s in range(num_shards)
                       if verify_array_dir(out / shard_name(s), fp) is None]
        if not todo_shards:
            if dist.is_root:
                shutil.rmtree(work, ignore_errors=True)
                print(f"shards: {out} is complete ({existing['num_instances']:,} instances); nothing to do",
                      file=sys.stderr)
            return out
        ranges = _shard_ranges(chunk_counts, num_shards, cfg.seed)
        needed = sorted({c for s in todo_shards for c, _, _ in ranges[s]})
    else:
        needed = list(range(len(chunks)))

    # One set of worker processes for both phases (spawning them costs ~0.5 s each).
    with _Workers(ctx, cfg.workers) as workers:
        # Phase 1: chunks -> instances (this rank's share).
        mine = [c for c in needed if c % dist.size == dist.rank]
        chunk_bytes = sum(end - start for c in mine for _, start, end in chunks[c])
        chunk_results = _run_tasks(workers, run_chunk, [(c, chunks[c]) for c in mine], dist,
                                   desc="shards: chunks", total=chunk_bytes, unit="B",
                                   progress=lambda m: sum(e - s for _, s, e in chunks[m["chunk"]]))
        dist.barrier("shards.chunks")
        chunk_metas = {c: read_array_meta(chunk_dir(work, c)) for c in needed}

        if existing is None:
            chunk_counts = [chunk_metas[c]["num_instances"] for c in range(len(chunks))]
            total_instances = sum(chunk_counts)
            if total_instances == 0:
                raise UserError(_no_instances_message(chunk_metas.values()))
            total_tokens = sum(m["num_tokens"] for m in chunk_metas.values())
            num_shards = _decide_num_shards(cfg, total_instances, total_tokens * ctx.dtype.itemsize)
            todo_shards = [s for s in range(num_shards) if verify_array_dir(out / shard_name(s), fp) is None]
            ranges = _shard_ranges(chunk_counts, num_shards, cfg.seed)

        # Phase 2: chunks -> shards (this rank's share).
        mine = [s for s in todo_shards if s % dist.size == dist.rank]
        shard_results = _run_tasks(workers, run_shard, [(s, ranges[s]) for s in mine], dist,
                                   desc="shards: shards", total=len(mine), unit="shard", progress=lambda m: 1)
    peaks = _peak_memory(dist, chunk_results, shard_results)  # a collective: also the barrier after phase 2

    if dist.is_root:
        shard_metas = [read_array_meta(out / shard_name(s)) for s in range(num_shards)]
        if existing is not None:
            index = existing
        else:
            index = _make_index(cfg, vocab, ctx.dtype, fp, identity, chunk_counts, chunk_metas, shard_metas)
        atomic_write_json(out / "config.json", cfg.generation_dict())
        atomic_write_json(out / INDEX_FILE, index)
        shutil.rmtree(work, ignore_errors=True)
        _report(index, out, time.time() - started, peaks, cfg.workers * dist.size)
    dist.barrier("shards.index")
    return out


def _check_output_dir(out: Path, fp: str, identity: dict) -> dict | None:
    """The existing index if `out` is a complete set with the same fingerprint; refuse foreign content.

    None means: build (or resume, or rebuild index.json) here.
    """
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file, not a directory")
    if not out.is_dir() or not any(out.iterdir()):
        return None
    if [p.name for p in out.iterdir()] == [WORK_DIR] and not any((out / WORK_DIR).iterdir()):
        return None  # interrupted before the plan was written
    index_file = out / INDEX_FILE
    if index_file.is_file():
        try:
            index = json.loads(index_file.read_text(encoding="utf-8"))
        except ValueError:
            raise UserError(f"{index_file} is corrupt: remove {out} and run again") from None
        if index.get("fingerprint") != fp:
            raise UserError(f"{out} holds a shard set built from other inputs, vocabulary or settings "
                            f"(there vs this run: {'; '.join(identity_differences(index, identity))}); "
                            "choose another --out (nothing was changed)")
        return index
    plan = out / WORK_DIR / PLAN_FILE
    if plan.is_file():
        try:
            planned = json.loads(plan.read_text(encoding="utf-8"))
        except ValueError:
            planned = {}
        if planned.get("fingerprint") != fp:
            raise UserError(f"{out} holds an interrupted shard build with other inputs or settings (there vs this run: "
                            f"{'; '.join(identity_differences(planned.get('identity') or {}, identity))}); "
                            "re-run it with its original arguments, or choose another --out")
        return None
    # No index and no plan: a finished set whose index.json was deleted. Its shards carry the
    # fingerprint, so the same command can rebuild index.json (redoing the chunks, keeping the shards).
    entries = list(out.iterdir())
    shard_dirs = [p for p in entries if SHARD_DIR_RE.fullmatch(p.name)]
    others = [p.name for p in entries if p.name != "config.json"
              and not SHARD_DIR_RE.fullmatch(p.name.split(".tmp-")[0].lstrip("."))  # a shard being written
              and not (p.name == WORK_DIR and not any(p.iterdir()))]
    if others or not shard_dirs:
        raise UserError(f"--out {out} already holds files that are not a shard set; choose a new directory")
    fingerprints = {(read_array_meta(p) or {}).get("fingerprint") for p in shard_dirs}
    if fingerprints != {fp}:
        raise UserError(f"{out} holds shards without {INDEX_FILE} that were built from other inputs, vocabulary or "
                        "settings (or are damaged); re-run the command that built them, or choose another --out")
    return None


def _no_instances_message(chunk_metas) -> str:
    lines = sum(m["lines"] for m in chunk_metas)
    undecodable = sum(m["undecodable_lines"] for m in chunk_metas)
    if not undecodable:
        return "the inputs produced no instances: they hold no text with at least one token"
    by_file: dict[str, int] = {}
    for m in chunk_metas:
        for path, count in m["undecodable_by_file"].items():
            by_file[path] = by_file.get(path, 0) + count
    worst = max(by_file, key=by_file.get)
    return (f"the inputs produced no instances: {undecodable:,} of {lines:,} line(s) are not valid UTF-8 "
            f"({by_file[worst]:,} in {worst}) and the rest hold no text with at least one token; "
            f"convert legacy Korean encodings first, e.g. iconv -f cp949 -t utf-8 {worst} > {worst}.utf8")


def _decide_num_shards(cfg: ShardsConfig, num_instances: int, token_bytes: int) -> int:
    if cfg.num_shards:
        if cfg.num_shards > num_instances:
            raise UserError(f"only {num_instances} instances for --shards.num_shards={cfg.num_shards}: "
                            "lower it or add text")
        return cfg.num_shards
    m = cfg.num_shards_multiple
    wanted = max(1, math.ceil(token_bytes / (cfg.target_shard_mb * 1e6)))
    num = math.ceil(wanted / m) * m
    if num > num_instances:
        warn(f"only {num_instances} instances: writing {num_instances} shard(s), not a multiple of {m}")
        num = num_instances
    return num


def _shard_ranges(chunk_counts: list[int], num_shards: int, seed: int) -> list[list[tuple[int, int, int]]]:
    """For each shard, the (chunk, lo, hi) instance ranges it takes from the permuted chunk sequence."""
    order = np.random.default_rng([seed, TAG_CHUNK_ORDER]).permutation(len(chunk_counts)).tolist()
    total = sum(chunk_counts)
    starts = []
    pos = 0
    for c in order:
        starts.append((c, pos, pos + chunk_counts[c]))
        pos += chunk_counts[c]
    ranges = []
    for s in range(num_shards):
        lo, hi = s * total // num_shards, (s + 1) * total // num_shards
        ranges.append([(c, max(lo, a) - a, min(hi, b) - a) for c, a, b in starts if a < hi and b > lo])
    return ranges


class _Workers:
    """`count` spawned worker processes, started when a task list first needs them, or this process."""

    def __init__(self, ctx: TaskContext, count: int):
        self.ctx, self.count = ctx, count
        self._pool: ProcessPoolExecutor | None = None

    def __enter__(self) -> "_Workers":
        return self

    def map(self, fn, tasks: list[tuple]):
        if self.count == 1 or len(tasks) <= 1:
            return (fn(*task, ctx=self.ctx) for task in tasks)
        if self._pool is None:
            self._pool = ProcessPoolExecutor(max_workers=self.count, mp_context=get_context("spawn"),
                                             initializer=init_worker, initargs=(self.ctx.cfg, self.ctx.fingerprint))
        return self._pool.map(fn, *zip(*tasks))

    def __exit__(self, *exc) -> None:
        if self._pool is not None:
            self._pool.shutdown()


def _run_tasks(workers: _Workers, fn, tasks, dist, desc, total, unit, progress) -> list[dict]:
    bar = tqdm(total=total, desc=desc, unit=unit, unit_scale=True, disable=None if dist.is_root else True,
               file=sys.stderr)
    try:
        return _consume(workers.map(fn, tasks), bar, progress, [])
    finally:
        bar.close()


def _consume(iterator, bar, progress, results):
    docs = tokens = 0
    started = time.time()
    for meta in iterator:
        results.append(meta)
        bar.update(progress(meta))
        docs += meta.get("num_documents", 0)
        tokens += meta.get("text_tokens", 0)
        if tokens:
            bar.set_postfix(docs=f"{docs:,}", tok_per_s=f"{tokens / max(1e-9, time.time() - started):,.0f}")
    return results


def _peak_memory(dist, chunk_results: list[dict], shard_results: list[dict]) -> tuple[float, float]:
    """The largest peak RSS (MB) of any worker of any rank after phase 1 and after phase 2 (every rank must call).

    A worker's peak only grows, so the second is its peak over the whole run when it ran a shard.
    """
    mine = [max((m["peak_rss_mb"] for m in results), default=0.0) for results in (chunk_results, shard_results)]
    table = dist.allgather(np.array(mine), name="shards.peak_memory")  # (ranks, 2)
    return float(table[:, 0].max()), float(table[:, 1].max())


def _make_index(cfg, vocab, dtype, fp, identity, chunk_counts, chunk_metas, shard_metas) -> dict:
    undecodable = sum(m["undecodable_lines"] for m in chunk_metas.values())
    num_instances = sum(m["num_instances"] for m in shard_metas)
    num_tokens = sum(m["num_tokens"] for m in shard_metas)
    return {
        "format": FORMAT,
        "fingerprint": fp,
        "vocab_sha256": vocab.sha256,
        "vocab_size": vocab.size,
        "special_ids": SPECIAL_IDS,
        "token_dtype": dtype.name,
        "max_seq_length": cfg.max_seq_length,
        "masking": cfg.masking,
        "masked_lm_prob": cfg.masked_lm_prob,
        "max_predictions_per_seq": cfg.max_predictions_per_seq,
        "whole_word_mask": cfg.whole_word_mask,
        "seed": cfg.seed,
        "config": cfg.generation_dict(),
        "num_instances": num_instances,
        "num_tokens": num_tokens,
        "num_padded_tokens": num_instances * cfg.max_seq_length,
        "num_random_next": sum(m["num_random_next"] for m in chunk_metas.values()),
        "num_documents": sum(m["num_documents"] for m in chunk_metas.values()),
        "num_sentences": sum(m["num_sentences"] for m in chunk_metas.values()),
        "text_tokens": sum(m["text_tokens"] for m in chunk_metas.values()),
        "input_bytes": sum(m["bytes"] for m in chunk_metas.values()),
        "undecodable_lines": undecodable,
        "inputs": identity["inputs"],
        "chunk_counts": chunk_counts,
        "shards": [
            {"name": shard_name(m["shard"]), "num_instances": m["num_instances"], "num_tokens": m["num_tokens"],
             "sha256": m["sha256"]}
            for m in shard_metas
        ],
    }


def _report(index: dict, out: Path, seconds: float, peaks: tuple[float, float], workers: int) -> None:
    if index["undecodable_lines"]:
        warn(f"skipped {index['undecodable_lines']} line(s) that are not valid UTF-8 "
             "(convert legacy encodings first, e.g. iconv -f cp949 -t utf-8)")
    print(
        f"shards: {index['num_instances']:,} instances, {index['num_tokens']:,} tokens in {len(index['shards'])} "
        f"shard(s) from {index['num_documents']:,} documents ({index['text_tokens']:,} text tokens) "
        f"in {seconds:.1f}s -> {out}",
        file=sys.stderr,
    )
    chunks_mb, shards_mb = peaks
    print(f"shards: peak memory per worker {max(peaks):,.0f} MB ({chunks_mb:,.0f} MB after the chunks, "
          f"{shards_mb:,.0f} MB after the shards); {workers} worker(s) need about {workers} x that "
          "(README: sizing --workers)", file=sys.stderr)
