"""The first run on a GPU node, in one command (scripts/gpu_check.sh, `make gpu-check`): is this node ready?

    bash scripts/gpu_check.sh [--out DIR] [--only install,data,train1,train2,resume,speed] [--steps 40]

Runs, in about 10 minutes on an 8 x V100 node, and writes DIR/gpu_check.json and DIR/gpu_check.md:
  install  `doctor --local --gpu`: libraries libmxnet.so needs, MXNet's CUDA/cuDNN/NCCL features,
           Horovod's NCCL, and a float16 FullyConnected forward/backward read back on every GPU
  data     the debug vocabulary and shards of the bundled demo corpus
  train1   the debug model in float16 on 1 GPU (finite losses that fall, loss scale, checkpoints)
  train2   the same on 2 GPUs under `launch` (2 ranks on GPUs 0 and 1), uninterrupted
  resume   the same again, one rank SIGKILLed mid-run: `launch` restarts it from its checkpoint; every
           rank's parameters must be identical at every checkpoint (the replica check in the log), and
           the losses must match the uninterrupted run
  speed    BERT-base seq 128 float16 sequences/s per GPU through the real Trainer, bucketing on/off x
           MXNet bulk execution 15 (MXNet's default) vs 1000 (our CPU default)
A step that fails is reported with the tail of its output and does not stop the later ones that do not
depend on it. Exit status 0 when every step passed, else 1. Dropout is 0 in the resume check and
MXNET_ENFORCE_DETERMINISM=1 is set, so resumed == uninterrupted is checked without cuDNN's own RNG.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STEPS = ("install", "data", "train1", "train2", "resume", "speed")
NEEDS = {"train1": "data", "train2": "data", "resume": "train2"}
BENCH_VARIANTS = [(bucket, bulk) for bucket in (True, False) for bulk in (15, 1000)]


@dataclass
class Step:
    name: str
    status: str = "skipped"  # passed | failed | skipped
    seconds: float = 0.0
    details: dict = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    output_tail: str = ""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="gpu_check", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/gpu-check", help="report directory; must be new or empty")
    parser.add_argument("--only", default=",".join(STEPS), help=f"comma-separated steps ({','.join(STEPS)})")
    parser.add_argument("--steps", type=int, default=40, help="optimizer steps of the debug runs (40)")
    parser.add_argument("--bench-steps", type=int, default=20, help="measured steps per speed variant (20)")
    parser.add_argument("--micro-batch", type=int, default=64, help="BERT-base micro batch per GPU (64; 32 on 16 GB)")
    parser.add_argument("--kobert", default=str(Path(sys.executable).with_name("kobert-pretrain")))
    args = parser.parse_args(argv)
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = [s for s in only if s not in STEPS]
    if unknown:
        parser.error(f"--only: unknown step(s) {', '.join(unknown)}; choose from {', '.join(STEPS)}")
    missing = sorted({NEEDS[s] for s in only if s in NEEDS and NEEDS[s] not in only})
    if missing:
        parser.error(f"--only: {', '.join(s for s in only if NEEDS.get(s) in missing)} need(s) {', '.join(missing)}")
    if args.steps < 20:
        parser.error("--steps must be at least 20 (the resume check kills a rank after step 10)")
    out = Path(args.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        parser.error(f"--out {out} exists and is not an empty directory")
    args.only = only
    return args


def run(cmd: list[str], step: Step, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                            env={**os.environ, **(env or {})})
    step.output_tail = (result.stdout + result.stderr)[-3000:]
    return result


def read_metrics(run_dir: Path, kind: str = "train") -> list[dict]:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    return [r for r in map(json.loads, path.read_text().splitlines()) if r.get("kind") == kind]


def check_losses(records: list[dict], steps: int, step: Step) -> None:
    losses = [r.get("mlm_loss") for r in records]
    step.details["steps_logged"] = len(records)
    step.details["mlm_loss_first_last"] = [losses[0], losses[-1]] if losses else None
    step.details["loss_scale_last"] = records[-1].get("loss_scale") if records else None
    step.details["skipped_steps"] = records[-1].get("skipped_steps") if records else None
    if len(records) != steps:
        step.problems.append(f"{len(records)} steps logged, {steps} expected")
    if any(v is None or not math.isfinite(v) for v in losses):
        step.problems.append("non-finite MLM loss logged")
    elif losses and not losses[-1] < losses[0]:
        step.problems.append(f"MLM loss did not fall ({losses[0]:.3f} -> {losses[-1]:.3f})")


def replica_checks(output: str) -> list[str]:
    """The trainer's replica-check lines (`checkpoint: step N: parameters identical on K ranks`)."""
    return re.findall(r"checkpoint: step \d+: parameters (?:identical|DIFFER)[^\n]*", output)


