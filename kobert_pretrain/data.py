"""Stage 3's input: the shard reader, rank partition, batching, dynamic masking, resumable cursor.

Epoch e visits the instances in an order drawn from (seed, e): shards in a
permuted order, each shard's instances permuted. That sequence is cut into
*rounds* of world_size x micro_batch_size instances; in every round each rank
takes one micro-batch, so ranks are disjoint and all get the same number of
batches (Horovod needs equal step counts); the remainder of fewer than one
round is left out of that epoch. With bucketing, every `bucket_window` rounds
of instances are sorted by length, cut into micro-batches, and those shuffled,
which cuts padding without changing what an epoch contains.

Dynamic masks are drawn per instance from (seed, epoch, shard, index), so an
instance gets the same mask whatever the world size, rank, batch or padding.
Batches are padded to a multiple of 8 tokens. A background thread prefetches
(multiprocessing loaders hung GluonNLP under Horovod). `state_dict()` records
the batches the consumer has taken, so a resumed loader continues with exactly
the batches an uninterrupted one would have produced.
"""

from __future__ import annotations

import math
import queue
import threading
from dataclasses import dataclass

import numpy as np

from kobert_pretrain.errors import UserError
from kobert_pretrain.masking import MaskingSpec, instance_draws, mask_batch
from kobert_pretrain.plan import BatchPlan, batch_plan
from kobert_pretrain.shards.format import Shard, ShardSet
from kobert_pretrain.vocab import PAD, SPECIAL_IDS

TAG_SHARD_ORDER, TAG_WITHIN_SHARD, TAG_BUCKETS = 11, 12, 13  # TAG_DYNAMIC_MASK = 14: masking.instance_draws
PAD_MULTIPLE = 8  # tensor-core friendly sequence lengths; also bounds distinct shapes (16 at seq 128)


@dataclass
class LoaderConfig:
    micro_batch_size: int
    seed: int = 0
    bucket_window: int = 64  # rounds sorted together by length; 1 = no bucketing
    prefetch: int = 4  # batches prepared ahead by the background thread; 0 = synchronous


