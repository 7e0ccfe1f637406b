"""Shard generation and loader speed, against raw SentencePiece encoding measured in the same run.

    python benchmarks/bench_shards.py [--corpus DIR_OR_FILE] [--scale 10]

Prints: raw SentencePiece encoding (one process, one thread) in tokens/s as the
baseline; `kobert-pretrain shards` with 1 and 2 workers at dupe_factor=1 and
the ratio of each to the baseline; peak RSS of a 1-worker run on the corpus and
on `--scale` copies of it; the loader alone (dynamic masking, seq 128, micro
batch 32, one rank, no model) in sequences/s, with and without the prefetch
thread. Not a test: numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import corpus_files, machine, peak_rss_mb  # noqa: E402

from kobert_pretrain.config import ShardsConfig, VocabConfig  # noqa: E402
from kobert_pretrain.data import LoaderConfig, PretrainingLoader  # noqa: E402
from kobert_pretrain.masking import MaskingSpec  # noqa: E402
from kobert_pretrain.shards import ShardSet, build_shards  # noqa: E402
from kobert_pretrain.vocab import Vocab, build_vocab  # noqa: E402


def raw_encoding(files: list[Path], vocab: Vocab) -> tuple[int, float]:
    """Baseline: read the files and encode every non-blank line with plain sentencepiece, one thread."""
    started = time.perf_counter()
    tokens = 0
    for f in files:
        lines = [ln for ln in f.read_text(encoding="utf-8", errors="replace").splitlines() if ln.strip()]
        tokens += sum(map(len, vocab.sp.encode(lines, num_threads=1)))
    return tokens, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", help="file or directory of .txt (default: ../shared/corpus)")
    parser.add_argument("--scale", type=int, default=10, help="copies of the corpus for the RSS comparison")
    parser.add_argument("--loader-batches", type=int, default=400)
    args = parser.parse_args()

    files = corpus_files(args.corpus)
    size_mb = sum(f.stat().st_size for f in files) / 1e6
    work = Path(tempfile.mkdtemp(prefix="bench-shards-"))
    try:
        print(f"machine: {machine()}")
        print(f"corpus: {len(files)} files, {size_mb:.1f} MB")
        vocab_dir = build_vocab(VocabConfig(input=[str(f) for f in files], out=str(work / "vocab"),
                                            vocab_size=8002, num_threads=2, input_sentence_size=300_000))
        vocab = Vocab.load(vocab_dir)

        # Speed is measured on `scale` copies of the corpus, so that fixed costs (start-up, worker
        # spawn) are amortised as on a real corpus, and workers have enough chunks to share.
        big = work / "big"
        big.mkdir()
        for k in range(args.scale):
            for n, f in enumerate(files):
                shutil.copyfile(f, big / f"{k:03d}-{n:03d}.txt")
        big_files = sorted(big.iterdir())
        print(f"speed corpus: {args.scale} copies, {size_mb * args.scale:.0f} MB")
        raw_encoding(files[:1], vocab)  # warm the processor
        raw_tokens, raw_s = raw_encoding(big_files, vocab)
        raw_rate = raw_tokens / raw_s
        print(f"\n{'what':<44} {'tokens/s':>12} {'ratio':>7}")
        print(f"{'raw sentencepiece encode (1 process)':<44} {raw_rate:>12,.0f} {1.0:>7.2f}")

        base = dict(input=[str(big)], vocab=str(vocab_dir), max_seq_length=128, dupe_factor=1,
                    num_shards_multiple=8)
        for workers in (1, 2):
            out = work / f"shards-w{workers}"
            started = time.perf_counter()
            build_shards(ShardsConfig(**base, out=str(out), workers=workers))
            seconds = time.perf_counter() - started
            text_tokens = ShardSet.open(out).index["text_tokens"]
            rate = text_tokens / seconds
            print(f"{f'kobert-pretrain shards, {workers} worker(s)':<44} {rate:>12,.0f} {rate / raw_rate:>7.2f}")

        # Peak RSS: the corpus once, then `scale` copies of it (one worker each).
        print(f"\n{'peak RSS, 1 worker':<44} {'MB':>12} {'seconds':>9}")
        runs = (("corpus x1", 1, [str(f) for f in files]), (f"corpus x{args.scale}", args.scale, [str(big)]))
        sizes = {}
        for label, scale, inputs in runs:
            cmd = [sys.executable, "-m", "kobert_pretrain", "shards", "--vocab", str(vocab_dir),
                   "--out", str(work / f"rss-{label.split()[-1]}"), "--dupe-factor", "1", "--workers", "1"]
            for i in inputs:
                cmd += ["--input", i]
            rss, seconds = peak_rss_mb(cmd)
            sizes[scale] = rss
            text = f"{label} ({size_mb * scale:.0f} MB of text)"
            print(f"{text:<44} {rss:>12.0f} {seconds:>9.1f}")
        growth = sizes[args.scale] / sizes[1] - 1
        print(f"{f'RSS growth for {args.scale}x the text':<44} {growth:>+12.1%}")

        # The loader alone.
        shard_set = ShardSet.open(work / "shards-w1")
        spec = MaskingSpec.from_vocab(vocab, 0.15, 20, False)
        print(f"\n{'loader (dynamic masks, seq 128, batch 32)':<44} {'seq/s':>12}")
        for prefetch in (0, 4):
            loader = PretrainingLoader(shard_set, LoaderConfig(32, seed=1, prefetch=prefetch), spec=spec)
            next(loader)
            started = time.perf_counter()
            for _ in range(args.loader_batches):
                next(loader)
            rate = args.loader_batches * 32 / (time.perf_counter() - started)
            loader.close()
            print(f"{f'  prefetch={prefetch}':<44} {rate:>12,.0f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
