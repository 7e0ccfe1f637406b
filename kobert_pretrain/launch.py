"""`kobert-pretrain launch`: run a training job under horovodrun and restart it when it dies.

Horovod has no elastic mode for MXNet, so fault tolerance is checkpoint +
restart: when the job ends with a failure (a rank crashed or was killed, a node
vanished, a hang turned into an error by Horovod's stall check or the Gloo
timeout), the supervisor waits (exponential back-off) and launches it again
with `--resume auto`, up to `--max-restarts` times, logging each restart and
its cause. A job that finishes, that was pre-empted (SIGTERM/SIGUSR1: the
ranks save a checkpoint and exit with status 75), or that failed on a user
error (status 2: restarting would not help) is not restarted.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from kobert_pretrain import heartbeat
from kobert_pretrain.errors import UserError
from kobert_pretrain.heartbeat import Watchdog
from kobert_pretrain.run_dir import EXIT_PREEMPTED

EXIT_USER_ERROR = 2
_FIRST_FAILURE = re.compile(r"Process name: (\S+)\s+Exit code: (-?\d+)")
# Ranks per host: a node has at most a few dozen GPUs; 1024 leaves room for CPU-only emulation and
# catches typos such as slots=99999999999999999999 before horovodrun tries to start them.
MAX_SLOTS = 1024


# ---------------------------------------------------------------------------------- hostfiles


def parse_hostfile(path: str | Path) -> list[tuple[str, int]]:
    """Read a hostfile: `host slots=N` (Horovod's form), `host:N` or `host`, with # comments and blank lines.

    Horovod's own parser rejects comments and blank lines; we accept them and hand Horovod a clean file.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"hostfile not found: {path}") from None
    except UnicodeDecodeError:
        raise UserError(f"hostfile {path} is not UTF-8 text") from None
    hosts = []
    first_line: dict[str, int] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        match = (re.fullmatch(r"(\S+)\s+slots\s*=\s*(\d+)", line) or re.fullmatch(r"([^\s:]+):(\d+)", line)
                 or re.fullmatch(r"([^\s:=]+)", line))
        if match is None:
            raise UserError(f"hostfile {path} line {number}: cannot read {raw.strip()!r}; write 'HOST slots=N'")
        host = match.group(1)
        slots = int(match.group(2)) if match.lastindex and match.lastindex >= 2 else 1
        problem = slots_problem(slots)
        if problem:
            raise UserError(f"hostfile {path} line {number}: {problem} in {raw.strip()!r}")
        if host in first_line:
            raise UserError(f"hostfile {path} line {number}: host {host} is already listed on line "
                            f"{first_line[host]}; list each host once, with all its slots")
        first_line[host] = number
        hosts.append((host, slots))
    if not hosts:
        raise UserError(f"hostfile {path} names no hosts")
    return hosts


def parse_hosts(spec: str) -> list[tuple[str, int]]:
    """`-H node1:8,node2:8` -> [(node1, 8), (node2, 8)]."""
    hosts = []
    for item in spec.split(","):
        item = item.strip()
        match = re.fullmatch(r"([^\s:]+)(?::(\d+))?", item)
        if not item or match is None or (match.group(2) is not None and int(match.group(2)) < 1):
            raise UserError(f"-H {spec!r}: cannot read {item!r}; write HOST:SLOTS,HOST:SLOTS")
        host, slots = match.group(1), int(match.group(2) or 1)
        problem = slots_problem(slots)
        if problem:
            raise UserError(f"-H {spec!r}: {problem} in {item!r}")
        if host in (h for h, _ in hosts):
            raise UserError(f"-H {spec!r}: host {host} is listed twice; list each host once, with all its slots")
        hosts.append((host, slots))
    return hosts


def slots_problem(slots: int) -> str | None:
    """Why `slots` (ranks on one host) is unusable, or None."""
    if not 1 <= slots <= MAX_SLOTS:
        return f"slots must be between 1 and {MAX_SLOTS}, got {slots}"
    return None


def clean_hostfile(hosts: list[tuple[str, int]]) -> str:
    return "".join(f"{host} slots={slots}\n" for host, slots in hosts)


# ---------------------------------------------------------------------------------- supervisor


@dataclass
class LaunchConfig:
    num_proc: int
    hosts: list[tuple[str, int]]
    command: list[str]  # the kobert-pretrain subcommand and its arguments, e.g. ["train", "--config", ...]
    max_restarts: int = 3
    backoff_s: float = 10.0
    max_backoff_s: float = 600.0
    gloo_timeout_s: int = 120
    stall_shutdown_s: int = 600
    horovodrun_args: list[str] = field(default_factory=list)
    watchdog: Watchdog = field(default_factory=Watchdog)  # hang detection from the ranks' heartbeats
    heartbeat_s: float = 1.0


def horovodrun_command(cfg: LaunchConfig, hostfile: Path, resume_auto: bool) -> list[str]:
    horovodrun = Path(sys.executable).with_name("horovodrun")
    command = list(cfg.command)
    if resume_auto:
        command = _with_resume_auto(command)
    return [str(horovodrun) if horovodrun.exists() else "horovodrun", "-np", str(cfg.num_proc),
            "--hostfile", str(hostfile), "--gloo", "--gloo-timeout-seconds", str(cfg.gloo_timeout_s),
            "--stall-check-shutdown-time-seconds", str(cfg.stall_shutdown_s), *cfg.horovodrun_args,
            sys.executable, "-m", "kobert_pretrain", *command]


def _with_resume_auto(command: list[str]) -> list[str]:
    out, skip = [], False
    for arg in command:
        if skip:
            skip = False
            continue
        if arg == "--resume":
            skip = True
            continue
        if arg.startswith("--resume="):
            continue
        out.append(arg)
    return out + ["--resume", "auto"]


class Supervisor:
    def __init__(self, cfg: LaunchConfig):
        if not cfg.command or cfg.command[0] != "train":
            raise UserError("launch runs a training job: kobert-pretrain launch -np N -H ... -- train ARGS")
        if cfg.num_proc < 1:
            raise UserError(f"-np must be at least 1, got {cfg.num_proc}")
        if cfg.num_proc > sum(s for _, s in cfg.hosts):
            raise UserError(f"-np {cfg.num_proc} does not fit the {sum(s for _, s in cfg.hosts)} slot(s) of the hosts")
        problems = [f"{flag} {value:g} must be >= {least}" for flag, value, least in (
            ("--max-restarts", cfg.max_restarts, 0), ("--backoff", cfg.backoff_s, 0),
            ("--gloo-timeout", cfg.gloo_timeout_s, 1), ("--stall-timeout", cfg.stall_shutdown_s, 0),
            ("--watchdog-silence", cfg.watchdog.silence_s, 0), ("--watchdog-hang", cfg.watchdog.hang_s, 0),
            ("--watchdog-slow", cfg.watchdog.slow_s, 0)) if value < least]
        if cfg.watchdog.silence_s and cfg.watchdog.silence_s < 3 * cfg.heartbeat_s:
            problems.append(f"--watchdog-silence {cfg.watchdog.silence_s:g} must be at least 3 heartbeats "
                            f"({3 * cfg.heartbeat_s:g}s)")
        if problems:
            raise UserError("; ".join(problems))
        self.cfg = cfg
        self.proc: subprocess.Popen | None = None
        self.preempted_by: str | None = None
        self.hung: str | None = None  # the watchdog's verdict on the current attempt

    def log(self, message: str) -> None:
        print(f"launch: {message}", file=sys.stderr, flush=True)

    def run(self) -> int:
        with tempfile.TemporaryDirectory(prefix="kobert-launch-") as tmp:
            hostfile = Path(tmp) / "hostfile"
            hostfile.write_text(clean_hostfile(self.cfg.hosts))
            previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)}
            try:
                return self._loop(hostfile)
            finally:
                for s, handler in previous.items():
                    signal.signal(s, handler)

    def _loop(self, hostfile: Path) -> int:
        attempt = 0
        while True:
            command = horovodrun_command(self.cfg, hostfile, resume_auto=attempt > 0)
            self.log(f"attempt {attempt + 1}: {' '.join(command)}")
            started = time.time()
            code, failure, rank_preempted = self._run_once(command)
            seconds = time.time() - started
            if code == 0 and not self.hung:
                self.log(f"job finished after {seconds:.1f}s")
                return 0
            if self.hung:
                failure = None  # the ranks died because the watchdog killed them; the hang is the cause
            elif self.preempted_by or rank_preempted:
                who = self.preempted_by or "a signal to a rank"
                self.log(f"pre-empted by {who}: the ranks saved a checkpoint; not restarting "
                         "(run the same command again to resume)")
                return EXIT_PREEMPTED
            elif failure and failure[1] == EXIT_USER_ERROR or code == EXIT_USER_ERROR:
                self.log("the job failed on a user error (status 2, see above); restarting would not help")
                return EXIT_USER_ERROR
            cause = f"hung: {self.hung}" if self.hung else _describe(code, failure)
            code = code or 1
            if attempt >= self.cfg.max_restarts:
                self.log(f"job failed after {seconds:.1f}s ({cause}); no restarts left ({self.cfg.max_restarts} used)")
                return exit_status(code)
            attempt += 1
            delay = min(self.cfg.max_backoff_s, self.cfg.backoff_s * 2 ** (attempt - 1))
            self.log(f"job failed after {seconds:.1f}s ({cause}); restart {attempt}/{self.cfg.max_restarts} "
                     f"in {delay:.0f}s with --resume auto")
            deadline = time.time() + delay
            while time.time() < deadline and not self.preempted_by:
                time.sleep(min(0.5, max(0.0, deadline - time.time())))
            if self.preempted_by:
                self.log(f"{self.preempted_by} while waiting to restart: not restarting")
                return EXIT_PREEMPTED

    def _run_once(self, command: list[str]) -> tuple[int, tuple[str, int] | None, bool]:
        """Run horovodrun, echoing its output and watching the ranks' heartbeats; return (status, first
        failed rank and code, rank pre-empted). A hung job is killed and `self.hung` says why."""
        env = dict(os.environ)
        if self.cfg.watchdog.enabled:
            env[heartbeat.ENV_INTERVAL] = f"{self.cfg.heartbeat_s:g}"
        watchdog = Watchdog(self.cfg.watchdog.silence_s, self.cfg.watchdog.hang_s, self.cfg.watchdog.hang_factor,
                            self.cfg.watchdog.slow_s)
        self.hung = None
        self.proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     errors="replace", bufsize=1, env=env)
        tail: list[str] = []
        launcher = LauncherTraceback(keep=bool(os.environ.get("KOBERT_DEBUG")))
        lock = threading.Lock()

        def read() -> None:
            for line in self.proc.stdout:
                with lock:
                    if watchdog.feed(line, heartbeat.clock()):
                        continue
                if launcher.feed(line):
                    sys.stderr.write(line)
                tail.append(line)
                del tail[:-200]

        reader = threading.Thread(target=read, name="launch-output", daemon=True)
        reader.start()
        while self.proc.poll() is None:
            time.sleep(0.5)
            with lock:
                verdict = watchdog.verdict(heartbeat.clock()) if not (self.hung or self.preempted_by) else None
            if verdict:
                self.hung = verdict
                self.log(f"watchdog: {verdict}; killing the job")
                _kill_job(self.proc)
        code = self.proc.wait()
        reader.join()
        self.proc = None
        text = "".join(tail)
        match = _FIRST_FAILURE.search(text)
        failure = (match.group(1), int(match.group(2))) if match else None
        summary = launcher.summary()
        if summary and failure is None:
            # With a failed rank our own line says it all; otherwise horovodrun's reason is worth one line.
            self.log(f"horovodrun: {summary}")
        rank_preempted = failure is not None and failure[1] == EXIT_PREEMPTED
        return code, failure, rank_preempted

    def _on_signal(self, signum, frame) -> None:
        name = signal.Signals(signum).name
        self.preempted_by = name
        self.log(f"{name} received: asking the ranks to checkpoint and stop")
        proc = self.proc
        if proc is not None:
            threading.Thread(target=_signal_ranks, args=(proc.pid,), daemon=True).start()


