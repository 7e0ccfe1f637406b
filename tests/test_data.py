"""The loader: rank partition, equal batch counts, padding, dynamic masks, exact resume."""

from __future__ import annotations

import numpy as np
import pytest

from kobert_pretrain.data import LoaderConfig, PretrainingLoader
from kobert_pretrain.masking import MaskingSpec
from kobert_pretrain.shards import ShardSet
from kobert_pretrain.vocab import Vocab


@pytest.fixture(scope="module")
def shard_set(debug_shards):
    return ShardSet.open(debug_shards)


@pytest.fixture(scope="module")
def spec(debug_vocab, shard_set):
    index = shard_set.index
    return MaskingSpec.from_vocab(Vocab.load(debug_vocab), index["masked_lm_prob"], index["max_predictions_per_seq"],
                                  index["whole_word_mask"])


def loader(shard_set, spec, rank=0, world=1, micro=8, bucket_window=4, prefetch=0, seed=5):
    return PretrainingLoader(shard_set, LoaderConfig(micro, seed=seed, bucket_window=bucket_window, prefetch=prefetch),
                             rank=rank, world_size=world, spec=spec)


@pytest.mark.parametrize("world", [1, 2, 4])
@pytest.mark.parametrize("bucket_window", [1, 4])
def test_ranks_are_disjoint_cover_the_epoch_and_get_equal_batches(shard_set, spec, world, bucket_window):
    loaders = [loader(shard_set, spec, r, world, bucket_window=bucket_window) for r in range(world)]
    rounds = loaders[0].rounds_per_epoch
    assert rounds == shard_set.num_instances // (world * 8)
    assert all(ld.rounds_per_epoch == rounds for ld in loaders)
    seen = []
    for ld in loaders:
        items = [ld.batch_items(0, r) for r in range(rounds)]
        assert all(len(b) == 8 for b in items)
        seen.extend(map(tuple, np.concatenate(items).tolist()))
    assert len(seen) == len(set(seen)) == rounds * world * 8
    counts = shard_set.counts
    assert all(0 <= i < counts[s] for s, i in seen)
    # The next epoch visits the instances in another order.
    other = [tuple(x) for x in loaders[0].batch_items(1, 0).tolist()]
    assert other != [tuple(x) for x in loaders[0].batch_items(0, 0).tolist()]


def test_batch_contents(shard_set, spec):
    ld = loader(shard_set, spec, micro=16)
    for r in range(5):
        items = ld.batch_items(0, r)
        batch = ld.batch_at(0, r)
        ids, seg, valid = batch["input_ids"], batch["segment_ids"], batch["valid_length"]
        assert ids.shape[1] % 8 == 0 and ids.shape[1] <= 64 and ids.shape[1] - valid.max() < 8
        assert ids.dtype == np.int32 and batch["masked_weights"].dtype == np.float32
        for row, (s, i) in enumerate(items.tolist()):
            shard = shard_set.shard(s)
            original = np.asarray(shard.tokens[shard.offsets[i]:shard.offsets[i + 1]])
            n, la = len(original), int(shard.len_a[i])
            assert valid[row] == n and (ids[row, n:] == 1).all()
            assert (seg[row, :la + 2] == 0).all() and (seg[row, la + 2:n] == 1).all() and (seg[row, n:] == 0).all()
            weights = batch["masked_weights"][row]
            pos = batch["masked_positions"][row][weights > 0]
            assert len(pos) == min(10, max(1, round(n * 0.15)))
            assert (batch["masked_ids"][row][weights > 0] == original[pos]).all()
            untouched = np.setdiff1d(np.arange(n), pos)
            assert (ids[row, untouched] == original[untouched]).all()
            assert batch["nsp_labels"][row] == shard.nsp[i]


def test_bucketing_cuts_padding(shard_set, spec):
    def padding(bw):
        ld = loader(shard_set, spec, micro=8, bucket_window=bw)
        total = 0
        for r in range(ld.rounds_per_epoch):
            b = ld.batch_at(0, r)
            total += b["input_ids"].size - int(b["valid_length"].sum())
        return total

    assert padding(16) < 0.7 * padding(1)


