"""Deduplication: exact documents and sentences by hash, near-duplicate documents by MinHash LSH.

Per document (in the tasks, in parallel): a 64-bit hash of its text, a
MinHash signature of its character shingles (datasketch's `MinHash`, seeded,
so the same on every machine) and one 64-bit key per LSH band (the band and
row counts are datasketch's `MinHashLSH` optimum for the threshold).

Over the corpus (one process, after the tasks), with input order as the
global order so that the survivor never depends on the number of workers:

1. exact: of documents with the same hash, the first stays.
2. near: a document is dropped when, in some band, the first earlier
   document with the same band key has a signature agreeing in at least
   `near_dup_threshold` of its positions (the Jaccard estimate). The earlier
   document may itself be a near-duplicate; the first of a chain stays.
3. sentences: of sentences with the same hash (at least
   `dedup_sentence_min_chars` long, in surviving documents), the first stays;
   a document left shorter than `min_document_chars` is dropped ("emptied").

Grouping is a stable sort of keys, never a hash table in memory: datasketch's
own in-memory `MinHashLSH` index holds about 3.1 KB per document at 128
permutations and 9 bands (measured), 31 GB for 10M documents. Here the
signatures (4 bytes x num_perm) and band keys (8 bytes x bands) stay on disk in
the tasks' work files, and a pass holds 8-byte keys plus sort indices for one
band or one hash bucket at a time: about 32 bytes per document (320 MB for
10M documents), sentences in buckets of at most SORT_BUCKET_ITEMS.
"""

from __future__ import annotations

import hashlib
import warnings
import zlib
from typing import Sequence

import numpy as np

SORT_BUCKET_ITEMS = 16_000_000  # keys sorted at once: 16M x (8 key + 8 index + 8 position) bytes = 384 MB
PAIR_BLOCK = 65_536  # candidate pairs whose signatures are compared at once

KEEP, EXACT_DUP, NEAR_DUP, EMPTIED = 0, 1, 2, 3  # document status after deduplication


def hash64(text: str) -> int:
    """A 64-bit hash of text (blake2b), the same in every process and on every machine."""
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little")


def lsh_bands(threshold: float, num_perm: int) -> tuple[int, int]:
    """(bands, rows per band): datasketch's optimum for this threshold (false positives and negatives
    weighted equally)."""
    from datasketch import MinHashLSH

    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
    return lsh.b, lsh.r


def shingles(text: str, n: int) -> list[bytes]:
    """Character n-grams of `text` with whitespace collapsed (the whole text when shorter than n)."""
    text = " ".join(text.split())
    if len(text) <= n:
        return [text.encode("utf-8")]
    return [text[i:i + n].encode("utf-8") for i in range(len(text) - n + 1)]


