"""Shard generation speed and memory, against raw SentencePiece encoding measured in the same run.

    python benchmarks/bench_shards.py [--corpus DIR_OR_FILE] [--speed-copies 12] [--rss-copies 17]
                                      [--vocab DIR] [--skip-loader]

Speed, on ONE text file of `--speed-copies` copies of the corpus (>= 100 MB with the shared corpus),
one worker, dupe_factor 1, seq 128: raw SentencePiece encoding of the file's non-blank lines (one
process, one thread) as the baseline, measured before and after the shards runs (their mean is the
baseline; on a busy machine the two differ); `kobert-pretrain shards` with dynamic and static masking,
and with 2 workers; text tokens per second over the whole run and the ratio to the baseline, by wall
clock and by CPU time (CPU time is what other processes on a shared machine disturb least).

Memory, 1 worker, default settings (dupe_factor 5, static masks off), the CLI as a user runs it:
peak RSS of the corpus once (small shards) and of `--rss-copies` copies with
--shards.num_shards_multiple=1, so that each shard holds >= 200 MB of tokens; the peak `shards`
itself prints beside it.

Then a projection (labelled as one) for a 10 GB corpus on a 16-core node, and the loader alone.
Not a test: numbers depend on the machine and on what else runs on it (`uptime` is printed).
"""

from __future__ import annotations

import argparse
import json
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import ROOT, corpus_files, machine  # noqa: E402

from kobert_pretrain.config import ShardsConfig, VocabConfig  # noqa: E402
from kobert_pretrain.data import LoaderConfig, PretrainingLoader  # noqa: E402
from kobert_pretrain.masking import MaskingSpec  # noqa: E402
from kobert_pretrain.shards import ShardSet, build_shards  # noqa: E402
from kobert_pretrain.vocab import Vocab, build_vocab  # noqa: E402

PEAK_LINE = re.compile(r"shards: peak memory per worker ([\d,]+) MB")


def uptime() -> str:
    try:
        return "load average " + " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "load average unknown"


def cpu_seconds() -> float:
    """CPU time of this process and of the children it has waited for (the spawned workers)."""
    me, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + children.ru_utime + children.ru_stime


def raw_encoding(file: Path, vocab: Vocab) -> tuple[int, float, float]:
    """Baseline: read the file and encode every non-blank line with plain sentencepiece, one thread."""
    started, cpu = time.perf_counter(), cpu_seconds()
    lines = [ln for ln in file.read_text(encoding="utf-8", errors="replace").splitlines() if ln.strip()]
    tokens = sum(map(len, vocab.sp.encode(lines, num_threads=1)))
    return tokens, time.perf_counter() - started, cpu_seconds() - cpu


def one_file(files: list[Path], copies: int, out: Path) -> Path:
    """`copies` copies of the corpus as one file, a blank line after each input file."""
    with open(out, "wb") as f:
        for _ in range(copies):
            for path in files:
                data = path.read_bytes()
                f.write(data if data.endswith(b"\n") else data + b"\n")
                f.write(b"\n")
    return out


# Runs a command and prints its peak RSS in KiB. The command's own ru_maxrss is only right when its
# parent is small: a child spawned (vfork + exec) by this benchmark process inherits, at exec, the
# high-water mark of this process's memory (a 9 MB corpus run read 1,108 MB that way).
WRAPPER = """
import os, subprocess, sys
proc = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL)
_, status, usage = os.wait4(proc.pid, 0)
print(usage.ru_maxrss, os.waitstatus_to_exitcode(status))
"""


