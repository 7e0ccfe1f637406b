"""Checkpoint save/load time and size for BERT-base, against writing the same bytes with numpy.

    python benchmarks/bench_checkpoint.py [--preset base] [--dir /path/on/the/run/disk]

The checkpoint is what `kobert-pretrain train` writes: Gluon parameters, LAMB optimizer states,
state.json, sha256 of every file, fsync, meta.json last, rename. The baseline writes the same
arrays (parameters and both optimizer moments) with `np.save` and one fsync per file, then reads
them back with `np.load`. Load is measured on a warm page cache for both.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import machine  # noqa: E402

from kobert_pretrain.distributed import configure_cpu_threads  # noqa: E402

configure_cpu_threads()
import mxnet as mx  # noqa: E402
import numpy as np  # noqa: E402

from kobert_pretrain.checkpoint import CheckpointManager  # noqa: E402
from kobert_pretrain.config import PRESETS  # noqa: E402
from kobert_pretrain.model import ModelShape, build_model  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="base", choices=sorted(PRESETS))
    parser.add_argument("--dir", help="where to write (default: a temporary directory)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-ckpt-", dir=args.dir))
    try:
        print(f"machine: {machine()}")
        shape = ModelShape(*PRESETS[args.preset], vocab_size=8002, dropout=0.1, use_nsp=True)
        net = build_model(shape)
        net.initialize(mx.init.Normal(0.02))
        from kobert_pretrain.train_state import load_optimizer_states, save_optimizer_states

        trainer = mx.gluon.Trainer(net.collect_params(), "lamb", {"learning_rate": 1e-4}, kvstore=None,
                                   update_on_kvstore=False)
        ids = mx.nd.ones((1, 8))
        with mx.autograd.record():
            out = net(ids, ids * 0, mx.nd.array([8]), mx.nd.zeros((1, 1)))
            loss = sum(o.sum() for o in out)
        loss.backward()
        trainer.step(1)
        mx.nd.waitall()
        params = {k: v.data().asnumpy() for k, v in net._collect_params_with_prefix().items()}
        n_params = sum(a.size for a in params.values())
        print(f"model: {args.preset}, {n_params:,} parameters")

        manager = CheckpointManager(work / "run", keep_last=1)

        def write(tmp: Path) -> None:
            net.save_parameters(str(tmp / "model.params"))
            save_optimizer_states(trainer, tmp)

        started = time.perf_counter()
        path = manager.save(1, write, {"step": 1})
        save_s = time.perf_counter() - started
        size = sum(f.stat().st_size for f in path.iterdir())
        started = time.perf_counter()
        ckpt = manager.latest()
        net.load_parameters(str(ckpt.path / "model.params"))
        load_optimizer_states(trainer, ckpt.path, mx.cpu())
        mx.nd.waitall()
        load_s = time.perf_counter() - started

        # Baseline: the same arrays (parameters + 2 moments) with plain numpy.
        arrays = list(params.values()) * 3
        raw = work / "raw"
        raw.mkdir()
        started = time.perf_counter()
        for i, a in enumerate(arrays):
            with open(raw / f"{i}.npy", "wb") as f:
                np.save(f, a)
                f.flush()
                os.fsync(f.fileno())
        raw_save_s = time.perf_counter() - started
        raw_size = sum(f.stat().st_size for f in raw.iterdir())
        started = time.perf_counter()
        for i in range(len(arrays)):
            np.load(raw / f"{i}.npy")
        raw_load_s = time.perf_counter() - started

        print(f"\n{'':<34} {'seconds':>8} {'MB':>8} {'MB/s':>8} {'ratio':>6}")
        print(f"{'numpy save + fsync (baseline)':<34} {raw_save_s:>8.2f} {raw_size / 1e6:>8.0f} "
              f"{raw_size / 1e6 / raw_save_s:>8.0f} {1.0:>6.2f}")
        print(f"{'checkpoint save (atomic, sha256)':<34} {save_s:>8.2f} {size / 1e6:>8.0f} "
              f"{size / 1e6 / save_s:>8.0f} {save_s / raw_save_s:>6.2f}")
        print(f"{'numpy load (baseline)':<34} {raw_load_s:>8.2f} {raw_size / 1e6:>8.0f} "
              f"{raw_size / 1e6 / raw_load_s:>8.0f} {1.0:>6.2f}")
        print(f"{'checkpoint verify + load':<34} {load_s:>8.2f} {size / 1e6:>8.0f} "
              f"{size / 1e6 / load_s:>8.0f} {load_s / raw_load_s:>6.2f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
