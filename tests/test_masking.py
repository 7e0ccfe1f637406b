"""Masked-LM masking: counts, candidates, 80/10/10, whole words, exact results for hand-made draws."""

from __future__ import annotations

import numpy as np

from kobert_pretrain.masking import MaskingSpec, candidate_mask, mask_batch, num_to_predict

VOCAB = 50
SPECIAL = np.zeros(VOCAB, dtype=bool)
SPECIAL[:5] = True
# Pieces 5..29 start a word ('▁...'), 30..49 continue one.
WORD_START = np.zeros(VOCAB, dtype=bool)
WORD_START[5:30] = True


def spec(prob=0.15, cap=20, wwm=False):
    return MaskingSpec(prob, cap, wwm, mask_id=4, replacement_ids=np.flatnonzero(~SPECIAL).astype(np.int32),
                       word_start=WORD_START)


def batch_of(rows, seq_len):
    """rows: (segment A ids, segment B ids) -> padded ids, valid_length, len_a."""
    ids = np.ones((len(rows), seq_len), dtype=np.int64)
    for r, (a, b) in enumerate(rows):
        seq = [2, *a, 3, *b, 3]
        ids[r, :len(seq)] = seq
    return ids, np.array([len(a) + len(b) + 3 for a, b in rows]), np.array([len(a) for a, _ in rows])


def test_num_to_predict_rounding_and_caps():
    s = spec(0.15, 20)
    # round(len * 0.15) with half-to-even, at least 1, at most 20.
    assert num_to_predict(np.array([3, 10, 30, 50, 128, 512]), s).tolist() == [1, 2, 4, 8, 19, 20]
    assert num_to_predict(np.array([70]), s).tolist() == [10]  # 10.5 rounds to 10, as Python's round


def test_candidates_exclude_cls_sep_and_padding():
    ids, valid, len_a = batch_of([([10, 11, 12], [13, 14])], 16)
    cand = candidate_mask(valid, len_a, 16)
    assert np.flatnonzero(cand[0]).tolist() == [1, 2, 3, 5, 6]


def test_exact_result_for_hand_made_draws():
    ids, valid, len_a = batch_of([([10, 11, 12, 13, 14, 15, 16, 17], [18, 19, 20, 21, 22, 23, 24, 25, 26, 27])], 24)
    # 21 tokens -> round(3.15) = 3 predictions. Lowest keys at positions 7, 2, 12.
    draws = np.full((1, 3, 24), 0.5)
    draws[0, 0, [7, 2, 12]] = [0.01, 0.02, 0.03]
    draws[0, 1, [2, 7, 12]] = [0.10, 0.85, 0.95]  # [MASK], keep, random
    draws[0, 2, 12] = 0.0  # first replacement id: 5
    masked, positions, labels, weights = mask_batch(ids, valid, len_a, spec(), draws)
    assert positions[0, :4].tolist() == [2, 7, 12, 0]
    assert labels[0, :3].tolist() == [11, 16, 20]
    assert weights[0].tolist() == [1, 1, 1] + [0] * 17
    expected = ids.copy()
    expected[0, 2], expected[0, 12] = 4, 5
    assert (masked == expected).all()


def test_proportions_over_many_draws():
    rng = np.random.default_rng(0)
    rows = [(rng.integers(5, 50, 60).tolist(), rng.integers(5, 50, 60).tolist()) for _ in range(400)]
    ids, valid, len_a = batch_of(rows, 128)
    masked, positions, labels, weights = mask_batch(ids, valid, len_a, spec(), rng.random((400, 3, 128)))
    assert (weights.sum(axis=1) == 18).all()  # 123 tokens * 0.15 = 18.45 -> 18
    rows_idx, slots = np.nonzero(weights)
    pos = positions[rows_idx, slots]
    assert (labels[rows_idx, slots] == ids[rows_idx, pos]).all()
    new = masked[rows_idx, pos]
    total = len(new)  # 7,200 masked positions
    frac_mask = (new == 4).mean()
    frac_same = (new == labels[rows_idx, slots]).mean()
    frac_other = 1 - frac_mask - frac_same
    # 80% [MASK]; 10% kept plus the random draws that hit the original (1 in 45); the rest random.
    assert abs(frac_mask - 0.8) < 0.02 and abs(frac_same - (0.1 + 0.1 / 45)) < 0.015, (frac_mask, frac_same)
    assert abs(frac_other - 0.1 * 44 / 45) < 0.015 and total == 7200
    assert not np.isin(new[new != 4], np.arange(5)).any()  # random replacements are never special
    unmasked = np.ones_like(ids, dtype=bool)
    unmasked[rows_idx, pos] = False
    assert (masked[unmasked] == ids[unmasked]).all()


def test_positions_never_special_or_padding():
    rng = np.random.default_rng(1)
    rows = [(rng.integers(5, 50, int(rng.integers(1, 30))).tolist(),
             rng.integers(5, 50, int(rng.integers(1, 30))).tolist()) for _ in range(200)]
    ids, valid, len_a = batch_of(rows, 64)
    _, positions, _, weights = mask_batch(ids, valid, len_a, spec(cap=8), rng.random((200, 3, 64)))
    cand = candidate_mask(valid, len_a, 64)
    for r in range(200):
        chosen = positions[r][weights[r] > 0]
        assert cand[r, chosen].all() and (np.diff(chosen) > 0).all()
        assert len(chosen) == min(8, max(1, round(valid[r] * 0.15)))


def test_whole_word_masking_never_splits_a_word():
    rng = np.random.default_rng(2)
    rows = []
    for _ in range(300):
        segs = []
        for _ in range(2):
            seg = []
            for _ in range(int(rng.integers(1, 12))):  # words of 1-4 pieces
                seg.append(int(rng.integers(5, 30)))
                seg.extend(rng.integers(30, 50, int(rng.integers(0, 4))).tolist())
            segs.append(seg)
        rows.append(tuple(segs))
    ids, valid, len_a = batch_of(rows, 128)
    masked, positions, labels, weights = mask_batch(ids, valid, len_a, spec(wwm=True), rng.random((300, 3, 128)))
    cand = candidate_mask(valid, len_a, 128)
    multi_piece_words = empty_rows = 0
    for r in range(300):
        chosen = set(positions[r][weights[r] > 0].tolist())
        # As in the reference, a word that would overshoot the budget is skipped, so a short
        # instance whose words are all longer than its budget gets no prediction.
        assert len(chosen) <= min(20, max(1, round(valid[r] * 0.15)))
        empty_rows += not chosen
        # Words: a start piece plus following continuation pieces, within a segment.
        p = 1
        while p < valid[r] - 1:
            if not cand[r, p]:
                p += 1
                continue
            q = p + 1
            while q < valid[r] and cand[r, q] and not WORD_START[ids[r, q]]:
                q += 1
            word = set(range(p, q))
            assert word <= chosen or not (word & chosen), (r, word, chosen)
            multi_piece_words += len(word) > 1 and word <= chosen
            p = q
    assert multi_piece_words > 50 and empty_rows < 30


def test_same_draws_same_masks():
    rng = np.random.default_rng(3)
    rows = [(rng.integers(5, 50, 20).tolist(), rng.integers(5, 50, 20).tolist()) for _ in range(8)]
    ids, valid, len_a = batch_of(rows, 48)
    draws = rng.random((8, 3, 48))
    a = mask_batch(ids, valid, len_a, spec(), draws)
    b = mask_batch(ids, valid, len_a, spec(), draws.copy())
    assert all((x == y).all() for x, y in zip(a, b))
