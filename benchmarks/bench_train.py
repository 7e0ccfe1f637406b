"""Trainer overhead and model FLOP/s, against a bare Gluon loop and a large matmul in the same run.

    python benchmarks/bench_train.py [--corpus DIR] [--steps 10] [--skip-base] [--gpu]
    python benchmarks/bench_train.py --gpu-only [--gpu-micro-batch 64] [--bucket-window 64] [--json F]

Prints, for the `small` preset at seq 128 (micro batch 16):
  - a bare GluonNLP forward/backward/update loop on random ids, every sequence 128 tokens (the ceiling);
  - our Trainer on real shards with bucketing off (most batches pad to 128) and on (the default);
  - ratios to the ceiling (target >= 0.95: loading, logging, clipping and the Horovod wrapping must
    cost almost nothing), and achieved GFLOP/s against a 2048 x 2048 float32 matmul;
then BERT-base at seq 128, batch 8, float32 (GluonNLP 0.x's run_pretraining.py: 0.87 seq/s, about
59 GFLOP/s on this 2-core machine). With --gpu (or --gpu-only): BERT-base seq 128 float16 sequences/s
on GPU 0 through the real Trainer (data pipeline, loss scaling, clipping, the Horovod wrapper) on real
shards, beside the bare loop on random ids; --json writes the Trainer's figures (scripts/gpu_check.sh
runs it once per bucketing / MXNET_EXEC_BULK_EXEC_MAX_NODE_TRAIN_* setting, each in its own process).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import corpus_files, machine  # noqa: E402

from kobert_pretrain.distributed import configure_cpu_threads  # noqa: E402

configure_cpu_threads()  # the same threading defaults as `kobert-pretrain train`, for both loops
import mxnet as mx  # noqa: E402
import numpy as np  # noqa: E402

from kobert_pretrain.config import Config, ShardsConfig, VocabConfig  # noqa: E402
from kobert_pretrain.config import PRESETS  # noqa: E402
from kobert_pretrain.model import ModelShape, build_model  # noqa: E402
from kobert_pretrain.shards import build_shards  # noqa: E402
from kobert_pretrain.train import Trainer  # noqa: E402
from kobert_pretrain.vocab import build_vocab  # noqa: E402

SEQ, MASKED = 128, 20


def matmul_gflops(ctx, n=2048, repeats=10, dtype="float32") -> float:
    a = mx.nd.random.uniform(shape=(n, n), ctx=ctx, dtype=dtype)
    b = mx.nd.random.uniform(shape=(n, n), ctx=ctx, dtype=dtype)
    mx.nd.dot(a, b).wait_to_read()
    started = time.perf_counter()
    for _ in range(repeats):
        c = mx.nd.dot(a, b)
    c.wait_to_read()
    return 2 * n**3 * repeats / (time.perf_counter() - started) / 1e9


def bare_loop(shape: ModelShape, batch: int, steps: int, ctx, dtype="float32") -> float:
    """Sequences/s of the plainest Gluon pretraining loop: random ids, full length, no data pipeline."""
    mx.random.seed(0)
    net = build_model(shape)
    net.initialize(mx.init.Normal(0.02), ctx=ctx)
    if dtype == "float16":
        net.cast("float16")
    net.hybridize(static_alloc=True)
    trainer = mx.gluon.Trainer(net.collect_params(), "lamb", {"learning_rate": 1e-4,
                               "multi_precision": dtype == "float16"}, kvstore=None, update_on_kvstore=False)
    rng = np.random.default_rng(0)
    ids = mx.nd.array(rng.integers(5, shape.vocab_size, (batch, SEQ)), ctx=ctx)
    types = mx.nd.zeros((batch, SEQ), ctx=ctx)
    valid = mx.nd.full((batch,), SEQ, ctx=ctx, dtype=dtype)  # in the compute dtype, as the Trainer passes it
    positions = mx.nd.array(rng.integers(1, SEQ - 1, (batch, MASKED)), ctx=ctx)
    labels = mx.nd.array(rng.integers(5, shape.vocab_size, (batch * MASKED,)), ctx=ctx)
    nsp = mx.nd.array(rng.integers(0, 2, (batch,)), ctx=ctx)

    def step():
        with mx.autograd.record():
            _, _, nsp_logits, mlm_logits = net(ids, types, valid, positions)
            mlm = -mx.nd.pick(mx.nd.log_softmax(mlm_logits.astype("float32").reshape((-1, shape.vocab_size))),
                              labels).mean()
            loss = mlm - mx.nd.pick(mx.nd.log_softmax(nsp_logits.astype("float32")), nsp).mean()
        loss.backward()
        trainer.step(1)
        loss.wait_to_read()

    step()
    step()
    started = time.perf_counter()
    for _ in range(steps):
        step()
    mx.nd.waitall()
    return steps * batch / (time.perf_counter() - started)


def trainer_loop(cfg: Config, steps: int) -> tuple[float, float]:
    """Sequences/s and mean padded length of our Trainer's train_step on real shards."""
    trainer = Trainer(cfg, resume="none")
    try:
        trainer.train_step()
        trainer.train_step()
        loader_lengths = []
        started = time.perf_counter()
        for _ in range(steps):
            trainer.train_step()
        seconds = time.perf_counter() - started
        phase = trainer.phases[0]
        for r in range(steps):
            loader_lengths.append(phase.loader.batch_at(0, r)["input_ids"].shape[1])
        return steps * phase.global_batch_size / seconds, float(np.mean(loader_lengths))
    finally:
        trainer.close()