class LauncherTraceback:
    """Holds back horovodrun's own Python traceback and condenses it to its final line.

    horovodrun ends every failed job with a ~20-line traceback of its launcher code (even when a
    rank merely exited with status 2 after printing a one-line error). The ranks' output, which
    Gloo prefixes with `[rank]<stdout>:` / `[rank]<stderr>:`, is never held back, nor is
    anything horovodrun prints before its traceback. `keep=True` (KOBERT_DEBUG) holds nothing.
    """

    def __init__(self, keep: bool = False):
        self.keep = keep
        self.held: list[str] = []

    def feed(self, line: str) -> bool:
        """Whether to echo `line` now."""
        if self.keep or _RANK_OUTPUT.match(line):
            return True
        if not self.held and not line.startswith("Traceback (most recent call last):"):
            return True
        self.held.append(line)
        return False

    def summary(self) -> str | None:
        """The exception line(s) that end the held traceback, joined into one line; None if nothing was held."""
        lines = [ln.rstrip("\n") for ln in self.held]
        last_frame = max((i for i, ln in enumerate(lines) if ln.startswith((" ", "\t", "Traceback "))), default=-1)
        message = " ".join(ln.strip() for ln in lines[last_frame + 1:] if ln.strip())
        return message or None


_RANK_OUTPUT = re.compile(r"^(?:[^\[]{0,40})\[\d+(?:,\d+)?\]<std(?:out|err)>:")


