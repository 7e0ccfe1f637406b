"""Fine-tuning loop overhead against a bare PyTorch loop, and an NSMC-slice table (pretrained vs from scratch).

    python benchmarks/bench_finetune.py [--release DIR] [--examples 1024] [--repeats 3]
        [--table-release DIR --train nsmc_train.tsv --dev nsmc_dev.tsv --train-examples 2000 --seeds 1,2,3]

Part 1 (always): examples/s of `kobert_pretrain.finetune.trainer.train_epoch` (collation per batch from token
lists, AdamW, schedule, clipping, progress bar) against the plainest loop on the same model, the same batches
already collated as tensors, and the same optimizer steps (target >= 0.95). The model is the release given, or
a BERT with 4 layers x 256 hidden and random weights on the debug vocabulary of the demo corpus (speed does
not depend on the weights). Data: ../shared/eval/nsmc_train.tsv when present, else the demo task.
Runs alternate (ours, bare, ours, bare, ...); the best of each is the ratio (timeit's advice for a machine
shared with other work: noise only ever slows a run down), medians are printed beside it.

Part 2 (with --table-release): `finetune` with --from-scratch over the seeds, printed as the results.md table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import ROOT, machine  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from kobert_pretrain.config import FinetuneConfig  # noqa: E402
from kobert_pretrain.finetune import trainer  # noqa: E402
from kobert_pretrain.finetune.tasks import SENTENCE_CLASSIFICATION, read_task, task_spec  # noqa: E402

SHARED_EVAL = ROOT.parent / "shared" / "eval"


def random_release(work: Path) -> Path:
    """A 4 x 256 BERT with random weights and the demo corpus's debug tokenizer, laid out as a release."""
    from transformers import BertConfig, BertForPreTraining

    from kobert_pretrain.config import load_config
    from kobert_pretrain.convert.tokenizer import build_tokenizer
    from kobert_pretrain.demo import write_demo_corpus
    from kobert_pretrain.vocab import Vocab, build_vocab

    corpus = write_demo_corpus(work / "corpus.txt")
    vocab = build_vocab(load_config(ROOT / "configs" / "debug.toml",
                                    [f"--vocab.input={corpus}", f"--vocab.out={work / 'vocab'}"]).vocab)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=1000, hidden_size=256, num_hidden_layers=4, num_attention_heads=4,
                        intermediate_size=1024, max_position_embeddings=128, pad_token_id=1)
    release = work / "release"
    BertForPreTraining(config).save_pretrained(str(release))
    build_tokenizer(Vocab.load(vocab), 128).save_pretrained(str(release))
    return release


def task_files(work: Path) -> tuple[str, str]:
    if (SHARED_EVAL / "nsmc_train.tsv").is_file():
        return str(SHARED_EVAL / "nsmc_train.tsv"), str(SHARED_EVAL / "nsmc_dev.tsv")
    from kobert_pretrain.finetune.demo_task import write_demo_task

    task = write_demo_task(work / "task")
    return str(task / "train.tsv"), str(task / "dev.tsv")


def bare_loop(model, optimizer, schedule, batches, clip: float) -> None:
    model.train()
    for batch in batches:
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)


