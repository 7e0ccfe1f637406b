"""Corpus preparation speed and memory, against reading the same files measured in the same run.

    python benchmarks/bench_prepare.py [--raw DIR_OR_FILE] [--splitters-only]

Prints: reading the inputs alone (readers, no filters) in MB/s as the baseline;
each phase of `kobert-pretrain prepare` (one worker) in MB of input per second
and its ratio to the baseline; the whole stage with 1 and 2 workers (scaling);
the sentence splitters alone (kiwipiepy, kss when installed, the rule) in
characters/s with their quality on a hand-labelled set and their round-trip
failures on the input; peak RSS of a 1-worker run (kiwi; the rule splitter on
the input and on 4 copies of it, for growth with the corpus); memory of the corpus-wide
dedup pass per document on synthetic signatures. Not a test: numbers depend on
the machine. `--splitters-only` runs only the splitter part (it needs no more
than kiwipiepy and, optionally, kss, so it can run in a separate venv with kss).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import ROOT, machine  # noqa: E402

from kobert_pretrain.config import PrepareConfig  # noqa: E402
from kobert_pretrain.prepare.filters import Filters  # noqa: E402
from kobert_pretrain.prepare.readers import ReadCounts, iter_documents, plan_tasks  # noqa: E402
from kobert_pretrain.prepare.split import rule_split, same_text  # noqa: E402

SHARED_RAW = ROOT.parent / "shared" / "raw"

# Hand-labelled paragraphs with their correct sentences: what a Korean splitter must get right.
LABELLED = [
    ("원주율은 약 3.14이다. 그 값은 무리수다.", ["원주율은 약 3.14이다.", "그 값은 무리수다."]),
    ("그는 \"정말이야?\"라고 물었다. 나는 웃었다.", ["그는 \"정말이야?\"라고 물었다.", "나는 웃었다."]),
    ("오늘은 날씨가 좋다 내일은 비가 온다고 한다", ["오늘은 날씨가 좋다", "내일은 비가 온다고 한다"]),
    ("U.S. 정부는 1.5배 늘었다고 발표했다. 시장은 놀랐다!", ["U.S. 정부는 1.5배 늘었다고 발표했다.", "시장은 놀랐다!"]),
    ("제1조 대한민국은 민주공화국이다. 제2조 주권은 국민에게 있다.",
     ["제1조 대한민국은 민주공화국이다.", "제2조 주권은 국민에게 있다."]),
    ("배가 고팠다. 그래서 밥을 먹었다… 그리고 잤다.", ["배가 고팠다.", "그래서 밥을 먹었다…", "그리고 잤다."]),
    ("\"어디 가니?\" 엄마가 물었다. \"학교요.\"", ["\"어디 가니?\" 엄마가 물었다.", "\"학교요.\""]),
    ("이 책은 재미있다ㅋㅋ 다음 권도 읽어야지", ["이 책은 재미있다ㅋㅋ", "다음 권도 읽어야지"]),
    ("김 교수(서울대)는 \"연구가 끝났다\"고 말했다. 발표는 다음 달이다.",
     ["김 교수(서울대)는 \"연구가 끝났다\"고 말했다.", "발표는 다음 달이다."]),
    ("2022년 12월 25일 오후 3시. 행사가 시작됐다.", ["2022년 12월 25일 오후 3시.", "행사가 시작됐다."]),
]


def raw_files(raw: str | None) -> list[Path]:
    root = Path(raw) if raw else SHARED_RAW
    if root.is_file():
        return [root]
    if root.is_dir():
        return sorted(p for p in root.iterdir() if p.suffix in (".csv", ".jsonl", ".txt", ".gz", ".zst", ".xz"))
    from kobert_pretrain.demo import write_demo_corpus

    return [write_demo_corpus(Path(tempfile.mkdtemp()) / "demo.txt")]


def read_only(files: list[Path]) -> tuple[int, int, float]:
    """Baseline: documents and bytes of reading the inputs with the stage's readers, nothing else."""
    counts = ReadCounts()
    started = time.perf_counter()
    documents = 0
    for task in plan_tasks(files, "auto", "blank_line", 8_000_000):
        for segment in task:
            documents += sum(1 for _ in iter_documents(segment, "blank_line", "", counts))
    return documents, counts.input_bytes, time.perf_counter() - started


