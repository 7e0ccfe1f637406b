"""The two kinds of task of a shard build (see `shards.build`), each run by any worker process or rank:
`run_chunk` (phase 1: one chunk of text -> its instances in OUT/.work/chunk-NNNNNN/) and `run_shard`
(phase 2: instance ranges of the chunks -> one shuffled shard, written in bounded output blocks)."""

from __future__ import annotations

import contextlib
import resource
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kobert_pretrain.config import ShardsConfig
from kobert_pretrain.errors import UserError
from kobert_pretrain.masking import MaskingSpec, mask_batch
from kobert_pretrain.shards.documents import ChunkText, read_documents, tokenize_documents
from kobert_pretrain.shards.format import (
    ArrayDirWriter,
    NpyReader,
    read_array_meta,
    shard_name,
    token_dtype,
    verify_array_dir,
    write_array_dir,
)
from kobert_pretrain.shards.instances import create_pairs, materialize
from kobert_pretrain.vocab import CLS, SEP, SPECIAL_IDS, Vocab

WORK_DIR = ".work"
# Tags keep the random streams of different purposes apart: default_rng([seed, TAG, ...]).
TAG_PAIRS, TAG_CHUNK_SHUFFLE, TAG_STATIC_MASK, TAG_CHUNK_ORDER, TAG_SHARD_SHUFFLE = 1, 2, 3, 4, 5
MASK_BLOCK = 2048  # instances masked at a time in static mode: bounds the (block, 3, seq) draws
# Phase 2 assembles a shard in output blocks of this many tokens (16 MB of uint16 ids, ~21 MB in memory
# as one bytes object per row), each filled by one read of the shard's chunk data in windows of
# READ_TOKENS: a 256 MB shard is 16 blocks, so 16 reads of 256 MB, mostly from the page cache (~2 s).
SHARD_BLOCK_TOKENS = 1 << 23
READ_TOKENS = 1 << 18



@dataclass
class TaskContext:
    """What every task needs; built once per worker process."""

    cfg: ShardsConfig
    vocab: Vocab
    spec: MaskingSpec | None
    dtype: np.dtype
    fingerprint: str
    out: Path

    @property
    def work(self) -> Path:
        return self.out / WORK_DIR


_CONTEXT: TaskContext | None = None


def init_worker(cfg: ShardsConfig, fp: str) -> None:
    global _CONTEXT
    _CONTEXT = make_context(cfg, fp)


def make_context(cfg: ShardsConfig, fp: str) -> TaskContext:
    vocab = Vocab.load(cfg.vocab)
    spec = None
    if cfg.masking == "static":
        spec = MaskingSpec.from_vocab(vocab, cfg.masked_lm_prob, cfg.max_predictions_per_seq, cfg.whole_word_mask)
    return TaskContext(cfg=cfg, vocab=vocab, spec=spec, dtype=token_dtype(vocab.size), fingerprint=fp,
                       out=Path(cfg.out))


def chunk_dir(work: Path, c: int) -> Path:
    return work / f"chunk-{c:06d}"


def run_chunk(c: int, segments: list[tuple[str, int, int]], ctx: TaskContext | None = None) -> dict:
    """Phase 1 task: one chunk of text -> its instances in OUT/.work/chunk-c (skipped if already there)."""
    ctx = ctx or _CONTEXT
    path = chunk_dir(ctx.work, c)
    meta = verify_array_dir(path, ctx.fingerprint)
    if meta is not None:
        return dict(meta, skipped=True, peak_rss_mb=peak_rss_mb())
    cfg = ctx.cfg
    counters = ChunkText()
    documents = read_documents(segments, cfg.input_format, counters)
    chunk = tokenize_documents(documents, ctx.vocab.sp, max_sentence_tokens=cfg.max_seq_length - 3)
    del documents  # the chunk's text as Python strings: ~2.5x its bytes
    if chunk.num_documents:
        pairs = np.concatenate([
            create_pairs(chunk, cfg.max_seq_length, cfg.short_seq_prob, cfg.random_next_prob,
                         np.random.default_rng([cfg.seed, TAG_PAIRS, c, p]))
            for p in range(cfg.dupe_factor)
        ])
    else:
        pairs = np.zeros((0, 5), dtype=np.int64)
    pairs = pairs[np.random.default_rng([cfg.seed, TAG_CHUNK_SHUFFLE, c]).permutation(len(pairs))]
    tokens, offsets, len_a = materialize(chunk.tokens, pairs, SPECIAL_IDS[CLS], SPECIAL_IDS[SEP], ctx.dtype)
    arrays = {"offsets": offsets, "len_a": len_a.astype(np.uint16), "nsp": pairs[:, 4].astype(np.uint8)}
    if ctx.spec is not None:
        tokens, mlm = static_mask(tokens, offsets, len_a, ctx.spec, cfg, np.random.default_rng([cfg.seed, TAG_STATIC_MASK, c]))
        arrays.update(mlm_positions=mlm[0], mlm_labels=mlm[1].astype(ctx.dtype), mlm_offsets=mlm[2])
    arrays["tokens"] = tokens
    meta = {
        "chunk": c,
        "fingerprint": ctx.fingerprint,
        "num_instances": int(len(pairs)),
        "num_tokens": int(len(tokens)),
        "num_random_next": int(pairs[:, 4].sum()),
        "num_documents": int(chunk.num_documents),
        "num_sentences": int(len(chunk.sent_len)),
        "text_tokens": int(len(chunk.tokens)),
        "bytes": counters.bytes,
        "lines": counters.lines,
        "undecodable_lines": counters.undecodable_lines,
        "undecodable_by_file": counters.undecodable_by_file,
    }
    # Not fsynced: every reuse of a chunk directory checks its sha256 first.
    return dict(write_array_dir(path, arrays, meta, durable=False), skipped=False, peak_rss_mb=peak_rss_mb())