def peak_rss(cmd: list[str]) -> tuple[float, float, float]:
    """Run the CLI; return (its peak RSS in MB, the peak it printed, seconds)."""
    with tempfile.TemporaryFile(mode="w+") as err:
        started = time.time()
        result = subprocess.run([sys.executable, "-c", WRAPPER, *cmd], stdout=subprocess.PIPE, stderr=err,
                                text=True, cwd=ROOT)
        seconds = time.time() - started
        err.seek(0)
        text = err.read()
    maxrss_kib, returncode = map(int, result.stdout.split())
    if returncode:
        sys.exit(f"command failed: {' '.join(cmd)}\n{text}")
    printed = PEAK_LINE.search(text)
    return maxrss_kib / 1024, float(printed.group(1).replace(",", "")) if printed else float("nan"), seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", help="file or directory of .txt (default: ../shared/corpus)")
    parser.add_argument("--speed-copies", type=int, default=12, help="copies of the corpus in the one speed file")
    parser.add_argument("--rss-copies", type=int, default=17, help="copies of the corpus for the large-shard RSS run")
    parser.add_argument("--vocab", help="an existing vocabulary directory (default: train 8,002 pieces)")
    parser.add_argument("--work", help="scratch directory (default: a temporary one, removed at the end)")
    parser.add_argument("--skip-speed", action="store_true", help="only the memory runs (and the loader)")
    parser.add_argument("--skip-loader", action="store_true")
    parser.add_argument("--loader-batches", type=int, default=400)
    args = parser.parse_args()

    files = corpus_files(args.corpus)
    size_mb = sum(f.stat().st_size for f in files) / 1e6
    work = Path(args.work or tempfile.mkdtemp(prefix="bench-shards-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        print(f"machine: {machine()}; {uptime()} at the start")
        print(f"corpus: {len(files)} files, {size_mb:.1f} MB")
        vocab_dir = Path(args.vocab) if args.vocab else build_vocab(VocabConfig(
            input=[str(f) for f in files], out=str(work / "vocab"), vocab_size=8002, num_threads=2,
            input_sentence_size=300_000))
        vocab = Vocab.load(vocab_dir)

        if args.skip_speed:
            one_worker_mb_s = scaling = float("nan")
        else:
            one_worker_mb_s, scaling = speed_benchmark(files, args.speed_copies, vocab, vocab_dir, work)

        # ---- peak memory, 1 worker, default settings, the CLI
        many = work / "many"
        many.mkdir()
        for k in range(args.rss_copies):
            for n, f in enumerate(files):
                shutil.copyfile(f, many / f"{k:03d}-{n:03d}.txt")
        base_cmd = [sys.executable, "-m", "kobert_pretrain", "shards", "--vocab", str(vocab_dir), "--workers", "1"]
        print(f"\n{'peak RSS, 1 worker, dupe_factor 5':<52} {'RSS MB':>7} {'printed':>8} {'seconds':>8}")
        figures = {}
        for label, inputs, extra in (
                ("corpus x1", [str(f) for f in files], []),
                (f"corpus x{args.rss_copies}", [str(many)], ["--shards.num_shards_multiple=1"])):
            out = work / f"rss-{label.split()[-1]}"
            cmd = base_cmd + ["--out", str(out), *extra]
            for i in inputs:
                cmd += ["--input", i]
            rss, printed, seconds = peak_rss(cmd)
            index = json.loads((out / "index.json").read_text())
            shard_mb = max(s["num_tokens"] for s in index["shards"]) * 2 / 1e6
            text_mb = index["input_bytes"] / 1e6
            figures[label] = (rss, seconds, text_mb, shard_mb)
            text = f"{label}: {text_mb:.0f} MB text, {len(index['shards'])} shards <= {shard_mb:.0f} MB"
            print(f"{text:<52} {rss:>7.0f} {printed:>8.0f} {seconds:>8.1f}")
            shutil.rmtree(out)
        small, large = figures["corpus x1"], figures[f"corpus x{args.rss_copies}"]
        print(f"{'large shards / small shards':<52} {large[0] / small[0]:>7.2f}x")

        # ---- projection
        dupe5_mb_s = large[2] / large[1]
        efficiency = scaling / 2
        print("\nPROJECTION (not measured): a 10 GB corpus on a 16-core node, 16 workers, from the per-worker"
              f" figures above and the measured 2-worker efficiency ({efficiency:.0%} per worker):")
        for label, mb_s in (("dupe_factor 1", one_worker_mb_s), ("dupe_factor 5 (default)", dupe5_mb_s)):
            minutes = 10_000 / (mb_s * 16 * efficiency) / 60
            print(f"  {label}: {mb_s:.1f} MB of text/s per worker -> about {minutes:.0f} min")
        print(f"  memory: 16 x {large[0]:.0f} MB = {16 * large[0] / 1024:.1f} GB at most (peak per worker with "
              f"{large[3]:.0f} MB shards; each worker's peak is one chunk or one block, not the corpus)")

        if not args.skip_loader:
            loader_benchmark(vocab, vocab_dir, files, work, args.loader_batches)
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)


def speed_benchmark(files: list[Path], copies: int, vocab: Vocab, vocab_dir: Path, work: Path) -> tuple[float, float]:
    """The speed runs; returns (MB of text per second of one worker, 2 workers / 1 worker)."""
    big = one_file(files, copies, work / "one.txt")
    big_mb = big.stat().st_size / 1e6
    print(f"\nspeed: one file of {copies} copies, {big_mb:.0f} MB; dupe_factor 1, seq 128")
    raw_encoding(files[0], vocab)  # warm the processor
    raw = [raw_encoding(big, vocab)]
    runs = []
    for masking, workers in (("dynamic", 1), ("static", 1), ("dynamic", 2)):
        out = work / f"speed-{masking}-w{workers}"
        started, cpu = time.perf_counter(), cpu_seconds()
        build_shards(ShardsConfig(input=[str(big)], vocab=str(vocab_dir), out=str(out), dupe_factor=1,
                                  masking=masking, workers=workers))
        runs.append((masking, workers, time.perf_counter() - started, cpu_seconds() - cpu,
                     ShardSet.open(out).index["text_tokens"]))
        shutil.rmtree(out)
    raw.append(raw_encoding(big, vocab))
    raw_tokens = raw[0][0]
    raw_rate = raw_tokens / (sum(r[1] for r in raw) / 2)
    raw_cpu_rate = raw_tokens / (sum(r[2] for r in raw) / 2)
    print(f"{'what':<46} {'tokens/s':>11} {'ratio':>6} {'CPU tok/s':>11} {'ratio':>6}")
    print(f"{'raw sentencepiece encode (1 process), before':<46} {raw_tokens / raw[0][1]:>11,.0f} {'':>6} "
          f"{raw_tokens / raw[0][2]:>11,.0f}")
    print(f"{'raw sentencepiece encode (1 process), after':<46} {raw_tokens / raw[1][1]:>11,.0f} {'':>6} "
          f"{raw_tokens / raw[1][2]:>11,.0f}")
    print(f"{'raw sentencepiece encode, mean (baseline)':<46} {raw_rate:>11,.0f} {1.0:>6.2f} "
          f"{raw_cpu_rate:>11,.0f} {1.0:>6.2f}")
    rates = {}
    for masking, workers, seconds, cpu, text_tokens in runs:
        rate, cpu_rate = text_tokens / seconds, text_tokens / cpu
        rates[masking, workers] = rate
        label = f"kobert-pretrain shards, {masking}, {workers} worker(s)"
        cpu_text = f"{cpu_rate:>11,.0f} {cpu_rate / raw_cpu_rate:>6.2f}" if workers == 1 else f"{'':>11} {'':>6}"
        print(f"{label:<46} {rate:>11,.0f} {rate / raw_rate:>6.2f} {cpu_text}")
    scaling = rates["dynamic", 2] / rates["dynamic", 1]
    print(f"{'2 workers / 1 worker (dynamic)':<46} {scaling:>11.2f}x")
    print(f"({uptime()} after the speed runs)")
    return big_mb / next(r[2] for r in runs if r[:2] == ("dynamic", 1)), scaling


def loader_benchmark(vocab: Vocab, vocab_dir: Path, files: list[Path], work: Path, batches: int) -> None:
    out = build_shards(ShardsConfig(input=[str(f) for f in files], vocab=str(vocab_dir), out=str(work / "loader"),
                                    max_seq_length=128, dupe_factor=1))
    shard_set = ShardSet.open(out)
    spec = MaskingSpec.from_vocab(vocab, 0.15, 20, False)
    print(f"\n{'loader (dynamic masks, seq 128, batch 32)':<46} {'seq/s':>11}")
    for prefetch in (0, 4):
        loader = PretrainingLoader(shard_set, LoaderConfig(32, seed=1, prefetch=prefetch), spec=spec)
        next(loader)
        started = time.perf_counter()
        for _ in range(batches):
            next(loader)
        rate = batches * 32 / (time.perf_counter() - started)
        loader.close()
        print(f"{f'  prefetch={prefetch}':<46} {rate:>11,.0f}")


if __name__ == "__main__":
    main()
