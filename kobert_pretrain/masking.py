"""Masked-LM masking, shared by static shards and the dynamic loader.

google-research/bert semantics: positions other than [CLS] and the two [SEP]
are candidates; `num_to_predict = min(max_predictions_per_seq, max(1,
round(len(tokens) * masked_lm_prob)))` candidates are chosen in random order
(whole words at a time with whole-word masking); each chosen token becomes
[MASK] 80% of the time, stays itself 10%, and becomes a random token 10% of the
time. Unlike the reference code, the random token is never a special token.

The functions are pure: the caller supplies the random numbers (one row of
uniforms per instance), so the same draws give the same masks wherever they
are computed, and tests can pass hand-made draws.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MASK_ACTION_MASK = 0.8  # u < 0.8: [MASK]
MASK_ACTION_KEEP = 0.9  # 0.8 <= u < 0.9: keep; u >= 0.9: random token
TAG_DYNAMIC_MASK = 14  # beside data.py's TAG_SHARD_ORDER, TAG_WITHIN_SHARD, TAG_BUCKETS (11-13)


@dataclass(frozen=True)
class MaskingSpec:
    masked_lm_prob: float
    max_predictions_per_seq: int
    whole_word_mask: bool
    mask_id: int
    replacement_ids: np.ndarray  # int32[n]: ids a random replacement is drawn from (no specials)
    word_start: np.ndarray  # bool[vocab_size]: piece begins a word ('▁...')

    @classmethod
    def from_vocab(cls, vocab, masked_lm_prob: float, max_predictions_per_seq: int, whole_word_mask: bool):
        from kobert_pretrain.vocab import MASK, SPECIAL_IDS

        return cls(
            masked_lm_prob=masked_lm_prob,
            max_predictions_per_seq=max_predictions_per_seq,
            whole_word_mask=whole_word_mask,
            mask_id=SPECIAL_IDS[MASK],
            replacement_ids=np.flatnonzero(~vocab.special_table()).astype(np.int32),
            word_start=vocab.word_start_table(),
        )


def instance_draws(seed: int, epoch: int, shard: int, index: int, max_seq_length: int) -> np.ndarray:
    """The uniforms that decide one instance's dynamic mask in one epoch: (3, max_seq_length)."""
    return np.random.default_rng([seed, TAG_DYNAMIC_MASK, epoch, shard, index]).random((3, max_seq_length))


def num_to_predict(lengths: np.ndarray, spec: MaskingSpec) -> np.ndarray:
    """Masked positions per instance (before capping by the candidate count)."""
    # np.round rounds half to even, as Python 3's round() in the reference implementation.
    k = np.maximum(1, np.round(lengths * spec.masked_lm_prob).astype(np.int64))
    return np.minimum(spec.max_predictions_per_seq, k)


def candidate_mask(valid_length: np.ndarray, len_a: np.ndarray, seq_len: int) -> np.ndarray:
    """bool (batch, seq_len): True where a token may be masked (not [CLS], [SEP] or padding)."""
    pos = np.arange(seq_len)[None, :]
    return (pos >= 1) & (pos < valid_length[:, None] - 1) & (pos != len_a[:, None] + 1)


def mask_batch(
    input_ids: np.ndarray,
    valid_length: np.ndarray,
    len_a: np.ndarray,
    spec: MaskingSpec,
    draws: np.ndarray,
):
    """Mask a padded batch.

    input_ids: int (batch, seq_len), padded; valid_length, len_a: int (batch,);
    draws: float (batch, 3, seq_len) uniforms in [0, 1): order keys, actions, replacements.
    Returns (masked_ids (batch, seq_len), positions (batch, P), labels (batch, P),
    weights float32 (batch, P)) with P = max_predictions_per_seq; positions are
    ascending within a row, unused slots are 0 with weight 0.
    """
    batch, seq_len = input_ids.shape
    cap = spec.max_predictions_per_seq
    keys, actions, replacements = draws[:, 0, :seq_len], draws[:, 1, :seq_len], draws[:, 2, :seq_len]
    candidates = candidate_mask(valid_length, len_a, seq_len)
    k = num_to_predict(valid_length, spec)
    if spec.whole_word_mask:
        chosen = _choose_whole_words(input_ids, candidates, keys, k, spec)
    else:
        order = np.argsort(np.where(candidates, keys, 2.0), axis=1, kind="stable")
        rank = np.empty_like(order)
        np.put_along_axis(rank, order, np.arange(seq_len)[None, :].repeat(batch, 0), axis=1)
        chosen = candidates & (rank < k[:, None])

    positions = np.zeros((batch, cap), dtype=np.int32)
    labels = np.zeros((batch, cap), dtype=np.int32)
    weights = np.zeros((batch, cap), dtype=np.float32)
    counts = chosen.sum(axis=1)
    rows, cols = np.nonzero(chosen)  # row-major: ascending positions within each row
    slot = np.arange(rows.size) - np.repeat(np.cumsum(counts) - counts, counts)
    positions[rows, slot] = cols
    labels[rows, slot] = input_ids[rows, cols]
    weights[rows, slot] = 1.0

    masked = input_ids.copy()
    act = actions[rows, cols]
    to_mask = act < MASK_ACTION_MASK
    to_random = act >= MASK_ACTION_KEEP
    masked[rows[to_mask], cols[to_mask]] = spec.mask_id
    n = spec.replacement_ids.size
    picks = np.minimum((replacements[rows, cols] * n).astype(np.int64), n - 1)
    masked[rows[to_random], cols[to_random]] = spec.replacement_ids[picks[to_random]]
    return masked, positions, labels, weights


def _choose_whole_words(input_ids, candidates, keys, k, spec):
    """Greedy whole-word selection in random word order, as the reference implementation does."""
    batch, seq_len = input_ids.shape
    starts = candidates & (spec.word_start[input_ids] | ~np.roll(candidates, 1, axis=1))
    chosen = np.zeros_like(candidates)
    for b in range(batch):
        word_pos = np.flatnonzero(starts[b])
        if word_pos.size == 0:
            continue
        cand_pos = np.flatnonzero(candidates[b])
        # Each word runs from its start to the next start (or the end of its candidate run).
        word_id = np.searchsorted(word_pos, cand_pos, side="right") - 1
        sizes = np.bincount(word_id, minlength=word_pos.size)
        taken = 0
        target = int(k[b])
        selected = []
        for w in np.argsort(keys[b, word_pos], kind="stable").tolist():
            if taken >= target:
                break
            if taken + sizes[w] > target:
                continue
            selected.append(w)
            taken += int(sizes[w])
        chosen[b, cand_pos[np.isin(word_id, selected)]] = True
    return chosen