def test_dynamic_masks_depend_on_instance_and_epoch_not_on_world_size(shard_set, spec):
    def masks_by_instance(world, epoch):
        out = {}
        for rank in range(world):
            ld = loader(shard_set, spec, rank, world, micro=4)
            for r in range(6):
                items = ld.batch_items(epoch, r)
                batch = ld.make_batch(epoch, items)
                for row, key in enumerate(map(tuple, items.tolist())):
                    n = batch["valid_length"][row]
                    out[key] = batch["input_ids"][row, :n].tobytes()
        return out

    one, two = masks_by_instance(1, 0), masks_by_instance(2, 0)
    common = set(one) & set(two)
    assert common and all(one[k] == two[k] for k in common)
    # The same instances in epoch 1 get fresh masks.
    ld = loader(shard_set, spec, micro=4)
    changed = 0
    for r in range(6):
        items = ld.batch_items(0, r)
        a, b = ld.make_batch(0, items), ld.make_batch(1, items)
        changed += sum((a["masked_positions"][i] != b["masked_positions"][i]).any() for i in range(len(items)))
    assert changed >= 22  # of 24


@pytest.mark.parametrize("world", [1, 2, 4])
def test_state_dict_resume_gives_the_same_batches(shard_set, spec, world):
    for rank in range(world):
        reference = loader(shard_set, spec, rank, world, micro=4, prefetch=3)
        rounds = reference.rounds_per_epoch
        total = rounds + 7  # crosses an epoch boundary
        expected = [next(reference) for _ in range(total)]
        reference.close()
        for stop in (3, rounds - 2, rounds, rounds + 1):
            first = loader(shard_set, spec, rank, world, micro=4, prefetch=3)
            for _ in range(stop):
                next(first)
            state = first.state_dict()
            first.close()
            resumed = loader(shard_set, spec, rank, world, micro=4, prefetch=2)
            resumed.load_state_dict(state)
            for k in range(stop, total):
                batch = next(resumed)
                assert all((batch[key] == expected[k][key]).all() for key in batch), (world, rank, stop, k)
            resumed.close()


def test_repartition_on_world_size_change(shard_set, spec):
    old = loader(shard_set, spec, 0, 2, micro=4, bucket_window=4)
    for _ in range(5):
        next(old)
    state = old.state_dict()
    new = loader(shard_set, spec, 0, 1, micro=4, bucket_window=4)
    new.load_state_dict(state)
    # Old run: 5 rounds of 8 instances, inside its second 32-instance window -> resume past 64 instances.
    assert new.epoch == 0 and new.round == 16


def test_static_shards_give_their_stored_masks(tmp_path, demo_corpus, debug_vocab, spec):
    from kobert_pretrain.shards import build_shards

    from conftest import shards_config

    out = build_shards(shards_config(demo_corpus, debug_vocab, tmp_path / "st", "--shards.masking=static"))
    static = ShardSet.open(out)
    ld = PretrainingLoader(static, LoaderConfig(8, seed=1, prefetch=0), spec=None)
    items = ld.batch_items(0, 0)
    batch = ld.batch_at(0, 0)
    for row, (s, i) in enumerate(items.tolist()):
        shard = static.shard(s)
        m0, m1 = shard.mlm_offsets[i], shard.mlm_offsets[i + 1]
        assert (batch["masked_positions"][row, :m1 - m0] == shard.mlm_positions[m0:m1]).all()
        assert batch["masked_weights"][row].sum() == m1 - m0
    # Static masks are the same every epoch.
    again = ld.make_batch(3, items)
    assert (again["input_ids"] == batch["input_ids"]).all()


def test_too_few_instances_for_one_round(shard_set, spec):
    from kobert_pretrain.errors import UserError

    with pytest.raises(UserError, match="fewer than one round"):
        loader(shard_set, spec, 0, 4, micro=shard_set.num_instances)
