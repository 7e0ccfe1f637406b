"""Stage 3: BERT pretraining with GluonNLP on MXNet, data-parallel under Horovod.

`train(cfg)` runs in one process, or in every rank of
`horovodrun -np N ... kobert-pretrain train ...`. Each optimizer step takes
`accumulation` micro-batches per rank; every rank backpropagates its share of
the *global* loss (MLM cross-entropy summed over the masked tokens of the whole
global batch divided by their number, plus NSP cross-entropy averaged over its
sequences), so N ranks with micro batch b compute the same update as one rank
with batch N*b. Gradients are then allreduced, clipped by their global norm
(see `optim.update_scaling`, correct whether Horovod summed or averaged) and
applied by LAMB or BERTAdam with a warm-up/decay schedule. Dropout is seeded
from (seed, step, rank) before every step, so a resumed run repeats an
uninterrupted one bit for bit on CPU.

The pieces: the checks before the first step (`preflight.py`), the run directory
(`run_dir.py`), log lines and metrics.jsonl (`metrics.py`), what a checkpoint
holds (`train_state.py`) and how it is written (`checkpoint.py`).
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from kobert_pretrain import distributed
from kobert_pretrain.checkpoint import CheckpointManager, SaveSchedule
from kobert_pretrain.config import Config, ConfigError, config_hash, to_dict
from kobert_pretrain.data import LoaderConfig, Phase, PretrainingLoader, phase_for
from kobert_pretrain.errors import TrainingDiverged, UserError
from kobert_pretrain.gpu import device_kind, rank_device, start_up_failure
from kobert_pretrain.grad_norm import global_norm, norm_inputs
from kobert_pretrain.heartbeat import Heartbeat
from kobert_pretrain.metrics import LossSums, MetricsLogger, masked_characters
from kobert_pretrain.model import model_for_training, pretraining_loss_sums
from kobert_pretrain.optim import LossScaler, learning_rate, optimizer_params, update_scaling
from kobert_pretrain.preflight import check_setup, config_problems
from kobert_pretrain.run_dir import EXIT_PREEMPTED, Preempted, PreemptionSignals, RunDir
from kobert_pretrain.train_state import (TrainingState, check_replicas, load_model_and_optimizer,
                                         parameters_for_saving, resume_problems, write_model_and_optimizer)

__all__ = ["EXIT_PREEMPTED", "Preempted", "Trainer", "train", "step_seed"]


def train(cfg: Config, resume: str = "auto") -> Path:
    """Train (or resume) the run in `cfg.train.out`; return the run directory."""
    trainer = Trainer(cfg, resume)
    try:
        trainer.run()
    finally:
        trainer.close()
    return Path(cfg.train.out)


def step_seed(seed: int, step: int, rank: int) -> int:
    """The MXNet RNG seed before step `step` on `rank` (dropout): a fixed function, nothing to save."""
    return (seed * 1_000_003 + step * 7919 + rank * 104_729) % (2**31 - 1)


class Trainer:
    def __init__(self, cfg: Config, resume: str = "auto"):
        # SIGTERM/SIGUSR1 from here on, set-up included, mean "checkpoint and exit 75" (never a bare 143).
        # Everything set-up acquires is released, in reverse order, by close() (or by a failing set-up).
        self._exit = contextlib.ExitStack()
        self.signals = self._exit.enter_context(PreemptionSignals())
        try:
            self._init(cfg, resume)
        except BaseException:
            self._exit.close()
            raise

    def _init(self, cfg: Config, resume: str) -> None:
        distributed.configure_runtime(distributed.planned_device(cfg.train.device), cfg.train.dtype,
                                      cfg.train.mxnet_bulk_size)
        import mxnet as mx

        self.mx = mx
        self.cfg = cfg
        tc = cfg.train
        problems = config_problems(cfg)
        if not tc.shards or not tc.out:
            raise ConfigError(problems)
        # Absolute paths in the run's config.json: later stages (convert, a resume) may run elsewhere.
        for name in ("shards", "eval_shards", "phase2_shards", "vocab", "out"):
            if getattr(tc, name):
                setattr(tc, name, str(Path(getattr(tc, name)).expanduser().resolve()))
        self.dist = distributed.init()
        # Under `launch`, a thread reports (step, phase) to its hang watchdog once a second.
        self.heartbeat = Heartbeat.from_env(self.dist.rank)
        if self.heartbeat is not None:
            self._exit.callback(self.heartbeat.close)
        self.run_dir = RunDir(tc.out)
        self._exit.callback(self.run_dir.unlock)
        self.is_root = self.dist.is_root

        # The run directory, the shard sets, the vocabulary, the model and the device: every problem is
        # collected and reported at once, before any step runs. (A CPU run never asks CUDA.)
        num_gpus = mx.context.num_gpus() if tc.device != "cpu" else 0
        setup = check_setup(cfg, self.dist.size, problems, self.run_dir, num_gpus)
        self.phases, self.eval_set, self.shape = setup.phases, setup.eval_set, setup.shape
        self._exit.callback(self._close_loaders)
        if problems:
            raise ConfigError(problems, title="cannot start training")
        self.spec = setup.spec
        self.char_lengths = setup.vocab.char_lengths()  # masked characters: the loss in bits per character
        self.vocab_sha = setup.first.index["vocab_sha256"]

        self.ctx = rank_device(device_kind(tc.device, num_gpus), self.dist.local_rank, self.dist.local_size)
        self.run_dir.lock_for_job(self.dist)
        self.checkpoints = CheckpointManager(self.run_dir, keep_last=cfg.checkpoint.keep_last,
                                             keep_every=cfg.checkpoint.keep_every, is_writer=self.is_root)
        self.checkpoints.remove_partial()
        self.metrics = MetricsLogger(self.run_dir, self.dist, tensorboard=cfg.log.tensorboard)
        self._exit.callback(self.metrics.close)
        self.step = 0
        self.tokens_seen = 0
        self.sequences_seen = 0
        self.scaler = LossScaler.for_dtype(tc.dtype, tc.loss_scale, tc.loss_scale_window)
        self._last_saved_step = -1
        self.save_schedule = SaveSchedule(cfg.checkpoint.interval, cfg.checkpoint.minutes, self.is_root)
        self._agreed_flags = (False, False)  # (pre-empt, save by time), agreed with the step's counts
        try:
            self._build_model()
            self.resumed_from = self._resume(resume)
        except mx.base.MXNetError as e:
            raise start_up_failure(e, self.ctx, self.dist.rank) or e from None
        if self.is_root:
            self.run_dir.write_config(to_dict(self.cfg))

    # ------------------------------------------------------------------ set-up

    def _build_model(self) -> None:
        tc = self.cfg.train
        self.mx.random.seed(tc.seed)
        self.net = model_for_training(self.shape, self.ctx, tc.dtype)
        params = self.net.collect_params()
        # the gradient buffers, fixed for the trainer's life
        self._grads = [p.grad(self.ctx) for p in params.values() if p.grad_req != "null"]
        self._norm_inputs = norm_inputs(self._grads, self.ctx.device_type)
        if tc.optimizer == "bertadam":
            import gluonnlp  # noqa: F401  (registers 'bertadam')
        self.gluon_trainer, self.grads_averaged = distributed.gluon_trainer(
            self.dist, params, tc.optimizer, optimizer_params(tc), tc.fp16_allreduce, tc.allreduce_groups)

    def _resume(self, resume: str):
        """Restore the checkpoint `--resume` names (None: a fresh start), the resumed phase's data cursor
        included, and drop the metrics of the steps after it: the resumed run logs them again."""
        ckpt = self.checkpoints.resolve(resume)
        if ckpt is None:
            if self.is_root:
                self.run_dir.truncate_metrics(0)  # a run killed before its first checkpoint starts over
            return None
        state = ckpt.training_state()
        problems = resume_problems(state, self.cfg.train, asdict(self.shape), self.vocab_sha,
                                   [p.shard_set.index["fingerprint"] for p in self.phases])
        if problems:
            raise UserError(f"cannot resume {self.run_dir.path} from {ckpt.path.name}: " + "; ".join(problems))
        load_model_and_optimizer(ckpt, self.net, self.gluon_trainer, self.ctx)
        self.step = state.step
        self._last_saved_step = self.step
        self.tokens_seen = state.tokens_seen
        self.sequences_seen = state.sequences_seen
        self.scaler.load_state_dict(state.loss_scaler)
        phase = phase_for(self.phases, self.step)
        if state.phase == phase.number and state.data is not None:
            self._loader(phase).load_state_dict(state.data)
        if self.is_root:
            self.run_dir.truncate_metrics(self.step)
        return ckpt

    def _loader(self, phase: Phase) -> PretrainingLoader:
        if phase.loader is None:
            self._close_loaders()  # one phase's loader at a time
        return phase.open_loader(self.cfg.train, self.dist.rank, self.dist.size, self.spec)

    def _close_loaders(self) -> None:
        for phase in self.phases:
            phase.close_loader()

    # ------------------------------------------------------------------ the loop

    def run(self, until: int | None = None) -> None:
        """Train to max_steps, or stop (with a checkpoint) after step `until`; the schedule still
        targets max_steps, so a later resume continues the same run."""
        tc = self.cfg.train
        stop = min(tc.max_steps, until if until is not None else tc.max_steps)
        self._log_start()
        self._beat("train")
        first = self.step
        while self.step < stop:
            try:
                metrics = self.train_step()
            except self.mx.base.MXNetError as e:  # out of memory at the first step is a set-up failure
                raise (start_up_failure(e, self.ctx, self.dist.rank) if self.step == first else None) or e from None
            self.step += 1
            self._beat("train")
            self._log_step(metrics)
            if self._eval_due():
                self.evaluate()
            preempt, save_now = self._agree_on_stop_and_save()
            if preempt or save_now:
                path = self.save()
                if preempt:
                    raise Preempted(self.signals.received or "a signal on another rank", self.step, path)
        if self.step == tc.max_steps and self.eval_set is not None and not self._eval_due():
            self.evaluate()
        if self._last_saved_step != self.step:
            self.save()

    def train_step(self) -> dict:
        """One optimizer step: `accumulation` micro-batches per rank, allreduce, clip, update."""
        mx, tc = self.mx, self.cfg.train
        phase = phase_for(self.phases, self.step)
        loader = self._loader(phase)
        batches = [next(loader) for _ in range(phase.accumulation(self.dist.size))]
        # One small collective per step: the counts the loss is normalised by, and the stop/save flags
        # (folded in, instead of a second allreduce after the update). It is not waited for: the global
        # masked count divides the loss on the device (bit for bit what dividing by the number does), so
        # the forward passes run while the sum travels, and the host reads it after the update. A signal
        # is acted on at the end of the step after the one during which it arrived.
        local = np.array([sum(float(b["masked_weights"].sum()) for b in batches),
                          sum(float(b["valid_length"].sum()) for b in batches),
                          float(self.signals.received is not None), float(self.save_schedule.time_due())])
        counts = self.dist.allreduce_sum_start(local, name="step.counts")
        masked_total = counts[0:1].astype("float32").as_in_context(self.ctx)  # the float32 divisor, as before
        sequences_total = phase.global_batch_size
        mx.random.seed(step_seed(tc.seed, self.step, self.dist.rank))
        scale = self.scaler.scale
        sums = None
        for batch in batches:
            out = self._forward_backward(batch, masked_total, sequences_total, scale)
            sums = out if sums is None else sums + out
        # Horovod: allreduce the accumulated gradients (summed or averaged, see optim.update_scaling).
        self.gluon_trainer.allreduce_grads()
        held_norm = self._grad_norm()
        scaling = update_scaling(held_norm, self.dist.size, self.grads_averaged, scale, tc.clip_grad_norm)
        lr = learning_rate(self.step, tc.lr, tc.warmup_steps, tc.max_steps, tc.decay, tc.decay_power, tc.end_lr)
        if self.scaler.update(math.isfinite(held_norm)):
            self.gluon_trainer.set_learning_rate(lr)
            self.gluon_trainer.update(scaling.batch_size)
        else:
            self._skipped(scale)
        # one multi-array reset per dtype instead of one operator per parameter
        self.mx.nd.reset_arrays(*self._grads, num_arrays=len(self._grads))
        _, tokens_total, preempt, by_time = counts.asnumpy()  # long arrived: the update needed the norm
        self._agreed_flags = (preempt > 0, by_time > 0)
        self.tokens_seen += int(tokens_total)
        self.sequences_seen += sequences_total
        return {"sums": sums, "lr": lr, "grad_norm": scaling.true_norm, "tokens": tokens_total,
                "phase": phase.number}

    def _skipped(self, scale: float) -> None:
        """A step with non-finite gradients was skipped (same decision on every rank): say so, and stop
        a run that keeps doing it rather than burn GPU days on a diverged model."""
        limit = self.cfg.train.max_skipped_steps
        run = self.scaler.consecutive_skipped
        self.metrics.print(f"train: step {self.step + 1}: non-finite gradients (loss scale {scale:g}): step "
                           f"skipped, weights unchanged; loss scale now {self.scaler.scale:g}")
        if limit and run >= limit:
            last = f"step {self._last_saved_step}" if self._last_saved_step > 0 else "none"
            raise TrainingDiverged(
                f"training diverged: {run} steps in a row with non-finite gradients up to step {self.step + 1} "
                f"(last checkpoint: {last}); lower train.lr or raise train.warmup_steps and resume, "
                "or raise train.max_skipped_steps")

    def _forward_backward(self, batch, masked_total, sequences_total, scale):
        mx = self.mx
        nd = {k: mx.nd.array(v, ctx=self.ctx, dtype=v.dtype) for k, v in batch.items()}
        with mx.autograd.record():
            mlm_sum, mlm_correct, nsp_sum, nsp_correct = self.losses(nd)
            loss = mlm_sum / masked_total
            if self.shape.use_nsp:
                loss = loss + nsp_sum / sequences_total
            loss = loss * scale
        loss.backward()
        return LossSums(mlm_sum.detach(), mlm_correct, nd["masked_weights"].sum(), nsp_sum.detach(), nsp_correct,
                        len(batch["valid_length"]),
                        masked_characters(self.char_lengths, batch["masked_ids"], batch["masked_weights"]))

    def losses(self, nd: dict):
        """Summed MLM / NSP cross-entropy and correct counts of one batch (see `model.pretraining_loss_sums`)."""
        return pretraining_loss_sums(self.net, nd, self.shape, self.cfg.train.dtype)

    def _grad_norm(self) -> float:
        return global_norm(self._grads, self._norm_inputs)

    # ------------------------------------------------------------------ evaluation

    def _eval_due(self) -> bool:
        tc = self.cfg.train
        return self.eval_set is not None and tc.eval_interval > 0 and self.step % tc.eval_interval == 0

    def evaluate(self) -> dict:
        """MLM and NSP loss and accuracy on the held-out shards, averaged over all ranks."""
        started = time.time()
        with self._beating("eval"):
            record = self._evaluate()
        self.metrics.exclude(time.time() - started)  # tokens/s of a log window is training speed
        return record

    def _evaluate(self) -> dict:
        tc = self.cfg.train
        loader = PretrainingLoader(self.eval_set, LoaderConfig(tc.micro_batch_size, seed=tc.seed, bucket_window=1,
                                                               prefetch=0),
                                   rank=self.dist.rank, world_size=self.dist.size, spec=self.spec)
        sums = LossSums(0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
        for r in range(min(tc.eval_batches, loader.rounds_per_epoch)):
            batch = loader.batch_at(0, r)
            nd = {k: self.mx.nd.array(v, ctx=self.ctx, dtype=v.dtype) for k, v in batch.items()}
            mlm_sum, mlm_correct, nsp_sum, nsp_correct = self.losses(nd)
            sums = sums + LossSums(float(mlm_sum.asscalar()), float(mlm_correct.asscalar()),
                                   float(batch["masked_weights"].sum()), float(nsp_sum.asscalar()),
                                   float(nsp_correct.asscalar()), len(batch["nsp_labels"]),
                                   masked_characters(self.char_lengths, batch["masked_ids"], batch["masked_weights"]))
        return self.metrics.log_eval(self.step, sums.allreduce(self.dist, name="eval.totals"), self.shape.use_nsp,
                                     self.tokens_seen, self.sequences_seen)

    # ------------------------------------------------------------------ checkpoints

    def _agree_on_stop_and_save(self) -> tuple[bool, bool]:
        """Whether to stop for a signal and whether to save after this step: the same on every rank, from
        the flags every rank contributed to this step's counts allreduce. A signal may reach only some
        ranks (or one host); the save-by-time clock is rank 0's."""
        preempt, by_time = self._agreed_flags
        self._agreed_flags = (False, False)
        return preempt, self.save_schedule.save_due(self.step, preempt, by_time)

    def training_state(self) -> TrainingState:
        # The data cursor of the phase the next step reads from (none yet if that phase has not started).
        phase = phase_for(self.phases, self.step)
        return TrainingState(
            step=self.step, phase=phase.number, data=phase.loader.state_dict() if phase.loader is not None else None,
            tokens_seen=self.tokens_seen, sequences_seen=self.sequences_seen, loss_scaler=self.scaler.state_dict(),
            world_size=self.dist.size, model_shape=asdict(self.shape), vocab_sha256=self.vocab_sha,
            shards=[p.shard_set.index["fingerprint"] for p in self.phases], config=to_dict(self.cfg),
            config_hash=config_hash(self.cfg))

    def save(self) -> Path | None:
        with self._beating("save"):
            # CPU copies on every rank: rank 0 writes them, and every rank's fingerprint is compared.
            parameters = parameters_for_saving(self.net, self.gluon_trainer)
            check_replicas(self.dist, parameters, self.step, self.metrics.print)
            path = self.checkpoints.save(self.step, lambda tmp: write_model_and_optimizer(tmp, parameters,
                                                                                         self.gluon_trainer),
                                         self.training_state().to_dict())
            self.dist.barrier("checkpoint.saved")
        self._last_saved_step = self.step
        self.save_schedule.saved()
        if path is not None:
            self.metrics.print(f"checkpoint: {path}")
        return path

    @contextlib.contextmanager
    def _beating(self, phase: str):
        """Tell the watchdog this rank is busy with `phase` (a save or an evaluation may take long)."""
        self._beat(phase)
        try:
            yield
        finally:
            self._beat("train")

    def _beat(self, phase: str) -> None:
        if self.heartbeat is not None:
            self.heartbeat.step, self.heartbeat.phase = self.step, phase

    # ------------------------------------------------------------------ logging

    def _log_start(self) -> None:
        self.metrics.reset(self.step)
        if self.is_root:
            phase = phase_for(self.phases, self.step)
            self.metrics.log_start(self.step, self.shape, self.cfg.train, phase, self.dist.size, self.ctx,
                                   self._loader(phase).rounds_per_epoch, self.resumed_from)

    def _log_step(self, metrics: dict) -> None:
        self.metrics.add(metrics["sums"], metrics["tokens"])
        if self.step % self.cfg.log.interval and self.step != self.cfg.train.max_steps:
            return
        self.metrics.log_train(self.step, self.cfg.train.max_steps, self.shape.use_nsp, phase=metrics["phase"],
                               lr=metrics["lr"], grad_norm=metrics["grad_norm"], loss_scale=self.scaler.scale,
                               skipped_steps=self.scaler.skipped_steps, tokens_seen=self.tokens_seen)

    def close(self) -> None:
        """Stop the loaders, finish TensorBoard, release the lock and restore the signal handlers."""
        self._exit.close()