def paragraphs(files: list[Path], limit_chars: int) -> list[str]:
    """Cleaned paragraphs of the input, about `limit_chars` characters taken evenly from every file."""
    filters = Filters(PrepareConfig())
    out = []
    for path in files:
        total = 0
        counts = ReadCounts()
        for task in plan_tasks([path], "auto", "blank_line", 8_000_000):
            for segment in task:
                for doc in iter_documents(segment, "blank_line", "", counts):
                    for line in filters.clean(doc):
                        out.append(line)
                        total += len(line)
                    if total >= limit_chars / len(files):
                        break
    return out


def splitters() -> dict:
    found = {"rule": rule_split}
    try:
        import warnings

        from kiwipiepy import Kiwi

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            kiwi = Kiwi(num_workers=0)  # one thread
        found["kiwi"] = lambda text: [s.text.strip() for s in kiwi.split_into_sents(text) if s.text.strip()]
    except ImportError:
        print("kiwipiepy is not installed: skipped")
    try:
        import kss

        for backend in ("fast", "punct", "pecab"):
            found[f"kss-{backend}"] = (lambda b: lambda text: kss.split_sentences(text, backend=b, num_workers=1))(
                backend)
    except ImportError:
        print("kss is not installed here (pip install kss==6.0.6 in a separate venv, then --splitters-only)")
    return found