def _signal_ranks(horovodrun_pid: int) -> None:
    """SIGTERM to the local training ranks (the ranks agree on it, so remote ones stop too)."""
    import psutil

    try:
        children = psutil.Process(horovodrun_pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return
    for child in children:
        try:
            cmdline = child.cmdline()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if is_rank_process(cmdline):
            try:
                child.send_signal(signal.SIGTERM)
            except psutil.NoSuchProcess:
                pass


def _kill_job(horovodrun: subprocess.Popen, grace_s: float = 10.0) -> None:
    """End a hung job: SIGKILL the local ranks (a stopped process ignores everything else), then let
    horovodrun tear down the rest (its ssh sessions to remote ranks) and kill it if it does not."""
    import psutil

    try:
        children = psutil.Process(horovodrun.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        children = []
    for child in children:
        try:
            if is_rank_process(child.cmdline()):
                child.kill()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    try:
        horovodrun.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        for process in [*children, horovodrun]:  # horovodrun and everything it started here
            try:
                process.kill()
            except (psutil.NoSuchProcess, ProcessLookupError):
                pass


def is_rank_process(cmdline: list[str]) -> bool:
    """A training rank as this supervisor starts it: `python -m kobert_pretrain train ...`."""
    return cmdline[1:4] == ["-m", "kobert_pretrain", "train"]


def exit_status(code: int) -> int:
    """launch's status for a failed job whose horovodrun ended with `code` (Popen's, negative for a signal).

    A horovodrun killed by signal N gives 128 + N, as a shell reports it (137 for SIGKILL); the
    same convention `_describe` reads in a rank's status. sys.exit(-9) would have exited with 247.
    """
    if code < 0:
        return 128 - code
    return code or 1


def _describe(code: int, failure: tuple[str, int] | None) -> str:
    if failure is None:
        if code < 0:
            try:
                return f"horovodrun was killed by {signal.Signals(-code).name}"
            except ValueError:
                return f"horovodrun was killed by signal {-code}"
        return f"horovodrun exited with status {code}"
    rank, status = failure
    if status > 128:
        try:
            what = f"killed by {signal.Signals(status - 128).name}"
        except ValueError:
            what = f"status {status}"
    elif status < 0:
        what = f"killed by {signal.Signals(-status).name}"
    else:
        what = f"status {status}"
    return f"rank {rank} exited first, {what}"


def launch(cfg: LaunchConfig) -> int:
    return Supervisor(cfg).run()