class PretrainingLoader:
    """Micro-batches of one rank, endlessly, epoch after epoch."""

    def __init__(self, shard_set: ShardSet, cfg: LoaderConfig, rank: int = 0, world_size: int = 1,
                 spec: MaskingSpec | None = None):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world size {world_size}")
        self.shard_set = shard_set
        self.cfg = cfg
        self.rank = rank
        self.world_size = world_size
        self.max_seq_length = shard_set.max_seq_length
        self.static = shard_set.index["masking"] == "static"
        if not self.static and spec is None:
            raise ValueError("dynamic-masking shards need a MaskingSpec")
        self.spec = spec
        self.counts = shard_set.counts
        self.round_size = world_size * cfg.micro_batch_size
        self.rounds_per_epoch = sum(self.counts) // self.round_size
        if self.rounds_per_epoch == 0:
            raise UserError(
                f"the shard set has {sum(self.counts)} instances, fewer than one round of "
                f"{world_size} rank(s) x micro batch {cfg.micro_batch_size}"
            )
        self._shards: dict[int, Shard] = {}
        self._perm_cache: dict[tuple[int, int], np.ndarray] = {}
        self.epoch = 0
        self.round = 0  # rounds of this epoch already consumed
        self._thread: threading.Thread | None = None
        self._queue: queue.Queue | None = None
        self._stop = threading.Event()

    # ---------------------------------------------------------------- order of an epoch

    def _shard(self, s: int) -> Shard:
        if s not in self._shards:
            self._shards[s] = self.shard_set.shard(s)
        return self._shards[s]

    def _within(self, epoch: int, s: int) -> np.ndarray:
        key = (epoch, s)
        if key not in self._perm_cache:
            if len(self._perm_cache) > 8:
                self._perm_cache.clear()
            rng = np.random.default_rng([self.cfg.seed, TAG_WITHIN_SHARD, epoch, s])
            self._perm_cache[key] = rng.permutation(self.counts[s])
        return self._perm_cache[key]

    def sequence(self, epoch: int, start: int, stop: int) -> np.ndarray:
        """(shard, index) of epoch positions [start, stop): int64 (stop - start, 2)."""
        order = np.random.default_rng([self.cfg.seed, TAG_SHARD_ORDER, epoch]).permutation(len(self.counts))
        parts = []
        pos = 0
        for s in order.tolist():
            n = self.counts[s]
            lo, hi = max(start, pos), min(stop, pos + n)
            if lo < hi:
                idx = self._within(epoch, s)[lo - pos:hi - pos]
                parts.append(np.stack([np.full(len(idx), s), idx], axis=1))
            pos += n
            if pos >= stop:
                break
        return np.concatenate(parts).astype(np.int64) if parts else np.zeros((0, 2), np.int64)

    def _lengths(self, items: np.ndarray) -> np.ndarray:
        lengths = np.empty(len(items), dtype=np.int64)
        for s in np.unique(items[:, 0]).tolist():
            rows = np.flatnonzero(items[:, 0] == s)
            offsets = self._shard(s).offsets
            idx = items[rows, 1]
            lengths[rows] = offsets[idx + 1] - offsets[idx]
        return lengths

    def window_batches(self, epoch: int, window: int) -> list[np.ndarray]:
        """All micro-batches of one bucketing window, in round-major order (round j, rank r at j*world + r)."""
        bw = max(1, self.cfg.bucket_window)
        first_round = window * bw
        rounds = min(bw, self.rounds_per_epoch - first_round)
        items = self.sequence(epoch, first_round * self.round_size, (first_round + rounds) * self.round_size)
        mb = self.cfg.micro_batch_size
        if bw > 1:
            items = items[np.argsort(self._lengths(items), kind="stable")]
            batches = [items[i:i + mb] for i in range(0, len(items), mb)]
            order = np.random.default_rng([self.cfg.seed, TAG_BUCKETS, epoch, window]).permutation(len(batches))
            return [batches[i] for i in order.tolist()]
        return [items[i:i + mb] for i in range(0, len(items), mb)]

    def batch_items(self, epoch: int, round_: int, rank: int | None = None) -> np.ndarray:
        """The (shard, index) pairs of one rank's micro-batch in a round."""
        rank = self.rank if rank is None else rank
        bw = max(1, self.cfg.bucket_window)
        batches = self._window_cached(epoch, round_ // bw)
        return batches[(round_ % bw) * self.world_size + rank]

    _window_key: tuple[int, int] | None = None
    _window_value: list[np.ndarray] | None = None

    def _window_cached(self, epoch: int, window: int) -> list[np.ndarray]:
        if self._window_key != (epoch, window):
            self._window_value = self.window_batches(epoch, window)
            self._window_key = (epoch, window)
        return self._window_value

    # ---------------------------------------------------------------- batches

    def make_batch(self, epoch: int, items: np.ndarray) -> dict[str, np.ndarray]:
        """Pad, segment and mask the instances `items` ((shard, index) rows) into one batch."""
        rows = []
        for s, i in items.tolist():
            shard = self._shard(s)
            lo, hi = int(shard.offsets[i]), int(shard.offsets[i + 1])
            rows.append((s, i, shard, lo, hi))
        lengths = np.array([hi - lo for *_, lo, hi in rows], dtype=np.int64)
        seq_len = min(self.max_seq_length, -(-int(lengths.max()) // PAD_MULTIPLE) * PAD_MULTIPLE)
        batch = len(rows)
        input_ids = np.full((batch, seq_len), SPECIAL_IDS[PAD], dtype=np.int32)
        segment_ids = np.zeros((batch, seq_len), dtype=np.int32)
        len_a = np.empty(batch, dtype=np.int64)
        nsp = np.empty(batch, dtype=np.int32)
        for r, (s, i, shard, lo, hi) in enumerate(rows):
            n = hi - lo
            input_ids[r, :n] = shard.tokens[lo:hi]
            len_a[r] = shard.len_a[i]
            segment_ids[r, len_a[r] + 2:n] = 1
            nsp[r] = shard.nsp[i]
        cap = self.shard_set.index["max_predictions_per_seq"]
        if self.static:
            positions = np.zeros((batch, cap), dtype=np.int32)
            labels = np.zeros((batch, cap), dtype=np.int32)
            weights = np.zeros((batch, cap), dtype=np.float32)
            for r, (s, i, shard, *_) in enumerate(rows):
                m0, m1 = int(shard.mlm_offsets[i]), int(shard.mlm_offsets[i + 1])
                positions[r, :m1 - m0] = shard.mlm_positions[m0:m1]
                labels[r, :m1 - m0] = shard.mlm_labels[m0:m1]
                weights[r, :m1 - m0] = 1.0
        else:
            draws = np.stack([instance_draws(self.cfg.seed, epoch, s, i, self.max_seq_length) for s, i, *_ in rows])
            input_ids, positions, labels, weights = mask_batch(input_ids, lengths, len_a, self.spec, draws)
        return {
            "input_ids": input_ids,
            "segment_ids": segment_ids,
            "valid_length": lengths.astype(np.int32),
            "masked_positions": positions.astype(np.int32),
            "masked_ids": labels.astype(np.int32),
            "masked_weights": weights,
            "nsp_labels": nsp,
        }

    def batch_at(self, epoch: int, round_: int) -> dict[str, np.ndarray]:
        return self.make_batch(epoch, self.batch_items(epoch, round_))

    # ---------------------------------------------------------------- iteration and cursor

    def _positions(self, epoch: int, round_: int):
        while True:
            yield epoch, round_
            round_ += 1
            if round_ == self.rounds_per_epoch:
                epoch, round_ = epoch + 1, 0

    def _produce(self, epoch: int, round_: int, out: queue.Queue, stop: threading.Event) -> None:
        try:
            for e, r in self._positions(epoch, round_):
                item = self.batch_at(e, r)
                while not stop.is_set():
                    try:
                        out.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
        except BaseException as e:  # surfaced in the consumer's thread
            out.put(e)

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        if self.cfg.prefetch <= 0:
            batch = self.batch_at(self.epoch, self.round)
        else:
            if self._thread is None:
                self._queue = queue.Queue(maxsize=self.cfg.prefetch)
                self._stop = threading.Event()
                self._thread = threading.Thread(target=self._produce, args=(self.epoch, self.round, self._queue,
                                                self._stop), daemon=True, name="loader-prefetch")
                self._thread.start()
            batch = self._queue.get()
            if isinstance(batch, BaseException):
                raise batch
        self.round += 1
        if self.round == self.rounds_per_epoch:
            self.epoch, self.round = self.epoch + 1, 0
        return batch

    def close(self) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None

    def state_dict(self) -> dict:
        return {
            "epoch": self.epoch,
            "round": self.round,
            "seed": self.cfg.seed,
            "world_size": self.world_size,
            "micro_batch_size": self.cfg.micro_batch_size,
            "bucket_window": self.cfg.bucket_window,
            "num_instances": sum(self.counts),
        }

    def load_state_dict(self, state: dict) -> None:
        """Continue after the batches recorded in `state`.

        With the same world size, micro batch and bucketing window this is exact.
        With another world size or micro batch, the cursor is re-partitioned: the new
        run starts at the first round whose instances lie past the bucketing window the
        old run was in, so at most one window of this epoch is skipped, none repeated.
        """
        if state["seed"] != self.cfg.seed or state["num_instances"] != sum(self.counts):
            raise UserError("the data cursor belongs to another shard set or seed")
        self.close()
        self.epoch = int(state["epoch"])
        same = (state["world_size"], state["micro_batch_size"], state["bucket_window"]) == (
            self.world_size, self.cfg.micro_batch_size, self.cfg.bucket_window)
        if same:
            self.round = int(state["round"])
            return
        old_round_size = state["world_size"] * state["micro_batch_size"]
        old_bw = max(1, state["bucket_window"])
        consumed = math.ceil(state["round"] / old_bw) * old_bw * old_round_size  # epoch positions passed
        bw = max(1, self.cfg.bucket_window)
        new_round = math.ceil(consumed / (bw * self.round_size)) * bw
        if new_round >= self.rounds_per_epoch:
            self.epoch, self.round = self.epoch + 1, 0
        else:
            self.round = new_round


class Phase:
    """One training phase from `first_step` on: its shard set, batch plan for this job's ranks (see
    `plan.batch_plan`: the global batch is fixed, the micro batch at most `max_micro_batch_size`) and,
    once started, its loader."""

    def __init__(self, number: int, shard_set: ShardSet, max_micro_batch_size: int, global_batch_size: int,
                 first_step: int, world: int):
        self.number = number
        self.shard_set = shard_set
        self.max_micro_batch_size = max_micro_batch_size
        plan = batch_plan(number, shard_set.max_seq_length, max_micro_batch_size, global_batch_size, world)
        self.plan = plan if isinstance(plan, BatchPlan) else None
        self._plan_problem = plan if isinstance(plan, str) else None
        self.micro_batch_size = self.plan.micro_batch_size if self.plan else max_micro_batch_size
        self.global_batch_size = global_batch_size or max_micro_batch_size * world
        self.first_step = first_step
        self.loader: PretrainingLoader | None = None

    def open_loader(self, tc, rank: int, world: int, spec: MaskingSpec | None) -> PretrainingLoader:
        """This phase's loader for `rank` of `world` (opened on first use): seeded from the run's seed and the
        phase number, with the `train` config's bucketing and prefetch."""
        if self.loader is None:
            self.loader = PretrainingLoader(
                self.shard_set, LoaderConfig(self.micro_batch_size, seed=tc.seed + 1000 * self.number,
                                             bucket_window=tc.bucket_window, prefetch=tc.prefetch),
                rank=rank, world_size=world, spec=spec)
        return self.loader

    def close_loader(self) -> None:
        if self.loader is not None:
            self.loader.close()
            self.loader = None

    def accumulation(self, world: int) -> int:
        assert self.plan is not None and self.plan.ranks == world, "the phase was planned for another world size"
        return self.plan.accumulation

    def problems(self, max_length: int, world: int) -> list[str]:
        """What keeps this phase from running on a model of `max_length` positions with `world` ranks."""
        seq, global_batch = self.shard_set.max_seq_length, self.global_batch_size
        problems = []
        if max_length and seq > max_length:
            problems.append(f"phase {self.number} shards have max_seq_length {seq} but the model has only "
                            f"{max_length} positions (model.max_length)")
        if self._plan_problem:
            problems.append(self._plan_problem)
        if self.shard_set.num_instances < global_batch:
            problems.append(f"phase {self.number}: {self.shard_set.num_instances} instances, fewer than "
                            f"one global batch of {global_batch}")
        return problems


def plan_phases(tc, world: int, problems: list[str]) -> tuple[list[Phase], ShardSet | None]:
    """The phases of a run (`train` config `tc`, `world` ranks) and its eval shard set (or None).

    Phase 2 and eval shards must have phase 1's vocabulary; what is wrong with them is appended
    to `problems` (reported with every other set-up problem), phase 1's own errors are raised.
    """
    def open_set(path, what, **expect):
        try:
            return ShardSet.open(path, **expect)
        except UserError as e:
            problems.append(f"{what}: {e}")
            return None

    first = ShardSet.open(tc.shards)
    vocab_sha = first.index["vocab_sha256"]
    phases = [Phase(1, first, tc.micro_batch_size, tc.global_batch_size, 0, world)]
    if tc.phase2_shards and tc.phase2_start_step:
        second = open_set(tc.phase2_shards, "train.phase2_shards", vocab_sha256=vocab_sha)
        micro2 = tc.phase2_micro_batch_size or tc.micro_batch_size
        global2 = tc.phase2_global_batch_size or (tc.global_batch_size or micro2 * world)
        if second is not None:
            phases.append(Phase(2, second, micro2, global2, tc.phase2_start_step, world))
    eval_set = open_set(tc.eval_shards, "train.eval_shards", vocab_sha256=vocab_sha) if tc.eval_shards else None
    return phases, eval_set


def phase_for(phases: list[Phase], step: int) -> Phase:
    """The phase that step `step` (0-based) reads from."""
    phase = phases[0]
    for candidate in phases[1:]:
        if step >= candidate.first_step:
            phase = candidate
    return phase