def make_cfg(shards: Path, run: Path, preset: str, micro: int, bucket_window: int, device: str = "cpu",
             dtype: str = "float32") -> Config:
    cfg = Config()
    cfg.model.preset = preset
    cfg.train.shards, cfg.train.out = str(shards), str(run)
    cfg.train.micro_batch_size = micro
    cfg.train.max_steps = 10_000
    cfg.train.bucket_window = bucket_window
    cfg.train.device, cfg.train.dtype = device, dtype
    cfg.log.tensorboard = False
    return cfg


def gpu_numbers(shards: Path, work: Path, micro: int, bucket_window: int, steps: int) -> dict:
    """BERT-base seq 128 float16 on GPU 0: the Trainer on real shards, and the bare loop beside it."""
    gpu = mx.gpu(0)
    base = ModelShape(*PRESETS["base"], vocab_size=8002, dropout=0.1, use_nsp=True)
    rate, mean_len = trainer_loop(make_cfg(shards, work / f"run-gpu-{bucket_window}", "base", micro, bucket_window,
                                           "gpu", "float16"), steps)
    bare = bare_loop(base, micro, steps, gpu, dtype="float16")
    return {"micro_batch": micro, "bucket_window": bucket_window, "steps": steps, "seq_per_s": rate,
            "mean_padded_length": mean_len, "bare_loop_seq_per_s": bare,
            "trainer_tflops": rate * base.train_flops_per_sequence(int(mean_len), MASKED) / 1e12,
            "fp16_matmul_tflops": matmul_gflops(gpu, 8192, 20, "float16") / 1e3,
            "bulk_fwd": os.environ.get("MXNET_EXEC_BULK_EXEC_MAX_NODE_TRAIN_FWD", "MXNet default (15)")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--skip-base", action="store_true")
    parser.add_argument("--gpu", action="store_true", help="also measure BERT-base float16 on GPU 0")
    parser.add_argument("--gpu-only", action="store_true", help="only the GPU measurement")
    parser.add_argument("--gpu-micro-batch", type=int, default=64, help="per-GPU micro batch (64: V100-32GB)")
    parser.add_argument("--bucket-window", type=int, default=64, help="the Trainer's bucketing window on GPU (1 = off)")
    parser.add_argument("--json", help="write the GPU figures to this file")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-train-"))
    try:
        print(f"machine: {machine()}")
        files = corpus_files(args.corpus)
        vocab = build_vocab(VocabConfig(input=[str(f) for f in files], out=str(work / "vocab"), vocab_size=8002,
                                        num_threads=2, input_sentence_size=300_000))
        shards = build_shards(ShardsConfig(input=[str(f) for f in files], vocab=str(vocab), out=str(work / "shards"),
                                           max_seq_length=SEQ, dupe_factor=1, workers=2))
        if not args.gpu_only:
            cpu_numbers(shards, work, args)
        if args.gpu or args.gpu_only:
            if mx.context.num_gpus() == 0:
                sys.exit("GPU: none visible to MXNet; no GPU numbers")
            numbers = gpu_numbers(shards, work, args.gpu_micro_batch, args.bucket_window, max(5, args.steps))
            print(f"\nGPU BERT-base seq 128 float16, micro batch {numbers['micro_batch']}, bucketing window "
                  f"{numbers['bucket_window']}, bulk {numbers['bulk_fwd']}: Trainer {numbers['seq_per_s']:,.1f} seq/s "
                  f"(mean pad {numbers['mean_padded_length']:.0f}, {numbers['trainer_tflops']:.1f} TFLOP/s), bare loop "
                  f"{numbers['bare_loop_seq_per_s']:,.1f} seq/s at 128; fp16 matmul {numbers['fp16_matmul_tflops']:.1f} TFLOP/s")
            if args.json:
                Path(args.json).write_text(json.dumps(numbers, indent=1) + "\n")
        else:
            print("\nGPU: not measured (pass --gpu on a GPU machine)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def cpu_numbers(shards: Path, work: Path, args: argparse.Namespace) -> None:
    ctx = mx.cpu()
    peak = matmul_gflops(ctx)
    print(f"\nfloat32 matmul 2048^3 on CPU: {peak:,.1f} GFLOP/s (the reference for FLOP/s below)")
    print(f"\n{'small preset, seq 128, micro batch 16':<52} {'seq/s':>8} {'ratio':>7} {'GFLOP/s':>9} {'of mm':>6}")
    shape = ModelShape(*PRESETS["small"], vocab_size=8002, dropout=0.1, use_nsp=True)
    flops = shape.train_flops_per_sequence(SEQ, MASKED)
    ceiling = bare_loop(shape, 16, args.steps, ctx)
    print(f"{'bare Gluon loop, random ids, all 128 tokens':<52} {ceiling:>8.2f} {1.0:>7.2f} "
          f"{ceiling * flops / 1e9:>9.1f} {ceiling * flops / 1e9 / peak:>6.0%}")
    for bw, label in ((1, "kobert-pretrain Trainer, no bucketing"), (64, "kobert-pretrain Trainer, bucketing")):
        rate, mean_len = trainer_loop(make_cfg(shards, work / f"run-{bw}", "small", 16, bw), args.steps)
        eff = ModelShape.train_flops_per_sequence(shape, int(mean_len), MASKED)
        print(f"{label + f' (mean pad {mean_len:.0f})':<52} {rate:>8.2f} {rate / ceiling:>7.2f} "
              f"{rate * eff / 1e9:>9.1f} {rate * eff / 1e9 / peak:>6.0%}")
    if not args.skip_base:
        base = ModelShape(*PRESETS["base"], vocab_size=8002, dropout=0.1, use_nsp=True)
        flops = base.train_flops_per_sequence(SEQ, MASKED)
        print(f"\n{'BERT-base, seq 128, batch 8, float32':<52} {'seq/s':>8} {'vs 0.87':>7} {'GFLOP/s':>9}")
        rate = bare_loop(base, 8, max(3, args.steps // 3), ctx)
        print(f"{'bare Gluon loop, random ids, all 128 tokens':<52} {rate:>8.2f} {rate / 0.87:>7.2f} "
              f"{rate * flops / 1e9:>9.1f}")
        rate, mean_len = trainer_loop(make_cfg(shards, work / "run-base", "base", 8, 1), max(3, args.steps // 3))
        print(f"{f'kobert-pretrain Trainer, real shards (mean pad {mean_len:.0f})':<52} {rate:>8.2f} "
              f"{rate / 0.87:>7.2f} {rate * base.train_flops_per_sequence(int(mean_len), MASKED) / 1e9:>9.1f}")


if __name__ == "__main__":
    main()
