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
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import signal
import socket
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from kobert_pretrain import distributed
from kobert_pretrain.checkpoint import CheckpointManager
from kobert_pretrain.config import Config, ConfigError, config_hash, to_dict
from kobert_pretrain.data import LoaderConfig, PretrainingLoader
from kobert_pretrain.errors import TrainingDiverged, UserError
from kobert_pretrain.fsutil import atomic_write_json, atomic_write_text
from kobert_pretrain.masking import MaskingSpec
from kobert_pretrain.model import ModelShape, build_model, no_weight_decay
from kobert_pretrain.optim import LossScaler, learning_rate, update_scaling
from kobert_pretrain.shards import ShardSet
from kobert_pretrain.text import warn
from kobert_pretrain.vocab import Vocab

METRICS = "metrics.jsonl"
EXIT_PREEMPTED = 75  # EX_TEMPFAIL: stopped by SIGTERM/SIGUSR1 after saving a checkpoint; resume later
PREEMPT_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class Preempted(Exception):
    """Raised after the checkpoint that a SIGTERM or SIGUSR1 asked for has been written."""

    def __init__(self, signal_name: str, step: int, path):
        self.signal_name, self.step, self.path = signal_name, step, path
        super().__init__(f"{signal_name}: checkpoint of step {step} written; resume with --resume auto")


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


def _lock_run_dir(run_dir: Path):
    """An exclusive lock on RUN_DIR/.lock, held while this process trains: a second `train` into the same
    directory would interleave metrics and overwrite checkpoints. The kernel drops it when the process dies."""
    run_dir.mkdir(parents=True, exist_ok=True)
    handle = open(run_dir / ".lock", "a+", encoding="utf-8")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise UserError(f"{run_dir} is being trained by {holder}; two runs in one directory would overwrite each "
                        "other's checkpoints: wait for it, stop it, or choose another --out") from None
    except OSError as e:  # a filesystem without locks (some NFS set-ups): go on, but say so
        warn(f"cannot lock {run_dir / '.lock'} ({e.strerror or e}); make sure no other run writes there")
        return handle
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
    handle.flush()
    return handle


def _run_dir_problem(run_dir: Path) -> str | None:
    """Why `run_dir` cannot hold this run: None if it is new, empty, or an earlier run (its config.json
    written by `train`, or its checkpoints/), which this one resumes. Anything else is not ours to write in."""
    if run_dir.exists() and not run_dir.is_dir():
        return f"--out {run_dir} is a file, not a run directory"
    if not run_dir.is_dir():
        return None
    names = sorted(p.name for p in run_dir.iterdir() if p.name != ".lock")  # .lock: a run starting right now
    if not names or (run_dir / "checkpoints").is_dir():
        return None
    try:
        config = json.loads((run_dir / "config.json").read_text(encoding="utf-8"))
        if isinstance(config, dict) and {"train", "model"} <= config.keys():
            return None
    except (OSError, ValueError):
        pass
    shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
    return f"--out {run_dir} already holds files that are not a training run ({shown}); choose a new directory"


class Phase:
    """One training phase: its shards, loader and batch geometry."""

    def __init__(self, number: int, shard_set: ShardSet, micro: int, global_batch: int, first_step: int):
        self.number = number
        self.shard_set = shard_set
        self.micro = micro
        self.global_batch = global_batch
        self.first_step = first_step
        self.loader: PretrainingLoader | None = None

    def accumulation(self, world: int) -> int:
        return self.global_batch // (self.micro * world)