class Check:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.out = Path(args.out).resolve()
        self.work = self.out / "work"
        self.steps = {name: Step(name) for name in STEPS}
        self.config = ROOT / "configs" / "debug.toml"

    def kobert(self, *args) -> list[str]:
        return [self.args.kobert, *map(str, args)]

    def train_args(self, run_dir: Path, *extra: str) -> list[str]:
        return ["train", "--config", str(self.config), "--shards", str(self.work / "shards"), "--out", str(run_dir),
                "--train.dtype=float16", "--train.device=gpu", f"--train.max_steps={self.args.steps}",
                "--log.interval=1", "--checkpoint.interval=5", "--log.tensorboard=false", *extra]

    # ------------------------------------------------------------------ the steps

    def install(self, step: Step) -> None:
        result = run(self.kobert("doctor", "--local", "--gpu", "--json"), step)
        match = re.search(r"KOBERT_DOCTOR (\{.*\})", result.stdout)
        if not match:
            step.problems.append(f"doctor printed no report (status {result.returncode})")
            return
        report = json.loads(match.group(1))
        step.details = {k: report.get(k) for k in ("host", "mxnet-cu110", "mxnet-cu112", "horovod", "horovod_ops",
                                                   "gpus", "gpu_cc", "gpu_memory_gb", "driver", "cuda_runtime",
                                                   "cudnn", "nccl")}
        step.problems += report["problems"]
        if (report.get("gpus") or 0) < 2:
            step.problems.append(f"{report.get('gpus') or 0} GPU(s) visible: the 2-GPU checks need 2")

    def data(self, step: Step) -> None:
        corpus = self.work / "corpus.txt"
        for cmd in (self.kobert("demo-corpus", "--out", corpus),
                    self.kobert("vocab", "--config", self.config, "--input", corpus, "--out", self.work / "vocab"),
                    self.kobert("shards", "--config", self.config, "--input", corpus, "--vocab", self.work / "vocab",
                                "--out", self.work / "shards", "--workers", "2")):
            if run(cmd, step).returncode != 0:
                step.problems.append(f"`{' '.join(map(str, cmd[1:3]))}` failed")
                return

    def train1(self, step: Step) -> None:
        run_dir = self.work / "train1"
        result = run(self.kobert(*self.train_args(run_dir)), step)
        if result.returncode != 0:
            step.problems.append(f"train exited with status {result.returncode}")
        check_losses(read_metrics(run_dir), self.args.steps, step)

    def launch_args(self, run_dir: Path) -> list[str]:
        return self.kobert("launch", "-np", 2, "-H", "localhost:2", "--backoff", 1, "--max-restarts", 2, "--",
                           *self.train_args(run_dir, "--model.dropout=0"))

    def train2(self, step: Step) -> None:
        run_dir = self.work / "train2"
        result = run(self.launch_args(run_dir), step, env={"MXNET_ENFORCE_DETERMINISM": "1"})
        if result.returncode != 0:
            step.problems.append(f"launch exited with status {result.returncode}")
        check_losses(read_metrics(run_dir), self.args.steps, step)
        self._replicas(result.stdout + result.stderr, step)

    def resume(self, step: Step) -> None:
        run_dir = self.work / "resume"
        proc = subprocess.Popen(self.launch_args(run_dir), cwd=ROOT, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, env={**os.environ, "MXNET_ENFORCE_DETERMINISM": "1"})
        deadline = time.time() + 300
        while len(read_metrics(run_dir)) < 12 and time.time() < deadline and proc.poll() is None:
            time.sleep(0.2)
        victim = _rank_pids(proc.pid)[-1:]
        for pid in victim:
            os.kill(pid, signal.SIGKILL)
        output, _ = proc.communicate(timeout=600)
        step.output_tail = output[-3000:]
        step.details["killed_rank_pid"] = victim[0] if victim else None
        if not victim:
            step.problems.append("no rank process found to kill")
        if proc.returncode != 0:
            step.problems.append(f"launch exited with status {proc.returncode}")
        if "restart 1/" not in output:
            step.problems.append("launch did not restart the job")
        records = read_metrics(run_dir)
        check_losses(records, self.args.steps, step)
        self._replicas(output, step)
        reference = read_metrics(self.work / "train2")
        if records and len(records) == len(reference):
            diff = max(abs(a["mlm_loss"] - b["mlm_loss"]) / max(abs(b["mlm_loss"]), 1e-12)
                       for a, b in zip(records, reference))
            step.details["max_rel_loss_diff_vs_uninterrupted"] = diff
            if diff > 1e-3:
                step.problems.append(f"losses differ from the uninterrupted run by up to {diff:.2e} (relative)")

    def _replicas(self, output: str, step: Step) -> None:
        lines = replica_checks(output)
        step.details["replica_checks"] = len(lines)
        if not lines:
            step.problems.append("no replica check in the log")
        elif any("DIFFER" in line for line in lines):
            step.problems.append(next(line for line in lines if "DIFFER" in line))

    def speed(self, step: Step) -> None:
        results = []
        for bucket, bulk in BENCH_VARIANTS:
            out = self.work / f"bench-{int(bucket)}-{bulk}.json"
            result = run([sys.executable, str(ROOT / "benchmarks" / "bench_train.py"), "--gpu-only",
                          "--gpu-micro-batch", str(self.args.micro_batch), "--steps", str(self.args.bench_steps),
                          "--bucket-window", "64" if bucket else "1", "--json", str(out)], step,
                         env={"MXNET_EXEC_BULK_EXEC_MAX_NODE_TRAIN_FWD": str(bulk),
                              "MXNET_EXEC_BULK_EXEC_MAX_NODE_TRAIN_BWD": str(bulk)})
            if result.returncode != 0 or not out.exists():
                step.problems.append(f"bench_train.py failed for bucketing={bucket}, bulk={bulk}")
                continue
            results.append({"bucketing": bucket, "bulk": bulk, **json.loads(out.read_text())})
        step.details["variants"] = results

    # ------------------------------------------------------------------ driver

    def run_all(self) -> int:
        self.out.mkdir(parents=True, exist_ok=True)
        for name in STEPS:
            step = self.steps[name]
            if name not in self.args.only:
                continue
            need = NEEDS.get(name)
            if need and self.steps[need].status != "passed":
                step.problems.append(f"not run: {need} did not pass")
                step.status = "failed"
                continue
            print(f"gpu_check: {name} ...", file=sys.stderr, flush=True)
            started = time.time()
            try:
                getattr(self, name)(step)
            except (subprocess.TimeoutExpired, OSError) as e:
                step.problems.append(f"{type(e).__name__}: {e}")
            step.seconds = round(time.time() - started, 1)
            step.status = "failed" if step.problems else "passed"
            print(f"gpu_check: {name} {step.status} in {step.seconds:.0f}s"
                  + (f": {'; '.join(step.problems)}" if step.problems else ""), file=sys.stderr, flush=True)
        write_report(self.out, list(self.steps.values()), self.args)
        ran = [s for s in self.steps.values() if s.name in self.args.only]
        return 0 if all(s.status == "passed" for s in ran) else 1


