"""The corpus-wide phases of `prepare` (see `prepare.build`), run on rank 0 in input order:
`find_boilerplate` (phase 2: lines in at least N documents, counted exactly in hash buckets), `run_dedup`
(phase 4: exact, near-duplicate and sentence decisions) and `write_corpus` (phase 5: the surviving text
into parts, with statistics and samples of what was removed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from kobert_pretrain.config import PrepareConfig
from kobert_pretrain.prepare import dedup as dd
from kobert_pretrain.prepare import workdir
from kobert_pretrain.prepare.output import OutputStats, PartWriter


# ---------------------------------------------------------------------- phase 2: boilerplate


def find_boilerplate(work: Path, num_tasks: int, min_docs: int) -> np.ndarray:
    """Sorted hashes of lines that occur in at least `min_docs` documents (exact counts, in hash buckets)."""
    parts = [np.load(workdir.task_dir(work, "clean", t) / "doc_line_hash.npy", mmap_mode="r") for t in range(num_tasks)]
    total = sum(len(p) for p in parts)
    buckets = max(1, -(-total // dd.SORT_BUCKET_ITEMS))
    found = []
    for bucket in range(buckets):
        keys = np.concatenate([np.asarray(p)[np.asarray(p) % np.uint64(buckets) == np.uint64(bucket)]
                               for p in parts]) if parts else np.zeros(0, np.uint64)
        unique, counts = np.unique(keys, return_counts=True)
        found.append(unique[counts >= min_docs])
    return np.sort(np.concatenate(found)) if found else np.zeros(0, np.uint64)


# ---------------------------------------------------------------------------- phase 4: dedup


def run_dedup(work: Path, cfg: PrepareConfig, num_tasks: int, fp: str) -> dict:
    """Corpus-wide duplicate decisions; per task: document status and sentence keep flags."""
    final = workdir.dedup_dir(work)
    meta = workdir.finished(final, fp)
    if meta is not None:
        return meta
    src = [workdir.task_dir(work, "filter", t) for t in range(num_tasks)]
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
    tmp = workdir.begin(final)
    emptied = 0
    for i in range(num_tasks):
        doc_status = status[doc_offsets[i]:doc_offsets[i + 1]].copy()
        keep = ~duplicate[sent_offsets[i]:sent_offsets[i + 1]]
        kept_chars = np.bincount(sentence_doc(i), weights=np.asarray(sent_chars[i]) * keep, minlength=sizes[i])
        is_emptied = alive(i) & (kept_chars < max(1, cfg.min_document_chars))
        doc_status[is_emptied] = dd.EMPTIED
        emptied += int(is_emptied.sum())
        workdir.save_npy(tmp / f"status-{i:06d}.npy", doc_status)
        workdir.save_npy(tmp / f"keep-{i:06d}.npy", keep)
        workdir.save_npy(tmp / f"match-{i:06d}.npy", matched[doc_offsets[i]:doc_offsets[i + 1]])
        workdir.save_npy(tmp / f"similarity-{i:06d}.npy", similarity[doc_offsets[i]:doc_offsets[i + 1]])
    meta = {"fingerprint": fp, "documents": total, "exact": int((status == dd.EXACT_DUP).sum()),
            "near": int((status == dd.NEAR_DUP).sum()), "sentences": int(duplicate.sum()), "emptied": emptied}
    if cfg.near_dup_threshold:
        meta["bands"], meta["rows"] = dd.lsh_bands(cfg.near_dup_threshold, cfg.minhash_num_perm)
    workdir.publish(tmp, final, meta)
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
    decisions = workdir.dedup_dir(work)
    for t in range(num_tasks):
        status = np.load(decisions / f"status-{t:06d}.npy")
        keep = np.load(decisions / f"keep-{t:06d}.npy")
        match = np.load(decisions / f"match-{t:06d}.npy")
        similarity = np.load(decisions / f"similarity-{t:06d}.npy")
        s = 0  # this document's first sentence in `keep`
        for d, sentences in enumerate(_documents(workdir.task_dir(work, "filter", t) / "documents.txt")):
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
        n = len(np.load(workdir.task_dir(work, "filter", t) / "doc_hash.npy", mmap_mode="r"))
        ids = [i for i in wanted if offset <= i < offset + n]
        if ids:
            for d, sentences in enumerate(_documents(workdir.task_dir(work, "filter", t) / "documents.txt")):
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