class Signer:
    """MinHash signatures and LSH band keys of documents, for one config."""

    def __init__(self, num_perm: int, ngram: int, seed: int, threshold: float):
        from datasketch import MinHash

        self.num_perm, self.ngram = num_perm, ngram
        self.bands, self.rows = lsh_bands(threshold, num_perm) if threshold else (0, 0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # crc32 hashes a shingle in C (datasketch's default, sha1 in Python, is 4x slower per shingle);
            # the permutations are drawn from `seed`, so signatures agree across processes.
            self._template = MinHash(num_perm=num_perm, seed=seed, hashfunc=zlib.crc32)
        self._minhash_class = MinHash

    def signature(self, text: str) -> np.ndarray:
        """(num_perm,) uint32 MinHash signature of the text's shingles."""
        m = self._minhash_class(num_perm=self.num_perm, seed=self._template.seed, hashfunc=zlib.crc32,
                          permutations=self._template.permutations, scheme=self._template.scheme)
        m.update_batch(shingles(text, self.ngram))
        return m.hashvalues.astype(np.uint32)

    def band_keys(self, signatures: np.ndarray) -> np.ndarray:
        """(docs, bands) uint64: a hash of each band's rows of each signature."""
        keys = np.zeros((len(signatures), self.bands), dtype=np.uint64)
        for d, sig in enumerate(signatures):
            for b in range(self.bands):
                band = sig[b * self.rows:(b + 1) * self.rows].tobytes()
                keys[d, b] = int.from_bytes(hashlib.blake2b(band, digest_size=8, person=b"lsh%05d" % b).digest(),
                                            "little")
        return keys


def first_of_group(keys: np.ndarray) -> np.ndarray:
    """For each position, the position of the first item with the same key (itself when it is the first)."""
    n = len(keys)
    order = np.argsort(keys, kind="stable")
    starts = np.ones(n, dtype=bool)
    if n:
        sorted_keys = keys[order]
        starts[1:] = sorted_keys[1:] != sorted_keys[:-1]
    group_start = np.maximum.accumulate(np.where(starts, np.arange(n), 0)) if n else np.zeros(0, np.int64)
    leader = np.empty(n, dtype=np.int64)
    leader[order] = order[group_start]
    return leader


def _buckets(parts: Sequence[np.ndarray], select: Sequence[np.ndarray] | None, bucket_items: int):
    """(keys, global positions) of the selected items of `parts`, one `key % buckets` bucket at a time."""
    sizes = [len(p) for p in parts]
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    buckets = max(1, -(-int(offsets[-1]) // bucket_items))
    for bucket in range(buckets):
        keys_parts, where_parts = [np.zeros(0, np.uint64)], [np.zeros(0, np.int64)]
        for i, part in enumerate(parts):
            keys = np.asarray(part)
            mask = (keys % np.uint64(buckets)) == np.uint64(bucket)
            if select is not None:
                mask &= np.asarray(select[i], dtype=bool)
            idx = np.nonzero(mask)[0]
            keys_parts.append(keys[idx])
            where_parts.append(idx + offsets[i])
        yield np.concatenate(keys_parts), np.concatenate(where_parts)


def bucketed_first_of_group(parts: Sequence[np.ndarray], select: Sequence[np.ndarray] | None = None,
                            bucket_items: int = SORT_BUCKET_ITEMS) -> np.ndarray:
    """`first_of_group` over the concatenation of `parts` (e.g. one key array per task, memory-mapped),
    in passes over `key % buckets` so that a pass sorts at most about `bucket_items` keys.

    `select` (booleans per part) leaves items out: they get leader -1. Returns the global leader array.
    """
    leader = np.full(sum(len(p) for p in parts), -1, dtype=np.int64)
    for keys, where in _buckets(parts, select, bucket_items):
        leader[where] = where[first_of_group(keys)]
    return leader


def bucketed_duplicates(parts: Sequence[np.ndarray], select: Sequence[np.ndarray] | None = None,
                        bucket_items: int = SORT_BUCKET_ITEMS) -> np.ndarray:
    """Booleans over the concatenation of `parts`: a selected item whose key an earlier selected item has.

    One byte per item (sentences outnumber documents 20 to 1): what the sentence pass keeps in memory.
    """
    duplicate = np.zeros(sum(len(p) for p in parts), dtype=bool)
    for keys, where in _buckets(parts, select, bucket_items):
        duplicate[where] = first_of_group(keys) != np.arange(len(keys))
    return duplicate


class RowReader:
    """Rows of per-task 2-D arrays (signatures) by global document index, gathered task by task."""

    def __init__(self, parts: Sequence[np.ndarray]):
        self.parts = parts
        self.offsets = np.concatenate([[0], np.cumsum([len(p) for p in parts])]).astype(np.int64)

    def rows(self, ids: np.ndarray) -> np.ndarray:
        width = self.parts[0].shape[1] if len(self.parts) else 0
        out = np.zeros((len(ids), width), dtype=self.parts[0].dtype if len(self.parts) else np.uint32)
        task = np.searchsorted(self.offsets, ids, side="right") - 1
        for t in np.unique(task):
            sel = np.nonzero(task == t)[0]
            out[sel] = np.asarray(self.parts[t])[ids[sel] - self.offsets[t]]
        return out


def near_duplicates(band_parts: Sequence[np.ndarray], signature_parts: Sequence[np.ndarray],
                    alive: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Near-duplicate documents among the `alive` ones (global booleans).

    Returns (is_near_dup booleans, the earlier document each was matched with or -1, its Jaccard estimate).
    """
    total = len(alive)
    matched = np.full(total, -1, dtype=np.int64)
    similarity = np.zeros(total, dtype=np.float32)
    if not band_parts or band_parts[0].ndim != 2 or not total:
        return np.zeros(total, dtype=bool), matched, similarity
    offsets = np.concatenate([[0], np.cumsum([len(p) for p in band_parts])]).astype(np.int64)
    alive_parts = [alive[offsets[i]:offsets[i + 1]] for i in range(len(band_parts))]
    signatures = RowReader(signature_parts)
    for band in range(band_parts[0].shape[1]):
        columns = [np.asarray(p)[:, band] for p in band_parts]
        leader = bucketed_first_of_group(columns, alive_parts)
        candidates = np.nonzero((leader >= 0) & (leader != np.arange(total)) & (matched < 0))[0]
        for lo in range(0, len(candidates), PAIR_BLOCK):
            docs = candidates[lo:lo + PAIR_BLOCK]
            earlier = leader[docs]
            agree = (signatures.rows(docs) == signatures.rows(earlier)).mean(axis=1)
            hit = agree >= threshold
            matched[docs[hit]] = earlier[hit]
            similarity[docs[hit]] = agree[hit]
    return matched >= 0, matched, similarity