def _rank_pids(launch_pid: int) -> list[int]:
    import psutil

    from kobert_pretrain.launch import is_rank_process

    pids = []
    for child in psutil.Process(launch_pid).children(recursive=True):
        try:
            if is_rank_process(child.cmdline()):
                pids.append(child.pid)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return sorted(pids)


def write_report(out: Path, steps: list[Step], args: argparse.Namespace) -> tuple[Path, Path]:
    """gpu_check.json (everything) and gpu_check.md (a table a person reads first)."""
    report = {"host": platform.node(), "time": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
              "command": " ".join(sys.argv), "args": {k: v for k, v in vars(args).items()},
              "passed": all(s.status == "passed" for s in steps if s.name in args.only),
              "steps": [asdict(s) for s in steps]}
    json_path = out / "gpu_check.json"
    json_path.write_text(json.dumps(report, indent=1, default=str) + "\n")
    lines = [f"# GPU check on {report['host']} ({report['time']})", "",
             f"Result: **{'PASSED' if report['passed'] else 'FAILED'}**", "",
             "| step | status | seconds | notes |", "|---|---|---:|---|"]
    for s in steps:
        notes = "; ".join(s.problems) if s.problems else ", ".join(
            f"{k} {v}" for k, v in s.details.items() if k != "variants" and v is not None)
        lines.append(f"| {s.name} | {s.status} | {s.seconds:.0f} | {notes.replace('|', '/')} |")
    variants = next((s.details.get("variants") for s in steps if s.name == "speed"), None)
    if variants:
        lines += ["", "BERT-base, seq 128, float16, per GPU:", "",
                  "| bucketing | bulk | micro batch | seq/s | mean padded length |", "|---|---:|---:|---:|---:|"]
        for v in variants:
            lines.append(f"| {'on' if v['bucketing'] else 'off'} | {v['bulk']} | {v.get('micro_batch', '-')} | "
                         f"{v.get('seq_per_s', float('nan')):.1f} | {v.get('mean_padded_length', float('nan')):.0f} |")
    md_path = out / "gpu_check.md"
    md_path.write_text("\n".join(lines) + "\n")
    return json_path, md_path


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    code = Check(args).run_all()
    print(f"gpu_check: report in {Path(args.out) / 'gpu_check.md'}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