class Trainer:
    def __init__(self, cfg: Config, resume: str = "auto"):
        # SIGTERM/SIGUSR1 from here on, set-up included, mean "checkpoint and exit 75" (never a bare 143).
        self._preempt_signal: str | None = None
        self._lock = None
        self._signals = Trainer._Signals(self).__enter__()
        try:
            self._init(cfg, resume)
        except BaseException:
            self._release_lock()
            self._signals.__exit__(None, None, None)
            raise

    def _init(self, cfg: Config, resume: str) -> None:
        distributed.configure_cpu_threads()
        import mxnet as mx

        self.mx = mx
        self.cfg = cfg
        tc = cfg.train
        problems = [p for name in ("model", "train", "log", "checkpoint") for p in cfg.section(name).validate()]
        if not tc.shards or not tc.out:
            raise ConfigError(problems)
        # Absolute paths in the run's config.json: later stages (convert, a resume) may run elsewhere.
        for name in ("shards", "eval_shards", "phase2_shards", "vocab", "out"):
            if getattr(tc, name):
                setattr(tc, name, str(Path(getattr(tc, name)).expanduser().resolve()))
        self.dist = distributed.init()
        self.run_dir = Path(tc.out)
        run_dir_problem = _run_dir_problem(self.run_dir)
        if run_dir_problem:
            problems.append(run_dir_problem)
        self.is_root = self.dist.is_root
        world = self.dist.size

        # Data: shard sets must agree with each other, with the vocabulary and with the model.
        # Every problem is collected and reported at once, before any step runs.
        def open_set(path, what, **expect):
            try:
                return ShardSet.open(path, **expect)
            except UserError as e:
                problems.append(f"{what}: {e}")
                return None

        self.phases: list[Phase] = []
        first = ShardSet.open(tc.shards)
        vocab_sha = first.index["vocab_sha256"]
        global1 = tc.global_batch_size or tc.micro_batch_size * world
        self.phases.append(Phase(1, first, tc.micro_batch_size, global1, 0))
        if tc.phase2_shards and tc.phase2_start_step:
            second = open_set(tc.phase2_shards, "train.phase2_shards", vocab_sha256=vocab_sha)
            micro2 = tc.phase2_micro_batch_size or tc.micro_batch_size
            global2 = tc.phase2_global_batch_size or (tc.global_batch_size or micro2 * world)
            if second is not None:
                self.phases.append(Phase(2, second, micro2, global2, tc.phase2_start_step))
        self.eval_set = open_set(tc.eval_shards, "train.eval_shards", vocab_sha256=vocab_sha) if tc.eval_shards else None
        shape_fields = cfg.model.resolved()
        self.shape = ModelShape(**shape_fields, vocab_size=first.index["vocab_size"], dropout=cfg.model.dropout,
                                use_nsp=cfg.model.use_nsp)
        for phase in self.phases:
            seq = phase.shard_set.max_seq_length
            if self.shape.max_length and seq > self.shape.max_length:
                problems.append(f"phase {phase.number} shards have max_seq_length {seq} but the model has only "
                                f"{self.shape.max_length} positions (model.max_length)")
            if phase.micro > 0 and phase.global_batch % (phase.micro * world):
                problems.append(f"phase {phase.number}: global batch {phase.global_batch} is not divisible by "
                                f"micro batch {phase.micro} x {world} rank(s)")
            if phase.shard_set.num_instances < phase.global_batch:
                problems.append(f"phase {phase.number}: {phase.shard_set.num_instances} instances, fewer than "
                                f"one global batch of {phase.global_batch}")
        if self.eval_set is not None and self.shape.max_length \
                and self.eval_set.max_seq_length > self.shape.max_length:
            problems.append(f"eval shards have max_seq_length {self.eval_set.max_seq_length} > model.max_length")
        vocab_dir = tc.vocab or first.index["config"].get("vocab", "")
        vocab = None
        try:
            vocab = Vocab.load(vocab_dir)
            if vocab.sha256 != vocab_sha:
                problems.append(f"vocabulary {vocab_dir} is not the one the shards were built with (sha256 differs)")
        except UserError as e:
            problems.append(f"{e} (set --train.vocab)")
        if tc.dtype == "float16" and self._device_kind() != "gpu":
            problems.append("train.dtype=float16 needs a GPU (on CPU use float32)")
        if tc.device == "gpu" and mx.context.num_gpus() == 0:
            problems.append("train.device=gpu but MXNet sees no GPU (CPU build of mxnet, or no visible device: "
                            "check CUDA_VISIBLE_DEVICES and `kobert-pretrain doctor`)")
        if problems:
            raise ConfigError(problems, title="cannot start training")
        index = first.index
        self.spec = MaskingSpec.from_vocab(vocab, index["masked_lm_prob"], index["max_predictions_per_seq"],
                                           index["whole_word_mask"])
        self.vocab_sha = vocab_sha

        self.ctx = mx.gpu(self.dist.local_rank) if self._device_kind() == "gpu" else mx.cpu()
        self._tb = None
        lock_error = None
        if self.is_root:
            try:
                self._lock = _lock_run_dir(self.run_dir)
            except UserError as e:
                lock_error = e
        # Horovod: only rank 0 takes the lock, so every rank must learn whether it got it.
        if self.dist.enabled and self.dist.allreduce_sum(np.array([lock_error is not None]), "setup.lock")[0]:
            raise lock_error or UserError(f"{self.run_dir} is in use by another training process (see rank 0)")
        if lock_error is not None:
            raise lock_error
        self.checkpoints = CheckpointManager(self.run_dir, keep_last=cfg.checkpoint.keep_last,
                                             keep_every=cfg.checkpoint.keep_every, is_writer=self.is_root)
        self.checkpoints.remove_partial()
        self.step = 0
        self.tokens_seen = 0
        self.sequences_seen = 0
        if tc.dtype == "float16":
            self.scaler = LossScaler(tc.loss_scale, tc.loss_scale_window)
        else:  # float32 needs no scaling; non-finite gradients still skip the step
            self.scaler = LossScaler(1.0, tc.loss_scale_window, dynamic=False)
        self._pending_data_state = None
        self._last_saved_step = -1
        self._last_save_time = time.time()
        self._build_model()
        self.resumed_from = self._resume(resume)
        self._window = _Window()

    # ------------------------------------------------------------------ set-up

    def _device_kind(self) -> str:
        if self.cfg.train.device != "auto":
            return self.cfg.train.device
        return "gpu" if self.mx.context.num_gpus() > 0 else "cpu"

    def _build_model(self) -> None:
        mx, tc = self.mx, self.cfg.train
        mx.random.seed(tc.seed)
        self.net = build_model(self.shape)
        self.net.initialize(init=mx.init.Normal(0.02), ctx=self.ctx)
        # One forward pass finishes deferred shape inference before parameters are shared.
        ones = mx.nd.ones((1, 8), ctx=self.ctx)
        self.net(ones, ones * 0, mx.nd.array([8], ctx=self.ctx), mx.nd.zeros((1, 1), ctx=self.ctx))
        if tc.dtype == "float16":
            self.net.cast("float16")
        self.net.hybridize(static_alloc=True)
        params = self.net.collect_params()
        for name, p in params.items():
            p.grad_req = "add"  # gradients accumulate over micro-batches; zeroed after each step
            if no_weight_decay(name):
                p.wd_mult = 0.0
        # the gradient buffers, fixed for the trainer's life
        self._grads = [p.grad(self.ctx) for p in params.values() if p.grad_req != "null"]
        optimizer_params = {"learning_rate": tc.lr, "beta1": tc.beta1, "beta2": tc.beta2, "epsilon": tc.epsilon,
                            "wd": tc.weight_decay}
        if tc.dtype == "float16":
            optimizer_params["multi_precision"] = True
        if tc.optimizer == "bertadam":
            import gluonnlp  # noqa: F401  (registers 'bertadam')
        if self.dist.enabled:
            hvd = self.dist.hvd
            # Horovod: every rank starts from rank 0's parameters.
            hvd.broadcast_parameters(params, root_rank=0)
            # Horovod: gradients are allreduced inside the trainer (optionally fp16-compressed, grouped).
            compression = hvd.Compression.fp16 if tc.fp16_allreduce else hvd.Compression.none
            self.trainer = hvd.DistributedTrainer(params, tc.optimizer, optimizer_params,
                                                  compression=compression, num_groups=tc.allreduce_groups)
            if os.environ.get("KOBERT_HOROVOD_AVERAGE") == "1":
                # Horovod: average inside the allreduce, as builds with NCCL >= 2.10 do. Lets the CPU
                # tests exercise that path of the clipping arithmetic (optim.update_scaling).
                self.trainer._average_in_framework = False
                self.trainer._scale = 1.0
                self.trainer._postscale_factor = 1.0
            self.grads_averaged = not self.trainer._average_in_framework
        else:
            self.trainer = mx.gluon.Trainer(params, tc.optimizer, optimizer_params, kvstore=None,
                                            update_on_kvstore=False)
            self.grads_averaged = False

    def _resume(self, resume: str):
        ckpt = self.checkpoints.resolve(resume)
        if ckpt is None:
            if self.is_root:
                self._truncate_metrics(0)  # a run killed before its first checkpoint starts over
            return None
        state = ckpt.training_state()
        problems = self._resume_problems(state)
        if problems:
            raise UserError(f"cannot resume {self.run_dir} from {ckpt.path.name}: " + "; ".join(problems))
        try:
            self.net.load_parameters(str(ckpt.path / "model.params"), ctx=self.ctx, cast_dtype=True,
                                     dtype_source="current")
            load_optimizer_states(self.trainer, ckpt.path, self.ctx)
        except (self.mx.base.MXNetError, KeyError, ValueError, TypeError, AssertionError) as e:
            first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise UserError(f"checkpoint {ckpt.path} passes its checksums but cannot be loaded "
                            f"({first_line[:200]}); resume from an earlier one with --resume PATH") from None
        self.step = state["step"]
        self._last_saved_step = self.step
        self.tokens_seen = state["tokens_seen"]
        self.sequences_seen = state["sequences_seen"]
        self.scaler.load_state_dict(state["loss_scaler"])
        self._pending_data_state = (state["phase"], state["data"])
        if self.is_root:
            self._truncate_metrics(self.step)
        return ckpt

    def _resume_problems(self, state: dict) -> list[str]:
        """What makes this run not a continuation of the checkpoint's (checked before anything is written)."""
        tc = self.cfg.train
        saved = state["config"].get("train", {})
        now = asdict(self.shape)
        problems = []
        if state["vocab_sha256"] != self.vocab_sha:
            problems.append("it was trained with another vocabulary (shards built with another vocab)")
        differing = [f"model.{k} {v} (checkpoint) vs {now.get(k)} (now)"
                     for k, v in state["model_shape"].items() if now.get(k) != v]
        if differing:
            problems.append("the model differs: " + ", ".join(differing))
        for phase, fingerprint in zip(self.phases, state["shards"]):
            if phase.shard_set.index["fingerprint"] != fingerprint:
                which = "train.shards" if phase.number == 1 else "train.phase2_shards"
                was = saved.get("shards" if phase.number == 1 else "phase2_shards", "?")
                problems.append(f"{which} is another shard set than the one it was trained on ({was})")
        if saved.get("seed", tc.seed) != tc.seed:
            problems.append(f"train.seed {tc.seed} vs {saved['seed']} (the seed fixes data order and masks)")
        if saved.get("optimizer", tc.optimizer) != tc.optimizer:
            problems.append(f"train.optimizer {tc.optimizer} vs {saved['optimizer']} "
                            "(its moments do not carry over)")
        if state["step"] > tc.max_steps:
            problems.append(f"it is at step {state['step']}, past train.max_steps={tc.max_steps}; "
                            "raise max_steps to train further")
        return problems

    def _truncate_metrics(self, step: int) -> None:
        """Drop metrics of steps after the checkpoint: the resumed run logs them again."""
        path = self.run_dir / METRICS
        if not path.exists():
            return
        keep = []
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue  # a line cut short when the previous run was killed
            if record.get("step", 0) <= step:
                keep.append(line)
        atomic_write_text(path, "".join(ln + "\n" for ln in keep))

    def _phase_for(self, step: int) -> Phase:
        phase = self.phases[0]
        for candidate in self.phases[1:]:
            if step >= candidate.first_step:
                phase = candidate
        return phase

    def _loader(self, phase: Phase) -> PretrainingLoader:
        if phase.loader is None:
            for other in self.phases:
                if other.loader is not None:
                    other.loader.close()
                    other.loader = None
            tc = self.cfg.train
            phase.loader = PretrainingLoader(
                phase.shard_set, LoaderConfig(phase.micro, seed=tc.seed + 1000 * phase.number,
                                              bucket_window=tc.bucket_window, prefetch=tc.prefetch),
                rank=self.dist.rank, world_size=self.dist.size, spec=self.spec)
            pending = self._pending_data_state
            if pending and pending[0] == phase.number and pending[1] is not None:
                phase.loader.load_state_dict(pending[1])
                self._pending_data_state = None
        return phase.loader

    # ------------------------------------------------------------------ the loop

    def run(self, until: int | None = None) -> None:
        """Train to max_steps, or stop (with a checkpoint) after step `until`; the schedule still
        targets max_steps, so a later resume continues the same run."""
        tc = self.cfg.train
        stop = min(tc.max_steps, until if until is not None else tc.max_steps)
        self._log_start()
        while self.step < stop:
            metrics = self.train_step()
            self.step += 1
            self._log_step(metrics)
            if self._eval_due():
                self.evaluate()
            preempt, save_now = self._agree_on_stop_and_save()
            if preempt or save_now:
                path = self.save()
                if preempt:
                    raise Preempted(self._preempt_signal or "a signal on another rank", self.step, path)
        if self.step == tc.max_steps and self.eval_set is not None and not self._eval_due():
            self.evaluate()
        if self._last_saved_step != self.step:
            self.save()

    def train_step(self) -> dict:
        """One optimizer step: `accumulation` micro-batches per rank, allreduce, clip, update."""
        mx, tc = self.mx, self.cfg.train
        phase = self._phase_for(self.step)
        loader = self._loader(phase)
        batches = [next(loader) for _ in range(phase.accumulation(self.dist.size))]
        local = np.array([sum(float(b["masked_weights"].sum()) for b in batches),
                          sum(float(b["valid_length"].sum()) for b in batches)])
        masked_total, tokens_total = self.dist.allreduce_sum(local, name="step.counts")
        sequences_total = phase.global_batch
        mx.random.seed(step_seed(tc.seed, self.step, self.dist.rank))
        scale = self.scaler.scale
        sums = None
        for batch in batches:
            out = self._forward_backward(batch, masked_total, sequences_total, scale)
            sums = out if sums is None else [a + b for a, b in zip(sums, out)]
        # Horovod: allreduce the accumulated gradients (summed or averaged, see optim.update_scaling).
        self.trainer.allreduce_grads()
        held_norm = self._grad_norm()
        scaling = update_scaling(held_norm, self.dist.size, self.grads_averaged, scale, tc.clip_grad_norm)
        lr = learning_rate(self.step, tc.lr, tc.warmup_steps, tc.max_steps, tc.decay, tc.decay_power, tc.end_lr)
        if self.scaler.update(math.isfinite(held_norm)):
            self.trainer.set_learning_rate(lr)
            self.trainer.update(scaling.batch_size)
        else:
            self._skipped(scale)
        # one multi-array reset per dtype instead of one operator per parameter
        self.mx.nd.reset_arrays(*self._grads, num_arrays=len(self._grads))
        self.tokens_seen += int(tokens_total)
        self.sequences_seen += sequences_total
        return {"sums": sums, "lr": lr, "grad_norm": scaling.true_norm, "tokens": tokens_total,
                "sequences": sequences_total, "phase": phase.number}

    def _skipped(self, scale: float) -> None:
        """A step with non-finite gradients was skipped (same decision on every rank): say so, and stop
        a run that keeps doing it rather than burn GPU days on a diverged model."""
        limit = self.cfg.train.max_skipped_steps
        run = self.scaler.consecutive_skipped
        if self.is_root:
            print(f"train: step {self.step + 1}: non-finite gradients (loss scale {scale:g}): step skipped, "
                  f"weights unchanged; loss scale now {self.scaler.scale:g}", file=sys.stderr, flush=True)
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
            mlm_sum, mlm_correct, nsp_sum, nsp_correct = self._losses(nd)
            loss = mlm_sum / masked_total
            if self.shape.use_nsp:
                loss = loss + nsp_sum / sequences_total
            loss = loss * scale
        loss.backward()
        return [mlm_sum.detach(), mlm_correct, nsp_sum.detach(), nsp_correct, nd["masked_weights"].sum()]

    def _losses(self, nd):
        """Summed MLM / NSP cross-entropy and correct counts of one batch."""
        mx = self.mx
        # valid_length builds the attention mask, which is added to scores of the compute dtype
        outputs = self.net(nd["input_ids"], nd["segment_ids"], nd["valid_length"].astype(self.cfg.train.dtype),
                           nd["masked_positions"])
        if self.shape.use_nsp:
            _, _, nsp_logits, mlm_logits = outputs
        else:
            _, _, mlm_logits = outputs
            nsp_logits = None
        # (batch, max_predictions, vocab) -> (batch * max_predictions, vocab); fp32 for the softmax
        mlm_logits = mlm_logits.astype("float32").reshape((-1, self.shape.vocab_size))
        labels = nd["masked_ids"].reshape((-1,)).astype("float32")
        weights = nd["masked_weights"].reshape((-1,))
        log_probs = mx.nd.log_softmax(mlm_logits, axis=-1)
        mlm_ce = -mx.nd.pick(log_probs, labels, axis=-1)
        mlm_sum = (mlm_ce * weights).sum()
        mlm_correct = ((mlm_logits.argmax(axis=-1) == labels) * weights).sum().detach()
        if nsp_logits is None:
            zero = mx.nd.zeros((1,), ctx=self.ctx)
            return mlm_sum, mlm_correct, zero, zero
        nsp_logits = nsp_logits.astype("float32")
        nsp_labels = nd["nsp_labels"].astype("float32")
        nsp_ce = -mx.nd.pick(mx.nd.log_softmax(nsp_logits, axis=-1), nsp_labels, axis=-1)
        nsp_correct = (nsp_logits.argmax(axis=-1) == nsp_labels).sum().detach()
        return mlm_sum, mlm_correct, nsp_ce.sum(), nsp_correct

    def _grad_norm(self) -> float:
        mx = self.mx
        if self._grads[0].dtype == np.float32:
            # One fused operator: each gradient's sum of squares (float32), summed in float64 on the host.
            # A gradient whose norm exceeds 2^64 reads as inf and its step is skipped, as it should be.
            squares = mx.nd.multi_sum_sq(*self._grads, num_arrays=len(self._grads))
        else:
            # float16: MXNet's CPU multi_sum_sq squares in float16 (300^2 is already inf); cast each first.
            squares = mx.nd.stack(*[g.astype("float32").norm().square() for g in self._grads])
        return math.sqrt(float(squares.asnumpy().astype(np.float64).sum()))

    # ------------------------------------------------------------------ evaluation

    def _eval_due(self) -> bool:
        tc = self.cfg.train
        return self.eval_set is not None and tc.eval_interval > 0 and self.step % tc.eval_interval == 0

    def evaluate(self) -> dict:
        """MLM and NSP loss and accuracy on the held-out shards, averaged over all ranks."""
        tc = self.cfg.train
        loader = PretrainingLoader(self.eval_set, LoaderConfig(tc.micro_batch_size, seed=tc.seed, bucket_window=1,
                                                               prefetch=0),
                                   rank=self.dist.rank, world_size=self.dist.size, spec=self.spec)
        totals = np.zeros(6)
        for r in range(min(tc.eval_batches, loader.rounds_per_epoch)):
            batch = loader.batch_at(0, r)
            nd = {k: self.mx.nd.array(v, ctx=self.ctx, dtype=v.dtype) for k, v in batch.items()}
            mlm_sum, mlm_correct, nsp_sum, nsp_correct = self._losses(nd)
            totals += [mlm_sum.asscalar(), mlm_correct.asscalar(), float(batch["masked_weights"].sum()),
                       nsp_sum.asscalar(), nsp_correct.asscalar(), len(batch["nsp_labels"])]
        totals = self.dist.allreduce_sum(totals, name="eval.totals")
        record = {"kind": "eval", "step": self.step,
                  "eval_mlm_loss": totals[0] / max(1.0, totals[2]), "eval_mlm_acc": totals[1] / max(1.0, totals[2])}
        if self.shape.use_nsp:
            record.update(eval_nsp_loss=totals[3] / max(1.0, totals[5]), eval_nsp_acc=totals[4] / max(1.0, totals[5]))
        if self.is_root:
            self._write_metrics(record)
            print("eval " + " | ".join(f"{k[5:]} {v:.4f}" for k, v in record.items() if k.startswith("eval_")),
                  file=sys.stderr, flush=True)
        return record

    # ------------------------------------------------------------------ checkpoints

    def _agree_on_stop_and_save(self) -> tuple[bool, bool]:
        """All ranks agree (one tiny allreduce per step) whether to stop for a signal and whether to save.

        A signal may reach only some ranks (or one host); the save-by-time clock is rank 0's.
        """
        ck = self.cfg.checkpoint
        by_steps = ck.interval > 0 and self.step % ck.interval == 0
        by_time = self.is_root and ck.minutes > 0 and time.time() - self._last_save_time >= ck.minutes * 60
        flags = self.dist.allreduce_sum(np.array([float(self._preempt_signal is not None), float(by_time)]),
                                        name="step.flags")
        preempt = bool(flags[0] > 0)
        return preempt, preempt or by_steps or bool(flags[1] > 0)

    class _Signals:
        def __init__(self, trainer):
            self.trainer = trainer
            self.previous = {}

        def __enter__(self):
            def handler(signum, frame):
                self.trainer._preempt_signal = signal.Signals(signum).name
                print(f"train: {signal.Signals(signum).name} received: saving a checkpoint at the next step "
                      "boundary, then exiting", file=sys.stderr, flush=True)

            for sig in PREEMPT_SIGNALS:
                self.previous[sig] = signal.signal(sig, handler)
            return self

        def __exit__(self, *exc):
            for sig, previous in self.previous.items():
                signal.signal(sig, previous)


    def state_dict(self) -> dict:
        # The data cursor of the phase the next step reads from (none yet if that phase has not started).
        phase = self._phase_for(self.step)
        data = phase.loader.state_dict() if phase.loader is not None else None
        return {
            "step": self.step,
            "phase": phase.number,
            "data": data,
            "tokens_seen": self.tokens_seen,
            "sequences_seen": self.sequences_seen,
            "loss_scaler": self.scaler.state_dict(),
            "world_size": self.dist.size,
            "model_shape": asdict(self.shape),
            "vocab_sha256": self.vocab_sha,
            "shards": [p.shard_set.index["fingerprint"] for p in self.phases],
            "config": to_dict(self.cfg),
            "config_hash": config_hash(self.cfg),
            "rng": "dropout is reseeded from (seed, step, rank) before every step; data order and masks are "
                   "functions of (seed, epoch, position): no RNG state to restore",
        }

    def save(self) -> Path | None:
        state = self.state_dict()

        def write_files(tmp: Path) -> None:
            self.mx.nd.save(str(tmp / "model.params"), parameters_for_saving(self.net, self.trainer))
            save_optimizer_states(self.trainer, tmp)

        path = self.checkpoints.save(self.step, write_files, state)
        self.dist.barrier("checkpoint.saved")
        self._last_saved_step = self.step
        self._last_save_time = time.time()
        if path is not None:
            print(f"checkpoint: {path}", file=sys.stderr, flush=True)
        return path

    # ------------------------------------------------------------------ logging

    def _log_start(self) -> None:
        self._started = time.time()
        self._window.reset(self.step)
        if not self.is_root:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.run_dir / "config.json", to_dict(self.cfg))
        tc = self.cfg.train
        phase = self._phase_for(self.step)
        loader = self._loader(phase)
        accumulation = phase.accumulation(self.dist.size)
        steps_per_epoch = loader.rounds_per_epoch // accumulation
        seq = phase.shard_set.max_seq_length
        lines = [
            f"train: {self.shape.num_layers} layers x {self.shape.units} units, {self.shape.num_heads} heads, "
            f"vocab {self.shape.vocab_size}: {self.shape.parameter_count():,} parameters",
            f"train: {self.dist.size} rank(s) on {self.ctx}, {tc.dtype}, {tc.optimizer} lr {tc.lr:g} "
            f"(warm-up {tc.warmup_steps}, {tc.decay} decay), clip {tc.clip_grad_norm:g}",
            f"train: phase {phase.number}: seq {seq}, micro batch {phase.micro} x accumulation {accumulation} x "
            f"{self.dist.size} rank(s) = global batch {phase.global_batch}; up to {phase.global_batch * seq:,} "
            f"tokens per step; {steps_per_epoch:,} steps per epoch "
            f"({phase.shard_set.num_instances:,} instances)",
        ]
        if self.resumed_from is not None:
            lines.append(f"train: resumed from {self.resumed_from.path} at step {self.step}")
        print("\n".join(lines), file=sys.stderr, flush=True)

    def _log_step(self, metrics: dict) -> None:
        self._window.add(metrics)
        if self.step % self.cfg.log.interval and self.step != self.cfg.train.max_steps:
            return
        record = self._window.summarize(self.step, self.dist, self.cfg.train.max_steps, self.shape.use_nsp)
        record.update(phase=metrics["phase"], lr=metrics["lr"], grad_norm=metrics["grad_norm"],
                      loss_scale=self.scaler.scale, skipped_steps=self.scaler.skipped_steps,
                      tokens_seen=self.tokens_seen)
        if self.is_root:
            self._write_metrics(record)
            eta = record["eta_s"]
            print(f"step {self.step}/{self.cfg.train.max_steps} | mlm_loss {record['mlm_loss']:.4f} | "
                  f"nsp_loss {record['nsp_loss']:.4f} | mlm_acc {record['mlm_acc']:.3f} | lr {record['lr']:.3g} | "
                  f"grad_norm {record['grad_norm']:.3f} | {record['tokens_per_s']:,.0f} tok/s | "
                  f"{record['sequences_per_s']:,.1f} seq/s | ETA {int(eta) // 3600}:{int(eta) % 3600 // 60:02d}:"
                  f"{int(eta) % 60:02d}", file=sys.stderr, flush=True)
        self._window.reset(self.step)

    def _write_metrics(self, record: dict) -> None:
        line = json.dumps({k: _json_number(v) for k, v in record.items()}, allow_nan=False)
        with open(self.run_dir / METRICS, "a", encoding="utf-8") as f:
            f.write(line + "\n")
        self._tensorboard(record)

    def _tensorboard(self, record: dict) -> None:
        if not self.cfg.log.tensorboard:
            return
        if self._tb is None:
            # tensorboardX imports torch when it can, and torch beside Horovod's MXNet library in one
            # process segfaults (seen under horovodrun). Scalars need no torch: hide it for the import.
            hide_torch = "torch" not in sys.modules
            if hide_torch:
                sys.modules["torch"] = None
            try:
                from tensorboardX import SummaryWriter
            except ImportError:
                self.cfg.log.tensorboard = False
                return
            finally:
                if hide_torch:
                    del sys.modules["torch"]
            self._tb = SummaryWriter(str(self.run_dir / "tensorboard"))
        for key, value in record.items():
            if isinstance(value, (int, float)) and math.isfinite(value) and key not in ("step", "kind"):
                self._tb.add_scalar(key, value, record["step"])

    def close(self) -> None:
        for phase in self.phases:
            if phase.loader is not None:
                phase.loader.close()
        if self._tb is not None:
            tb, self._tb = self._tb, None
            try:
                tb.close()
            except OSError as e:  # a full disk must not hide the error that ended the run
                warn(f"could not finish the TensorBoard event file: {e.strerror or e}")
        self._release_lock()
        self._signals.__exit__(None, None, None)

    def _release_lock(self) -> None:
        if self._lock is not None:
            self._lock.close()  # closing the descriptor releases the flock
            self._lock = None


