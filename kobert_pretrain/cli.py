"""`kobert-pretrain`: parse arguments, load the config, call one stage function.

Subcommands take `--config FILE` (TOML, see configs/), plain flags for the
most used fields, and `--section.field=value` for any field. User mistakes
end as one line on stderr and exit status 2; nothing else is done here.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import sys
from typing import Callable

from kobert_pretrain import __version__
from kobert_pretrain.config import FINETUNE_TASKS, SECTIONS, field_help, load_config
from kobert_pretrain.errors import UserError

EXIT_USER_ERROR = 2


def _fields_epilog(sections: tuple[str, ...]) -> str:
    lines = ["every config field (override with --section.field=value):"]
    for name in sections:
        for key, type_name, default, help_text in field_help(SECTIONS[name]):
            lines.append(f"  --{name}.{key}  ({type_name}, default {default!r})  {help_text}")
    return "\n".join(lines)


def _add_stage(sub, name: str, help_text: str, sections: tuple[str, ...]) -> argparse.ArgumentParser:
    p = sub.add_parser(
        name,
        help=help_text,
        description=help_text,
        epilog=_fields_epilog(sections),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    p.add_argument("--config", metavar="FILE", help="TOML config file (e.g. configs/base.toml)")
    p.set_defaults(sections=sections)
    return p


def _flag(p: argparse.ArgumentParser, *names: str, dest: str, **kw) -> None:
    """A plain flag that sets the config field `dest` ('section.field')."""
    p.add_argument(*names, dest=dest, default=argparse.SUPPRESS, **kw)


def _run_prepare(args: argparse.Namespace, cfg) -> None:
    from kobert_pretrain.prepare import prepare

    prepare(cfg.prepare, dry_run=args.dry_run)


def _run_vocab(args: argparse.Namespace, cfg) -> None:
    from kobert_pretrain.vocab import build_vocab

    build_vocab(cfg.vocab)


def _run_shards(args: argparse.Namespace, cfg) -> None:
    from kobert_pretrain.shards import build_shards

    build_shards(cfg.shards)


def _run_inspect(args: argparse.Namespace, cfg) -> None:
    from kobert_pretrain.shards.inspect import format_report, inspect_shards, to_json

    report = inspect_shards(args.dir, num_examples=args.num, vocab_dir=args.vocab, verify=args.verify)
    print(to_json(report) if args.json else format_report(report))


def _run_train(args: argparse.Namespace, cfg) -> int:
    if args.world_size is not None and not args.dry_run:
        raise UserError("--world-size plans a job: use it with --dry-run (a real job's ranks come from horovodrun)")
    if args.dry_run:
        from kobert_pretrain.dry_run import dry_run

        print(dry_run(cfg, args.world_size or 1))
        return 0
    from kobert_pretrain.run_dir import EXIT_PREEMPTED, Preempted
    from kobert_pretrain.train import train

    try:
        train(cfg, resume=args.resume)
    except Preempted as e:
        print(f"kobert-pretrain: stopped by {e}", file=sys.stderr)
        return EXIT_PREEMPTED
    return 0


def _run_launch(args: argparse.Namespace, cfg) -> int:
    from kobert_pretrain.heartbeat import Watchdog
    from kobert_pretrain.launch import LaunchConfig, launch, parse_hostfile, parse_hosts

    if bool(args.hostfile) == bool(args.hosts):
        raise UserError("give the hosts with exactly one of --hostfile FILE or -H host:slots,...")
    hosts = parse_hostfile(args.hostfile) if args.hostfile else parse_hosts(args.hosts)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    return launch(LaunchConfig(num_proc=args.np, hosts=hosts, command=command, max_restarts=args.max_restarts,
                               backoff_s=args.backoff, gloo_timeout_s=args.gloo_timeout,
                               stall_shutdown_s=args.stall_timeout, horovodrun_args=args.horovodrun_arg,
                               watchdog=Watchdog(silence_s=args.watchdog_silence, hang_s=args.watchdog_hang,
                                                 slow_s=args.watchdog_slow)))


def _run_export(args: argparse.Namespace, cfg) -> None:
    from kobert_pretrain.checkpoint import export_params

    print(export_params(args.source, args.out))


def _run_convert(args: argparse.Namespace, cfg) -> None:
    from kobert_pretrain.convert import convert

    convert(cfg.convert)


def _run_finetune(args: argparse.Namespace, cfg) -> None:
    from kobert_pretrain.finetune import finetune

    print(finetune(cfg.finetune))


def _run_evaluate(args: argparse.Namespace, cfg) -> None:
    from kobert_pretrain.finetune import evaluate

    print(evaluate(cfg.evaluate, cfg.finetune))


def _run_demo_task(args: argparse.Namespace, cfg) -> None:
    from kobert_pretrain.finetune.demo_task import write_demo_task

    print(write_demo_task(args.out))


def _run_study(args: argparse.Namespace, cfg) -> int:
    from kobert_pretrain.run_dir import EXIT_PREEMPTED, Preempted
    from kobert_pretrain.study import study_vocab

    try:
        print(study_vocab(cfg))
    except Preempted as e:
        print(f"kobert-pretrain: stopped by {e}; run the same command to resume the study", file=sys.stderr)
        return EXIT_PREEMPTED
    return 0


def _finetune_flags(p: argparse.ArgumentParser) -> None:
    """The [finetune] flags `finetune` and `evaluate` share."""
    _flag(p, "--task", dest="finetune.task", metavar="TASK", choices=FINETUNE_TASKS,
          help="auto (default: from the header), sentence-classification, pair-classification, pair-regression; "
               "or nsmc, kornli, korsts (the same three)")
    _flag(p, "--train", dest="finetune.train", metavar="FILE", help="training file (tab-separated, header row)")
    _flag(p, "--dev", dest="finetune.dev", metavar="FILE", help="development file: chooses the epoch")
    _flag(p, "--test", dest="finetune.test", metavar="FILE", help="test file: scored once, at the chosen epoch")
    _flag(p, "--seeds", dest="finetune.seeds", metavar="N,M,...", help="one run per seed; mean +- sd (1)")
    _flag(p, "--from-scratch", dest="finetune.from_scratch", action="store_const", const="true",
          help="also fine-tune the same architecture from random weights: the baseline")
    _flag(p, "--epochs", dest="finetune.epochs", metavar="N", help="passes over the training file (5)")


def _run_doctor(args: argparse.Namespace, cfg) -> int:
    from kobert_pretrain import doctor
    from kobert_pretrain.launch import parse_hostfile, parse_hosts

    checks = dict(run_dir=args.run_dir, shards=args.shards, vocab=args.vocab, min_free_gb=args.min_free_gb,
                  need_gpu=args.gpu)
    if args.local or not (args.hostfile or args.hosts):
        reports = [doctor.local_report(**checks)]
        if args.json:
            print(doctor.MARKER + json.dumps(reports[0]), flush=True)
            return 0
    else:
        hosts = parse_hostfile(args.hostfile) if args.hostfile else parse_hosts(args.hosts)
        reports = doctor.remote_reports(hosts, checks)
        doctor.compare_hosts(reports)
    print(doctor.table(reports))
    return 1 if any(r["problems"] for r in reports) else 0


def _run_hostfile(args: argparse.Namespace, cfg) -> None:
    from kobert_pretrain.launch import clean_hostfile, parse_hostfile, slots_problem

    hosts = parse_hostfile(args.file)
    if args.slots is not None:
        problem = slots_problem(args.slots)
        if problem:
            raise UserError(f"--slots: {problem}")
        hosts = [(h, args.slots) for h, _ in hosts]
    sys.stdout.write(clean_hostfile(hosts))


def _run_demo_corpus(args: argparse.Namespace, cfg) -> None:
    from kobert_pretrain.demo import write_demo_corpus

    print(write_demo_corpus(args.out))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kobert-pretrain",
        allow_abbrev=False,
        description="Raw text to a released BERT: vocab -> shards -> train -> convert.",
    )
    parser.add_argument("--version", action="version", version=f"kobert-pretrain {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = _add_stage(sub, "prepare", "clean, deduplicate and sentence-split raw documents, with a data report "
                   "(stage 0)", ("prepare",))
    _flag(p, "--input", "-i", dest="prepare.input", action="append", metavar="PATH",
          help="raw file (text, JSONL, CSV; may be compressed), glob or directory; repeat for more")
    _flag(p, "--out", "-o", dest="prepare.out", metavar="DIR", help="output directory (new or empty)")
    _flag(p, "--format", dest="prepare.format", choices=["auto", "text", "jsonl", "csv"],
          help="input format (auto: by file name)")
    _flag(p, "--text-field", dest="prepare.text_field", metavar="F", help="JSONL key or CSV column of the text")
    _flag(p, "--workers", dest="prepare.workers", metavar="N", help="worker processes (1)")
    p.add_argument("--dry-run", action="store_true", help="write only report.json and report.html")
    p.set_defaults(run=_run_prepare)

    p = _add_stage(sub, "vocab", "train a SentencePiece vocabulary (stage 1)", ("vocab",))
    _flag(p, "--input", "-i", dest="vocab.input", action="append", metavar="PATH",
          help="text file, glob or directory; repeat for more")
    _flag(p, "--out", "-o", dest="vocab.out", metavar="DIR", help="output directory (new or empty)")
    _flag(p, "--vocab-size", dest="vocab.vocab_size", metavar="N", help="pieces, specials included (8002)")
    _flag(p, "--model-type", dest="vocab.model_type", choices=["unigram", "bpe"], help="unigram (default) or bpe")
    _flag(p, "--normalization", dest="vocab.normalization_rule_name", metavar="RULE",
          help="nmt_nfkc (default) or identity, ...")
    _flag(p, "--character-coverage", dest="vocab.character_coverage", metavar="F", help="0.9995 by default")
    _flag(p, "--num-threads", dest="vocab.num_threads", metavar="N", help="training threads (16)")
    _flag(p, "--seed", dest="vocab.seed", metavar="N", help="sampling seed (42)")
    p.set_defaults(run=_run_vocab)

    p = _add_stage(sub, "shards", "generate masked-LM / next-sentence pretraining shards (stage 2)", ("shards",))
    _flag(p, "--input", "-i", dest="shards.input", action="append", metavar="PATH",
          help="text file, glob or directory; repeat for more")
    _flag(p, "--vocab", dest="shards.vocab", metavar="DIR", help="vocabulary directory from `vocab`")
    _flag(p, "--out", "-o", dest="shards.out", metavar="DIR", help="output directory (re-run to resume)")
    _flag(p, "--max-seq-length", dest="shards.max_seq_length", metavar="N", help="tokens per instance (128)")
    _flag(p, "--workers", dest="shards.workers", metavar="N", help="worker processes (1)")
    _flag(p, "--seed", dest="shards.seed", metavar="N", help="random seed (12345)")
    _flag(p, "--dupe-factor", dest="shards.dupe_factor", metavar="N", help="passes over the corpus (5)")
    _flag(p, "--masking", dest="shards.masking", choices=["static", "dynamic"], help="dynamic (default) or static")
    _flag(p, "--whole-word-mask", dest="shards.whole_word_mask", action="store_const", const="true",
          help="mask whole words ('\u2581'-starting piece and its continuations)")
    _flag(p, "--num-shards", dest="shards.num_shards", metavar="N", help="shard count (0 = automatic)")
    _flag(p, "--input-format", dest="shards.input_format", choices=["sentences", "documents"],
          help="sentences: one per line, blank line between documents (default); documents: one per line")
    p.set_defaults(run=_run_shards)

    p = _add_stage(sub, "train", "pretrain BERT on shards; run under horovodrun for several ranks (stage 3)",
                   ("model", "train", "log", "checkpoint"))
    _flag(p, "--shards", dest="train.shards", metavar="DIR", help="shard directory (phase 1)")
    _flag(p, "--out", "-o", dest="train.out", metavar="RUN_DIR", help="run directory")
    _flag(p, "--eval-shards", dest="train.eval_shards", metavar="DIR", help="held-out shards for evaluation")
    _flag(p, "--vocab", dest="train.vocab", metavar="DIR", help="vocabulary (default: recorded in the shards)")
    _flag(p, "--max-steps", dest="train.max_steps", metavar="N", help="optimizer steps")
    _flag(p, "--preset", dest="model.preset", choices=["debug", "small", "base", "large"], help="model shape")
    p.add_argument("--resume", default="auto", metavar="auto|none|PATH",
                   help="auto (default): newest complete checkpoint in RUN_DIR, or a fresh start; "
                        "none: refuse to run over an existing run; PATH: exactly that checkpoint")
    p.add_argument("--dry-run", action="store_true",
                   help="check everything train checks and print the batch plan and memory per GPU; build nothing")
    p.add_argument("--world-size", type=int, metavar="N", help="with --dry-run: plan for N ranks (default 1)")
    p.set_defaults(run=_run_train)

    p = sub.add_parser("launch", help="run `train` under horovodrun and restart it from checkpoints when it dies",
                       allow_abbrev=False, description="kobert-pretrain launch -np N (-H host:slots,... | "
                       "--hostfile FILE) [--max-restarts K] -- train ARGS")
    p.add_argument("-np", type=int, required=True, metavar="N", help="number of ranks")
    p.add_argument("-H", "--hosts", metavar="HOST:SLOTS,...", help="hosts, as for horovodrun")
    p.add_argument("--hostfile", metavar="FILE", help="'host slots=N' lines; comments and blank lines allowed")
    p.add_argument("--max-restarts", type=int, default=3, metavar="K", help="restarts after failures (3)")
    p.add_argument("--backoff", type=float, default=10.0, metavar="S",
                   help="seconds before the first restart, doubling each time up to 600 (10)")
    p.add_argument("--gloo-timeout", type=int, default=120, metavar="S", help="Gloo operation timeout (120)")
    p.add_argument("--stall-timeout", type=int, default=600, metavar="S",
                   help="Horovod stall check: shut the job down after S seconds without progress (600)")
    p.add_argument("--watchdog-silence", type=float, default=30.0, metavar="S",
                   help="restart when a rank sends no heartbeat for S seconds: stopped or frozen (30; 0: off)")
    p.add_argument("--watchdog-hang", type=float, default=120.0, metavar="S",
                   help="restart when no step finishes for max(S, 20 x the median step time) (120; 0: off)")
    p.add_argument("--watchdog-slow", type=float, default=900.0, metavar="S",
                   help="the same limit while a rank sets up, saves a checkpoint or evaluates (900)")
    p.add_argument("--horovodrun-arg", action="append", default=[], metavar="ARG",
                   help="extra horovodrun argument, repeatable (e.g. --horovodrun-arg=--timeline-filename=t.json)")
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- train ARGS")
    p.set_defaults(run=_run_launch, sections=())

    p = _add_stage(sub, "convert", "convert a checkpoint to a Hugging Face directory and ONNX (stage 4)",
                   ("convert",))
    p.add_argument("source", nargs="?", metavar="CHECKPOINT_OR_RUN_DIR")
    _flag(p, "--out", "-o", dest="convert.out", metavar="DIR", help="output directory (new or empty)")
    _flag(p, "--onnx", dest="convert.onnx", action="store_const", const="true", help="also export model.onnx")
    _flag(p, "--vocab", dest="convert.vocab", metavar="DIR", help="vocabulary (default: the run's)")
    p.set_defaults(run=_run_convert)

    p = _add_stage(sub, "finetune", "fine-tune a release on a labelled task over seeds, optionally beside the "
                   "same model from scratch (stage 5)", ("finetune",))
    p.add_argument("release", nargs="?", metavar="RELEASE_DIR", help="the --out of `kobert-pretrain convert`")
    _flag(p, "--out", "-o", dest="finetune.out", metavar="DIR", help="output directory (new or empty)")
    _finetune_flags(p)
    p.set_defaults(run=_run_finetune)

    p = _add_stage(sub, "evaluate", "convert and fine-tune checkpoints of a run: downstream score against "
                   "pretraining step (stage 5)", ("finetune", "evaluate"))
    p.add_argument("run_dir", nargs="?", metavar="RUN_DIR", help="run directory of `kobert-pretrain train`")
    _flag(p, "--out", "-o", dest="evaluate.out", metavar="DIR", help="output directory (RUN_DIR/evaluate)")
    _flag(p, "--every", dest="evaluate.every", metavar="K", help="checkpoints at multiples of K steps")
    _flag(p, "--steps", dest="evaluate.steps", metavar="N,M,...", help="exactly these checkpoint steps")
    _flag(p, "--vocab", dest="evaluate.vocab", metavar="DIR", help="vocabulary for convert (default: the run's)")
    _finetune_flags(p)
    p.set_defaults(run=_run_evaluate)

    p = sub.add_parser("study", help="experiments across whole pipelines: `study vocab` compares vocabularies",
                       allow_abbrev=False, description="kobert-pretrain study vocab --input CORPUS... --sizes ...")
    studies = p.add_subparsers(dest="study", metavar="STUDY", required=True)
    p = _add_stage(studies, "vocab", "the same BERT pretrained with each candidate vocabulary (size, type), "
                   "measured in bits per character, tokenization, cost and (with --train/--dev) downstream",
                   ("study", "vocab", "shards", "model", "train", "log", "checkpoint", "convert", "finetune"))
    _flag(p, "--input", "-i", dest="study.input", action="append", metavar="PATH",
          help="text file, glob or directory (one sentence per line, blank line between documents); repeatable")
    _flag(p, "--out", "-o", dest="study.out", metavar="DIR", help="study directory (re-run to resume)")
    _flag(p, "--sizes", dest="study.sizes", metavar="N,M,...", help="vocabulary sizes (4000,8002,16000,32000)")
    _flag(p, "--model-type", dest="study.model_types", metavar="T,...", help="unigram (default), bpe or both")
    _flag(p, "--steps", dest="study.steps", metavar="N", help="training steps per candidate (train.max_steps)")
    _finetune_flags(p)
    # the study fills in every stage's paths itself: only its own section is checked before it starts
    p.set_defaults(run=_run_study, validate_sections=("study",), subcommand="study vocab")

    p = sub.add_parser("demo-task", help="write a small labelled task from the demo corpus (constitution chapters)")
    p.add_argument("--out", "-o", required=True, metavar="DIR")
    p.set_defaults(run=_run_demo_task, sections=())

    p = sub.add_parser("export", help="write a checkpoint's parameters as a plain Gluon .params file",
                       allow_abbrev=False)
    p.add_argument("source", metavar="CHECKPOINT_OR_RUN_DIR", help="a checkpoint, or a run (its newest checkpoint)")
    p.add_argument("--out", "-o", required=True, metavar="FILE.params")
    p.set_defaults(run=_run_export, sections=())

    p = sub.add_parser("doctor", help="preflight checks on this machine or on every host of a hostfile",
                       allow_abbrev=False)
    p.add_argument("-H", "--hosts", metavar="HOST:SLOTS,...")
    p.add_argument("--hostfile", metavar="FILE")
    p.add_argument("--run-dir", metavar="DIR", help="check free disk and write access here")
    p.add_argument("--shards", metavar="DIR", help="check that this shard set opens")
    p.add_argument("--vocab", metavar="DIR", help="check that this vocabulary loads")
    p.add_argument("--min-free-gb", type=float, default=20.0, metavar="GB", help="free disk wanted (20)")
    p.add_argument("--gpu", action="store_true", help="require GPUs and Horovod with NCCL")
    p.add_argument("--local", action="store_true", help="check this machine only")
    p.add_argument("--json", action="store_true", help=argparse.SUPPRESS)
    p.set_defaults(run=_run_doctor, sections=())

    p = sub.add_parser("hostfile", help="validate a hostfile (comments allowed) and print Horovod's clean form",
                       allow_abbrev=False)
    p.add_argument("file", metavar="FILE")
    p.add_argument("--slots", type=int, metavar="N", help="print every host with N slots")
    p.set_defaults(run=_run_hostfile, sections=())

    p = sub.add_parser("inspect", help="print a shard set's totals and a few decoded instances",
                       allow_abbrev=False)
    p.add_argument("dir", metavar="DIR", help="shard directory")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--num", type=int, default=3, metavar="N", help="instances to decode (3)")
    p.add_argument("--vocab", metavar="DIR", help="vocabulary directory (default: the one recorded in the shards)")
    p.add_argument("--verify", action="store_true", help="also check every file's sha256")
    p.set_defaults(run=_run_inspect, sections=())

    p = sub.add_parser("demo-corpus", help="write the bundled Korean demo corpus (from konlpy) to a file")
    p.add_argument("--out", "-o", required=True, metavar="FILE")
    p.set_defaults(run=_run_demo_corpus, sections=())
    for name, p in sub.choices.items():
        if name != "study":
            p.set_defaults(subcommand=name)
    return parser


def describe_os_error(e: OSError) -> str:
    """One line for an OSError: what went wrong and, when known, where."""
    if e.errno == errno.ENOSPC:
        return "no space left on device" + (f" while writing {e.filename}" if e.filename else "")
    where = f": {e.filename}" if e.filename else ""
    return f"{e.strerror or e}{where}"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    overrides = [a for a in extra if a.startswith("--") and "." in a.split("=", 1)[0]]
    unknown = [a for a in extra if a not in overrides]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    run: Callable = args.run
    sections: tuple[str, ...] = args.sections
    if overrides and not sections:
        parser.error(f"unrecognized arguments: {' '.join(overrides)} "
                     f"({args.subcommand} reads no config, so it takes no --section.field=value)")
    flags = {k: v for k, v in vars(args).items() if "." in k}
    if args.command == "convert" and args.source:
        flags["convert.source"] = args.source
    if args.command == "finetune" and args.release:
        flags["finetune.release"] = args.release
    if args.command == "evaluate" and args.run_dir:
        flags["evaluate.run_dir"] = args.run_dir
    try:
        # a dry run validates on its own: it needs no run directory
        checked = () if args.__dict__.get("dry_run") else args.__dict__.get("validate_sections", sections)
        cfg = load_config(args.__dict__.get("config"), overrides, validate=checked, flags=flags) if sections else None
        code = run(args, cfg)
    except UserError as e:
        print(f"kobert-pretrain: error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    except OSError as e:
        # Disk full, permission denied, a path that vanished: one line, unless debugging.
        if os.environ.get("KOBERT_DEBUG"):
            raise
        print(f"kobert-pretrain: error: {describe_os_error(e)}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("kobert-pretrain: interrupted", file=sys.stderr)
        return 130
    return code or 0