def static_mask(tokens, offsets, len_a, spec: MaskingSpec, cfg: ShardsConfig, rng: np.random.Generator):
    """Mask every instance once (static mode): masked token stream plus (positions, labels, offsets)."""
    n = len(offsets) - 1
    lengths = np.diff(offsets)
    out = tokens.copy()
    positions_parts, labels_parts, counts = [], [], np.zeros(n, dtype=np.int64)
    L = cfg.max_seq_length
    for lo in range(0, n, MASK_BLOCK):
        hi = min(n, lo + MASK_BLOCK)
        block_len = lengths[lo:hi]
        batch = np.full((hi - lo, L), SPECIAL_IDS["[PAD]"], dtype=np.int64)
        valid = np.arange(L)[None, :] < block_len[:, None]
        batch[valid] = tokens[offsets[lo]:offsets[hi]]
        masked, pos, lab, w = mask_batch(batch, block_len, len_a[lo:hi].astype(np.int64), spec,
                                         rng.random((hi - lo, 3, L)))
        out[offsets[lo]:offsets[hi]] = masked[valid]
        keep = w > 0
        counts[lo:hi] = keep.sum(axis=1)
        positions_parts.append(pos[keep])
        labels_parts.append(lab[keep])
    mlm_offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(counts, out=mlm_offsets[1:])
    positions = np.concatenate(positions_parts) if positions_parts else np.zeros(0, np.int32)
    labels = np.concatenate(labels_parts) if labels_parts else np.zeros(0, np.int32)
    return out, (positions.astype(np.uint16), labels, mlm_offsets)


class _ChunkSource:
    """Instances [lo, hi) of one chunk directory; its arrays are read in ranges, not held."""

    def __init__(self, path: Path, lo: int, hi: int, out: Path):
        if read_array_meta(path) is None:
            raise UserError(f"{path} is missing: remove {out} and run the shards command again")
        self.lo, self.hi = lo, hi
        self.files: dict[str, NpyReader] = {}
        try:
            for f in sorted(path.glob("*.npy")):
                self.files[f.stem] = NpyReader(f)
        except BaseException:
            self.close()
            raise

    def read(self, name: str, lo: int, hi: int) -> np.ndarray:
        return self.files[name].read(lo, hi)

    def close(self) -> None:
        for f in self.files.values():
            f.close()


def run_shard(s: int, ranges: list[tuple[int, int, int]], ctx: TaskContext | None = None) -> dict:
    """Phase 2 task: gather instance ranges (chunk, lo, hi) from chunk files, shuffle, write shard s.

    The shard's instances, ranges concatenated, are numbered 0..n-1 and permuted with
    default_rng([seed, TAG_SHARD_SHUFFLE, s]). Only per-instance arrays are held whole: about 20
    bytes an instance while the offsets are written, then 4 (each input instance's output position),
    against ~220 bytes of tokens an instance at seq 128. The token data (and static masks) are
    assembled in output blocks of about SHARD_BLOCK_TOKENS tokens: for each block, one pass reads
    the chunk files in windows of READ_TOKENS and copies out the rows that belong to it, which are
    then appended to the output. So memory is one block plus one window whatever the shard's size,
    and a shard of T tokens costs ceil(T / SHARD_BLOCK_TOKENS) sequential reads of its chunk data
    (from the page cache, as a rule).
    """
    ctx = ctx or _CONTEXT
    path = ctx.out / shard_name(s)
    meta = verify_array_dir(path, ctx.fingerprint)
    if meta is not None:
        return dict(meta, skipped=True, peak_rss_mb=peak_rss_mb())
    sources: list[_ChunkSource] = []
    try:
        for c, lo, hi in ranges:
            sources.append(_ChunkSource(chunk_dir(ctx.work, c), lo, hi, ctx.out))
        meta = _write_shard(path, s, sources, ctx)
    finally:
        for src in sources:
            src.close()
    return dict(meta, skipped=False, peak_rss_mb=peak_rss_mb())


