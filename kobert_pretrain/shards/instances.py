"""Documents -> next-sentence pairs, following google-research/bert's
`create_instances_from_document` (see ../shared/REFERENCE.md), on flat arrays.

For every document: a target length of max_seq_length - 3 tokens, with
probability short_seq_prob a random length in [2, that]; sentences accumulate
into a chunk until the target is reached (or the document ends); segment A is
the chunk's first a_end sentences (a_end random in [1, len - 1]); with
probability random_next_prob (always, if the chunk has one sentence) segment B
is taken from a random other document of the pool, starting at a random
sentence, until B reaches the remaining target, and the chunk's unused
sentences are put back; otherwise B is the rest of the chunk. The pair is then
truncated to max_seq_length - 3 tokens by removing tokens from the longer
segment, each from its front or back with probability 1/2.

Because segments are runs of consecutive sentences, an instance is five
integers: A = tokens[a_start:a_end], B = tokens[b_start:b_end], and the NSP
label. Truncation is computed in closed form: the counts removed from A and B
follow from the lengths alone, and front/back coin flips are binomial draws.
"""

from __future__ import annotations

import numpy as np

from kobert_pretrain.shards.documents import TokenizedChunk


class UniformStream:
    """Uniform [0, 1) draws from a Generator, taken in blocks (a scalar Generator call costs ~1 us)."""

    def __init__(self, rng: np.random.Generator, block: int = 4096):
        self.rng = rng
        self.block = block
        self._buffer: list[float] = []

    def random(self) -> float:
        if not self._buffer:
            self._buffer = self.rng.random(self.block).tolist()
            self._buffer.reverse()
        return self._buffer.pop()

    def randint(self, low: int, high: int) -> int:
        """Uniform integer in [low, high], both included."""
        return low + int(self.random() * (high - low + 1))


def truncation_counts(len_a, len_b, max_tokens):
    """Tokens the reference loop removes from A and from B (ints, or arrays of them elementwise).

    The loop removes one token at a time from the longer segment, from B on a
    tie. So the longer one is first cut down to the other's length, then they
    alternate starting with B.
    """
    len_a, len_b = np.asarray(len_a), np.asarray(len_b)
    excess = np.maximum(len_a + len_b - max_tokens, 0)
    first_a = np.where(len_a > len_b, np.minimum(excess, len_a - len_b), 0)
    first_b = np.where(len_a > len_b, 0, np.minimum(excess, len_b - len_a))
    rest = excess - first_a - first_b
    return first_a + rest // 2, first_b + (rest + 1) // 2


def _uniforms(rng: np.random.Generator, block: int = 4096):
    """The draws of UniformStream(rng, block), as a generator: next() on it is a C call, not a Python one."""
    while True:
        yield from rng.random(block).tolist()