def overhead(release: str, train_file: str, dev_file: str, examples: int, repeats: int) -> None:
    import transformers
    from transformers import AutoTokenizer

    transformers.utils.logging.set_verbosity_error()  # the new classifier head's "newly initialized" report
    cfg = FinetuneConfig(release=release, train=train_file, dev=dev_file, batch_size=32, max_seq_length=64,
                         max_train_examples=examples)
    spec = task_spec(SENTENCE_CLASSIFICATION)
    train, _, _, labels = read_task(spec, train_file, dev_file, max_train_examples=examples)
    tokenizer = AutoTokenizer.from_pretrained(release)
    encoded = trainer.encode(tokenizer, train, cfg.max_seq_length, False)
    device = trainer.resolve_device("auto")
    model = trainer.build_classifier(release, len(labels), False, False, 0, device)
    optimizer, schedule = trainer.optimizer_and_schedule(model, cfg, 10 ** 6)
    order = np.random.default_rng(0).permutation(len(encoded))
    batches = [trainer.collate(encoded, order[i:i + cfg.batch_size], tokenizer.pad_token_id, device)
               for i in range(0, len(order), cfg.batch_size)]
    tokens = sum(int(b["attention_mask"].sum()) for b in batches)
    padded = sum(b["input_ids"].numel() for b in batches)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    ours, bare = [], []
    trainer.train_epoch(model, optimizer, schedule, encoded, order[:4 * cfg.batch_size], cfg,
                        tokenizer.pad_token_id, device, "warm-up")
    for _ in range(repeats):
        sync()
        started = time.perf_counter()
        trainer.train_epoch(model, optimizer, schedule, encoded, order, cfg, tokenizer.pad_token_id, device, "ours")
        sync()
        ours.append(len(order) / (time.perf_counter() - started))
        started = time.perf_counter()
        bare_loop(model, optimizer, schedule, batches, cfg.clip_grad_norm)
        sync()
        bare.append(len(order) / (time.perf_counter() - started))
    best_ours, best_bare = max(ours), max(bare)
    print(f"model {sum(p.numel() for p in model.parameters()):,} parameters on {device}, torch "
          f"{torch.__version__}, {torch.get_num_threads()} threads; {len(order):,} examples of {train_file}, "
          f"batch {cfg.batch_size}, max length {cfg.max_seq_length}, mean padded length "
          f"{padded / len(order):.1f} ({tokens / padded:.0%} real tokens)")
    print(f"| loop | examples/s (best of {repeats}) | ratio | median examples/s |")
    print("|---|---:|---:|---:|")
    print(f"| bare PyTorch loop, batches collated in advance | {best_bare:,.1f} | 1.00 | "
          f"{statistics.median(bare):,.1f} |")
    print(f"| `finetune` loop (collation, schedule, clipping, progress bar) | {best_ours:,.1f} | "
          f"**{best_ours / best_bare:.2f}** (target >= 0.95) | {statistics.median(ours):,.1f} |")
    print(f"runs: ours {', '.join(f'{x:.1f}' for x in ours)}; bare {', '.join(f'{x:.1f}' for x in bare)}")


def table(args, work: Path) -> None:
    from kobert_pretrain.finetune import finetune

    cfg = FinetuneConfig(release=args.table_release, out=str(work / "table"), train=args.train, dev=args.dev,
                         test=args.test, max_train_examples=args.train_examples, seeds=args.seeds,
                         from_scratch=True, epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
                         cpu_threads=args.threads)
    started = time.perf_counter()
    out = finetune(cfg)
    print((out / "results.md").read_text(), end="")
    results = json.loads((out / "results.json").read_text())
    print(f"({time.perf_counter() - started:.0f} s; release step {results['release']['step']}, "
          f"sha256 {results['release']['model_sha256'][:12]}; lr {args.lr:g}, batch {args.batch_size}, "
          f"{args.epochs} epochs)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--release", help="release directory for part 1 (default: a random 4 x 256 BERT)")
    parser.add_argument("--examples", type=int, default=256, help="training examples per timed epoch")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--table-release", help="a release of our pipeline for part 2")
    parser.add_argument("--train", default=str(SHARED_EVAL / "nsmc_train.tsv"))
    parser.add_argument("--dev", default=str(SHARED_EVAL / "nsmc_dev.tsv"))
    parser.add_argument("--test", default="")
    parser.add_argument("--train-examples", type=int, default=2000)
    parser.add_argument("--seeds", type=lambda s: [int(x) for x in s.split(",")], default=[1, 2, 3])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(machine())
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        release = args.release or str(random_release(work))
        train_file, dev_file = task_files(work)
        overhead(release, train_file, dev_file, args.examples, args.repeats)
        if args.table_release:
            table(args, work)


if __name__ == "__main__":
    main()