def _write_shard(path: Path, s: int, sources: list[_ChunkSource], ctx: TaskContext) -> dict:
    first = np.cumsum([0] + [src.hi - src.lo for src in sources])  # shard index of each source's first instance
    n = int(first[-1])
    perm = np.random.default_rng([ctx.cfg.seed, TAG_SHARD_SHUFFLE, s]).permutation(n)
    index_dtype = np.int32 if n < 2**31 else np.int64  # half the memory of the int64 permutation
    perm = perm.astype(index_dtype)
    # The variable-length arrays, each with the offsets array that cuts it into instances.
    ragged = {"tokens": "offsets"}
    if "mlm_offsets" in sources[0].files:
        ragged.update(mlm_positions="mlm_offsets", mlm_labels="mlm_offsets")
    with ArrayDirWriter(path) as writer:
        for name in ("len_a", "nsp"):
            writer.write(name, np.concatenate([src.read(name, src.lo, src.hi) for src in sources])[perm])
        totals = {}
        for by in dict.fromkeys(ragged.values()):
            # (n,) rows per instance in input order (<= max_seq_length: int32)
            lengths = np.concatenate([np.diff(src.read(by, src.lo, src.hi + 1)).astype(np.int32) for src in sources])
            offsets = np.zeros(n + 1, dtype=np.int64)
            np.cumsum(lengths[perm], out=offsets[1:])
            del lengths
            writer.write(by, offsets)
            totals[by] = int(offsets[-1])
            if by == "offsets":
                # Output blocks: runs of whole instances cut at every SHARD_BLOCK_TOKENS-th token.
                cuts = np.unique(np.searchsorted(offsets, np.arange(0, offsets[-1], SHARD_BLOCK_TOKENS),
                                                 side="right") - 1).tolist() + [n]
            del offsets
        position = np.empty(n, dtype=index_dtype)  # (n,) output position of each input instance
        position[perm] = np.arange(n, dtype=index_dtype)
        del perm
        streams = {name: writer.stream(name, sources[0].files[name].dtype, totals[by]) for name, by in ragged.items()}
        step = max(1, READ_TOKENS // ctx.cfg.max_seq_length)  # instances read at a time
        for lo, hi in zip(cuts[:-1], cuts[1:]):
            # One pass over the shard's chunk data: each output row of [lo, hi), copied out as bytes.
            rows: dict[str, list] = {name: [b""] * (hi - lo) for name in ragged}
            for src, base in zip(sources, first.tolist()):
                for a in range(src.lo, src.hi, step):
                    b = min(src.hi, a + step)
                    where = position[base + a - src.lo:base + b - src.lo]
                    wanted = np.flatnonzero((where >= lo) & (where < hi))
                    if len(wanted) == 0:
                        continue
                    slots = (where[wanted] - lo).tolist()
                    for by in dict.fromkeys(ragged.values()):
                        offsets = src.read(by, a, b + 1)
                        row_starts = (offsets[wanted] - offsets[0]).tolist()
                        row_ends = (offsets[wanted + 1] - offsets[0]).tolist()
                        for name in (name for name, of in ragged.items() if of == by):
                            window = src.read(name, offsets[0], offsets[-1])
                            _take_rows(rows[name], slots, window, row_starts, row_ends)
            for name, pieces in rows.items():
                streams[name].append_bytes(pieces)
        return writer.finish({"shard": s, "fingerprint": ctx.fingerprint, "num_instances": n,
                              "num_tokens": totals["offsets"]})


def _take_rows(pieces: list, slots: list[int], window: np.ndarray, starts: list[int], ends: list[int]) -> None:
    """pieces[slots[i]] = the bytes of window[starts[i]:ends[i]] for all i.

    Row by row in Python, yet ~6x faster than building per-token index arrays (14 vs 85 ns a token
    at seq 128 on the 2-core VM): a row is one slice and one copy.
    """
    data = memoryview(window).cast("B")
    size = window.dtype.itemsize
    for slot, start, end in zip(slots, starts, ends):
        pieces[slot] = bytes(data[start * size:end * size])


def peak_rss_mb() -> float:
    """This process's peak resident memory so far, in MB.

    VmHWM, the high-water mark of this process's own memory: getrusage's ru_maxrss would also count
    the memory of the process that spawned it. Never reset (clear_refs could), so that `time -v` and
    other outside measurements of a run stay right.
    """
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