def parameters_for_saving(net, trainer) -> dict:
    """The model's parameters by Gluon's structural name, as `Block.save_parameters` writes them, except
    that float16 parameters are replaced by the optimizer's float32 master copies (multi_precision): a
    float16 run's checkpoints, exports and releases keep full-precision weights."""
    updater = trainer._updaters[0]
    arrays = {}
    for name, param in net._collect_params_with_prefix().items():
        data = param._reduce()
        if data.dtype == np.float16:
            state = updater.states.get(trainer._param2idx.get(param.name))
            master = state[0] if isinstance(state, (tuple, list)) and state else None
            if master is not None and getattr(master, "dtype", None) == np.float32 and master.shape == data.shape:
                data = master
            else:  # not updated yet: the float16 values are exact
                data = data.astype("float32")
        arrays[name] = data
    return arrays


# Optimizer states as a binary NDArray file plus a small JSON of update counters. MXNet's own
# Trainer.save_states pickles every array: 4.4 s instead of 0.4 s for BERT-base's 760 MB of moments.
# With multi_precision a state is (float32 master weight, moments), saved as nested lists.

def save_optimizer_states(trainer, directory: Path) -> None:
    import mxnet as mx

    updater = trainer._updaters[0]
    arrays, structure = {}, {}

    def flatten(key, state):
        if state is None:
            return None
        if isinstance(state, mx.nd.NDArray):
            arrays[key] = state
            return "array"
        return [flatten(f"{key}.{i}", s) for i, s in enumerate(state)]

    for index, state in updater.states.items():
        structure[str(index)] = flatten(str(index), state)
    mx.nd.save(str(directory / "optimizer.states"), arrays)
    optimizer = updater.optimizer
    atomic_write_json(directory / "optimizer.json", {
        "structure": structure,
        "num_update": optimizer.num_update,
        # per device id: {parameter index: updates} (bias correction in Adam and LAMB reads it)
        "index_update_counts": {str(device): {str(k): v for k, v in counts.items()}
                                for device, counts in optimizer._all_index_update_counts.items()},
    })