def create_pairs(
    chunk: TokenizedChunk,
    max_seq_length: int,
    short_seq_prob: float,
    random_next_prob: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """One pass over every document of the chunk.

    Returns int64 (num_instances, 5): a_start, a_end, b_start, b_end (token
    offsets into chunk.tokens) and the NSP label (1 = B is a random next).
    """
    max_num_tokens = max_seq_length - 3
    # Two streams from one generator: coin flips for truncation (binomial draws) apart from the
    # uniforms that make every other decision, so each stream's sequence is easy to reproduce.
    coins = np.random.default_rng(int(rng.integers(2**63)))
    # UniformStream's sequence, its randint(low, high) written out as low + int(uniform() * (high - low + 1)):
    # the loop runs once per sentence, and a Python method call per draw was a third of its time.
    uniform = _uniforms(rng).__next__
    sent_start = chunk.sent_start.tolist()
    sent_len = chunk.sent_len.tolist()
    doc_start = chunk.doc_start.tolist()
    num_docs = len(doc_start) - 1
    out: list[tuple[int, int, int, int, int]] = []
    append = out.append

    for d in range(num_docs):
        first_sent, end_sent = doc_start[d], doc_start[d + 1]
        target = max_num_tokens
        if uniform() < short_seq_prob:
            target = 2 + int(uniform() * (max_num_tokens - 1))
        chunk_first = first_sent  # first sentence of the current chunk
        chunk_len = 0
        i = first_sent
        while i < end_sent:
            chunk_len += sent_len[i]
            if i == end_sent - 1 or chunk_len >= target:
                n = i - chunk_first + 1
                a_end = 1 + int(uniform() * (n - 1)) if n >= 2 else 1
                a_last = chunk_first + a_end - 1
                a_start_tok, a_end_tok = sent_start[chunk_first], sent_start[a_last] + sent_len[a_last]
                if n == 1 or uniform() < random_next_prob:
                    is_random = 1
                    target_b = target - (a_end_tok - a_start_tok)
                    rd = d
                    for _ in range(10):
                        rd = int(uniform() * num_docs)
                        if rd != d:
                            break
                    r_first, r_end = doc_start[rd], doc_start[rd + 1]
                    j = r_first + int(uniform() * (r_end - r_first))
                    b_len = 0
                    b_first = j
                    while j < r_end:
                        b_len += sent_len[j]
                        if b_len >= target_b:
                            break
                        j += 1
                    b_last = min(j, r_end - 1)
                    b_start_tok, b_end_tok = sent_start[b_first], sent_start[b_last] + sent_len[b_last]
                    i = a_last  # put the unused sentences back
                else:
                    is_random = 0
                    b_start_tok, b_end_tok = sent_start[chunk_first + a_end], sent_start[i] + sent_len[i]
                append((a_start_tok, a_end_tok, b_start_tok, b_end_tok, is_random))
                chunk_first = i + 1
                chunk_len = 0
            i += 1
    pairs = np.asarray(out, dtype=np.int64).reshape(-1, 5)
    # Truncation, for all pairs at once. The coin flips are drawn in the reference's order (A's, then
    # B's, pair by pair, only where tokens are cut): one vectorised binomial call gives the same draws.
    cut_a, cut_b = truncation_counts(pairs[:, 1] - pairs[:, 0], pairs[:, 3] - pairs[:, 2], max_num_tokens)
    cuts = np.stack([cut_a, cut_b], axis=1).ravel()  # (2 * num_pairs,) A, B, A, B, ...
    front = np.zeros_like(cuts)
    front[cuts > 0] = coins.binomial(cuts[cuts > 0], 0.5)
    front_a, front_b = front[0::2], front[1::2]
    pairs[:, 0] += front_a
    pairs[:, 1] -= cut_a - front_a
    pairs[:, 2] += front_b
    pairs[:, 3] -= cut_b - front_b
    return pairs


MATERIALIZE_BLOCK = 8192  # instances joined at a time


def materialize(tokens: np.ndarray, pairs: np.ndarray, cls_id: int, sep_id: int, dtype=np.int32):
    """Build [CLS] A [SEP] B [SEP] for every pair.

    Returns (flat tokens of `dtype`, int64 offsets (n + 1,), len_a int32 (n,)). The rows are joined
    as bytes, one Python step per instance, MATERIALIZE_BLOCK at a time: ~6x faster than per-token
    index arrays at seq 128, and with ~2 MB of temporaries beyond the output (index arrays took ~40
    bytes a token: 200 MB for a 4 MB chunk at dupe_factor 5).
    """
    a_len = pairs[:, 1] - pairs[:, 0]
    b_len = pairs[:, 3] - pairs[:, 2]
    offsets = np.zeros(len(pairs) + 1, dtype=np.int64)
    np.cumsum(a_len + b_len + 3, out=offsets[1:])
    dtype = np.dtype(dtype)
    out = np.empty(int(offsets[-1]), dtype=dtype)
    data = tokens.astype(dtype).tobytes()
    cls, sep = np.array([cls_id], dtype).tobytes(), np.array([sep_id], dtype).tobytes()
    for lo in range(0, len(pairs), MATERIALIZE_BLOCK):
        hi = min(len(pairs), lo + MATERIALIZE_BLOCK)
        pieces = []
        for a_start, a_end, b_start, b_end in (pairs[lo:hi, :4] * dtype.itemsize).tolist():
            pieces += (cls, data[a_start:a_end], sep, data[b_start:b_end], sep)
        out[offsets[lo]:offsets[hi]] = np.frombuffer(b"".join(pieces), dtype=dtype)
    return out, offsets, a_len.astype(np.int32)