def bench_splitters(files: list[Path], chars: int) -> None:
    sample = paragraphs(files, chars)
    total = sum(map(len, sample))
    print(f"\nsplitters alone on {len(sample):,} cleaned paragraphs ({total:,} characters) of the input, one thread:")
    print(f"{'splitter':<12} {'chars/s':>10} {'labelled ok':>12} {'round-trip failures':>20} {'sentences':>10}")
    for name, split in splitters().items():
        split(sample[0])  # warm-up (model loading is not counted)
        subset = sample if not name.endswith("pecab") else sample[: max(1, len(sample) // 100)]
        started = time.perf_counter()
        results = [split(p) for p in subset]
        seconds = time.perf_counter() - started
        speed = sum(map(len, subset)) / seconds
        failures = sum(not same_text(r, p) for r, p in zip(results, subset))
        labelled = sum(split(text) == expected for text, expected in LABELLED)
        note = " (1/100 of the sample: slow)" if len(subset) < len(sample) else ""
        print(f"{name:<12} {speed:>10,.0f} {labelled:>6}/{len(LABELLED):<5} {failures:>10}/{len(subset):<9} "
              f"{sum(map(len, results)):>10,}{note}")


def run_stage(files: list[Path], out: Path, workers: int) -> dict:
    from kobert_pretrain.prepare import prepare

    cfg = dataclasses.replace(PrepareConfig(), input=[str(f) for f in files], out=str(out), workers=workers,
                              chunk_mb=0.5)
    started = time.perf_counter()
    prepare(cfg)
    report = json.loads((out / "report.json").read_text())
    report["total_seconds"] = time.perf_counter() - started
    return report


# A small parent for the measured command: ru_maxrss survives exec, so a child forked from this
# benchmark (hundreds of MB, kiwipiepy loaded) would report the benchmark's size, not its own.
_LAUNCHER = """
import os, sys
pid = os.fork()
if pid == 0:
    os.execv(sys.argv[1], sys.argv[1:])
_, status, usage = os.wait4(pid, 0)
print(usage.ru_maxrss / 1024, os.waitstatus_to_exitcode(status))
"""


def peak_rss_fresh(cmd: list[str]) -> tuple[float, float]:
    """(peak RSS in MB, seconds) of `cmd`, started from a fresh 10 MB interpreter."""
    import subprocess

    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", _LAUNCHER, *cmd], capture_output=True, text=True, cwd=ROOT)
    rss, code = result.stdout.split()
    if int(code):
        sys.exit(f"command failed ({code}): {' '.join(cmd)}")
    return float(rss), time.perf_counter() - started


def bench_rss(files: list[Path]) -> None:
    import shutil

    print(f"\n{'peak RSS, 1 worker, whole stage':<40} {'MB':>6} {'seconds':>8}")
    with tempfile.TemporaryDirectory() as tmp:
        copies = []
        for c in range(4):  # real copies: resolve_inputs would fold symbolic links into one file
            for f in files:
                copies.append(Path(tmp) / f"copy{c}" / f.name)
                copies[-1].parent.mkdir(exist_ok=True)
                shutil.copyfile(f, copies[-1])
        for label, splitter, inputs in (("kiwi, the input", "kiwi", files), ("rule, the input", "rule", files),
                                        ("rule, 4 copies of the input", "rule", copies)):
            out = Path(tmp) / f"out-{splitter}{len(inputs)}"
            cmd = [sys.executable, "-m", "kobert_pretrain", "prepare", "--out", str(out),
                   f"--prepare.splitter={splitter}", "--prepare.chunk_mb=0.5",
                   *[a for f in inputs for a in ("--input", str(f))]]
            rss, seconds = peak_rss_fresh(cmd)
            print(f"{label:<40} {rss:>6.0f} {seconds:>8.1f}")


def bench_dedup_memory(docs: int = 200_000, num_perm: int = 128) -> None:
    """Peak Python/numpy allocation of the corpus-wide near-duplicate pass, per document."""
    import tracemalloc

    import numpy as np

    from kobert_pretrain.prepare import dedup as dd

    bands, rows = dd.lsh_bands(0.8, num_perm)
    rng = np.random.default_rng(0)
    tasks = 20
    signatures = [rng.integers(0, 2**32, size=(docs // tasks, num_perm), dtype=np.uint32) for _ in range(tasks)]
    keys = [rng.integers(0, 2**63, size=(docs // tasks, bands), dtype=np.uint64) for _ in range(tasks)]
    hashes = [k[:, 0].copy() for k in keys]
    with tempfile.TemporaryDirectory() as tmp:
        # On disk and memory-mapped, as the stage reads its work files.
        mapped = []
        for name, parts in (("sig", signatures), ("bands", keys), ("hash", hashes)):
            loaded = []
            for i, part in enumerate(parts):
                np.save(Path(tmp) / f"{name}{i}.npy", part)
                loaded.append(np.load(Path(tmp) / f"{name}{i}.npy", mmap_mode="r"))
            mapped.append(loaded)
        del signatures, keys, hashes
        tracemalloc.start()
        started = time.perf_counter()
        leader = dd.bucketed_first_of_group(mapped[2])
        alive = leader == np.arange(len(leader))
        dd.near_duplicates(mapped[1], mapped[0], alive, 0.8)
        seconds = time.perf_counter() - started
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    disk = 4 * num_perm + 8 * bands + 8 + 4
    print(f"\ndedup index, {docs:,} synthetic documents, {num_perm} permutations, {bands} bands x {rows} rows:")
    print(f"  on disk (work files): {disk} bytes/document plus 12 bytes/sentence -> "
          f"{disk * 10e6 / 1e9:.1f} GB for 10M documents")
    print(f"  in memory, exact + near pass: peak {peak / 1e6:.0f} MB = {peak / docs:.0f} bytes/document -> "
          f"{peak / docs * 10e6 / 1e9:.1f} GB for 10M documents; {docs / seconds:,.0f} documents/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--raw", help="raw input file or directory (default: ../shared/raw, else the demo corpus)")
    parser.add_argument("--splitter-chars", type=int, default=150_000, help="characters for the splitter timing")
    parser.add_argument("--splitters-only", action="store_true")
    parser.add_argument("--memory-only", action="store_true", help="only the peak RSS and dedup memory parts")
    args = parser.parse_args()
    files = raw_files(args.raw)
    print(machine())
    print(f"input: {len(files)} file(s), {sum(f.stat().st_size for f in files) / 1e6:.1f} MB: "
          + ", ".join(f.name for f in files))
    if args.splitters_only:
        bench_splitters(files, args.splitter_chars)
        return
    if args.memory_only:
        bench_rss(files)
        bench_dedup_memory()
        return
    documents, nbytes, seconds = read_only(files)
    base = nbytes / 1e6 / seconds
    print(f"\nbaseline: reading {documents:,} documents ({nbytes / 1e6:.1f} MB) with the readers: {base:.1f} MB/s")
    with tempfile.TemporaryDirectory() as tmp:
        reports = {w: run_stage(files, Path(tmp) / f"out{w}", w) for w in (1, 2)}
    mb = reports[1]["input"]["bytes"] / 1e6
    print(f"\n{'phase (1 worker)':<22} {'seconds':>8} {'MB/s':>8} {'ratio to reading':>17}")
    for phase, s in reports[1]["seconds"].items():
        print(f"{phase:<22} {s:>8.2f} {mb / s:>8.2f} {mb / s / base:>17.4f}")
    for w, report in reports.items():
        t = report["total_seconds"]
        print(f"{'whole stage, ' + str(w) + ' worker(s)':<22} {t:>8.2f} {mb / t:>8.2f} {mb / t / base:>17.4f}"
              + (f"   {reports[1]['total_seconds'] / t:.2f}x one worker" if w > 1 else ""))
    o = reports[1]["output"]
    print(f"output: {o['documents']:,} documents, {o['sentences']:,} sentences, {o['chars']:,} characters")
    bench_splitters(files, args.splitter_chars)
    bench_rss(files)
    bench_dedup_memory()


if __name__ == "__main__":
    main()