def load_optimizer_states(trainer, directory: Path, ctx) -> None:
    import mxnet as mx

    meta = json.loads((directory / "optimizer.json").read_text(encoding="utf-8"))
    arrays = mx.nd.load(str(directory / "optimizer.states")) if meta["structure"] else {}

    def rebuild(key, shape):
        if shape is None:
            return None
        if shape == "array":
            return arrays[key].as_in_context(ctx)
        return tuple(rebuild(f"{key}.{i}", s) for i, s in enumerate(shape))

    updater = trainer._updaters[0]
    updater.states = {int(k): rebuild(k, v) for k, v in meta["structure"].items()}
    updater.states_synced = dict.fromkeys(updater.states, True)
    optimizer = updater.optimizer
    optimizer.num_update = meta["num_update"]
    optimizer._all_index_update_counts = {int(device): {int(k): v for k, v in counts.items()}
                                          for device, counts in meta["index_update_counts"].items()}
    optimizer._index_update_count = optimizer._all_index_update_counts.setdefault(0, {})


def _json_number(value):
    """Plain JSON: NaN and infinities (a skipped overflow step) become null, numpy floats Python floats."""
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    return value


class _Window:
    """Sums over the steps between two log lines."""

    def reset(self, step: int) -> None:
        self.first_step = step
        self.started = time.time()
        self.sums = None
        self.tokens = 0.0
        self.sequences = 0

    def add(self, metrics: dict) -> None:
        sums = metrics["sums"]
        self.sums = sums if self.sums is None else [a + b for a, b in zip(self.sums, sums)]
        self.tokens += metrics["tokens"]
        self.sequences += metrics["sequences"]

    def summarize(self, step: int, dist, max_steps: int, use_nsp: bool) -> dict:
        local = np.array([float(x.asscalar()) for x in self.sums])  # mlm_sum, mlm_correct, nsp_sum, nsp_correct, masked
        mlm_sum, mlm_correct, nsp_sum, nsp_correct, masked = dist.allreduce_sum(local, name="log.sums")
        seconds = max(1e-9, time.time() - self.started)
        steps = step - self.first_step
        return {
            "kind": "train",
            "step": step,
            "mlm_loss": mlm_sum / max(1.0, masked),
            "mlm_acc": mlm_correct / max(1.0, masked),
            "nsp_loss": nsp_sum / max(1, self.sequences) if use_nsp else 0.0,
            "nsp_acc": nsp_correct / max(1, self.sequences) if use_nsp else 0.0,
            "tokens_per_s": self.tokens / seconds,
            "sequences_per_s": self.sequences / seconds,
            "step_s": seconds / max(1, steps),
            "eta_s": seconds / max(1, steps) * (max_steps - step),
        }
