"""The `prepare` stage end to end: exact output, determinism over workers, dry run, resume, errors."""

from __future__ import annotations

import errno
import json
import shutil
from pathlib import Path

import pytest
from conftest import ROOT, assert_one_line_error, run_cli, tree_bytes

from kobert_pretrain.config import load_config
from kobert_pretrain.errors import UserError
from kobert_pretrain.prepare import build, prepare, tasks, workdir
from kobert_pretrain.prepare.readers import plan_tasks
from kobert_pretrain.prepare.split import Splitter
from kobert_pretrain.text import resolve_inputs
from test_prepare_dedup import RAIN_A, RAIN_B, rain_a_retitled

FOOTER = "ⓒ 한국뉴스 무단전재 및 재배포 금지"


def config(inputs, out, *overrides: str):
    inputs = [inputs] if isinstance(inputs, (str, Path)) else inputs
    args = [f"--prepare.input={','.join(map(str, inputs))}", f"--prepare.out={out}", "--prepare.splitter=rule",
            *overrides]
    return load_config(ROOT / "configs" / "debug.toml", args).prepare


def news_corpus(directory: Path) -> Path:
    """A JSONL crawl: articles with a shared footer, an exact copy, a re-headlined copy, junk."""
    articles = [f"{i}번째 기사입니다. 오늘 {i}시 {i * 7}분에 {i}번 사건이 일어났다고 경찰이 밝혔다.\n{FOOTER}"
                for i in range(6)]
    records = [
        RAIN_A + "\n" + FOOTER,
        *articles[:3],
        RAIN_B + "\n" + FOOTER,
        articles[1],  # an exact copy
        rain_a_retitled() + "\n" + FOOTER,  # a copy with a changed headline
        *articles[3:],
        "짧다",  # too short
        "자세한 내용은 https://news.example.com/a/1 에서 확인할 수 있다고 회사 측은 전했다!!!!!!",
    ]
    path = directory / "news.jsonl"
    path.write_text("".join(json.dumps({"text": r}, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def numbered_documents(path: Path, i: int, n: int) -> Path:
    """n documents of two sentences that share no 5-character shingles with each other to speak of."""
    docs = [f"{i}-{j}번 문서의 수치는 " + " ".join(str((i * n + j) * k % 9973) for k in range(1, 13)) + "이다. 끝.\n\n"
            for j in range(n)]
    path.write_text("".join(docs), encoding="utf-8")
    return path


def output_text(out: Path) -> str:
    return "".join(p.read_text(encoding="utf-8") for p in sorted((out / "text").glob("part-*.txt")))


def test_news_corpus_exact_output(tmp_path):
    out = prepare(config(news_corpus(tmp_path), tmp_path / "out", "--prepare.boilerplate_min_docs=5"))
    expected_articles = [f"{i}번째 기사입니다.\n오늘 {i}시 {i * 7}분에 {i}번 사건이 일어났다고 경찰이 밝혔다.\n\n"
                         for i in range(6)]
    rule = lambda text: "\n".join(s for line in text.split("\n") for s in Splitter("rule").split(line))  # noqa
    assert output_text(out) == (
        rule(RAIN_A) + "\n\n" + "".join(expected_articles[:3]) + rule(RAIN_B) + "\n\n" + "".join(expected_articles[3:])
        + "자세한 내용은 에서 확인할 수 있다고 회사 측은 전했다!!!\n\n"
    )
    report = json.loads((out / "report.json").read_text())
    assert report["input"]["documents"] == 12 and report["output"]["documents"] == 9
    assert report["filters"]["boilerplate"]["units"] == 10  # the footer, in every document but the last two
    assert report["filters"]["boilerplate"]["samples"][0] == FOOTER
    assert report["filters"]["short_document"]["units"] == 1
    assert report["filters"]["url"]["samples"] == ["https://news.example.com/a/1"]
    assert report["filters"]["repeat"]["samples"] == ["!!!!!!"]
    assert (report["dedup"]["exact"], report["dedup"]["near"]) == (1, 1)
    assert report["dedup"]["samples"]["near"][0]["kept"].startswith("서울 전역에 호우경보 발령")
    assert report["dedup"]["samples"]["near"][0]["removed"].startswith("[속보]")
    assert [p["name"] for p in report["parts"]] == ["text/part-00000.txt"]
    html = (out / "report.html").read_text(encoding="utf-8")
    assert html.count("data:image/png;base64,") == 4 and FOOTER in html
    assert json.loads((out / "config.json").read_text())["boilerplate_min_docs"] == 5
    assert not workdir.work_dir_of(out).exists()


def without_timings(tree: dict[str, bytes]) -> dict[str, bytes]:
    tree = dict(tree)
    report = json.loads(tree.pop("report.json"))
    report.pop("seconds")
    tree.pop("report.html")
    return {**tree, "report.json": json.dumps(report, sort_keys=True).encode()}


def test_same_bytes_with_one_and_two_workers(tmp_path):
    inputs = [news_corpus(tmp_path)]
    inputs += [numbered_documents(tmp_path / f"doc{i}.txt", i, 40) for i in range(3)]
    outs = {}
    for workers in (1, 2):
        cfg = config(inputs, tmp_path / f"out{workers}", f"--prepare.workers={workers}", "--prepare.chunk_mb=0.002",
                     "--prepare.part_mb=0.003")
        outs[workers] = prepare(cfg)
    one, two = (without_timings(tree_bytes(outs[w])) for w in (1, 2))
    assert one == two
    report = json.loads(one["report.json"])
    assert report["output"]["documents"] == 9 + 120
    assert len(report["parts"]) > 2 and max(p["bytes"] for p in report["parts"]) <= 3000
    assert len(plan_tasks(resolve_inputs(list(map(str, inputs))), "auto", "blank_line", 2000)) > 4


def test_parts_feed_vocab_and_shards_directly(tmp_path, debug_vocab):
    from kobert_pretrain.shards import build_shards
    from conftest import shards_config

    out = prepare(config(news_corpus(tmp_path), tmp_path / "out"))
    shards = build_shards(shards_config(out / "text", debug_vocab, tmp_path / "shards"))
    index = json.loads((shards / "index.json").read_text())
    assert index["num_documents"] == 9


def test_dry_run_writes_only_the_report(tmp_path):
    out = prepare(config(news_corpus(tmp_path), tmp_path / "out"), dry_run=True)
    assert sorted(p.name for p in out.iterdir()) == ["report.html", "report.json"]
    report = json.loads((out / "report.json").read_text())
    assert report["dry_run"] and report["output"]["documents"] == 9


def test_resume_after_a_kill_skips_finished_tasks_and_gives_the_same_output(tmp_path, monkeypatch):
    inputs = [numbered_documents(tmp_path / f"doc{i}.txt", i, 15) for i in range(4)]
    args = ("--prepare.chunk_mb=0.001",)
    reference = prepare(config(inputs, tmp_path / "reference", *args))

    real_filter = tasks.run_filter

    def killed_on_task_2(t, ctx=None):
        if t == 2:
            raise KeyboardInterrupt
        return real_filter(t, ctx=ctx)

    monkeypatch.setattr(tasks, "run_filter", killed_on_task_2)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        prepare(config(inputs, out, *args))
    assert not out.exists()
    work = workdir.work_dir_of(out)
    assert sorted(p.name for p in (work / "filter").iterdir()) == ["task-000000", "task-000001"]
    assert [p.name for p in (work / "filter").iterdir() if ".tmp-" in p.name] == []

    num_tasks = len(list((work / "clean").iterdir()))
    assert num_tasks > 3
    published = []
    real_publish = workdir.publish
    monkeypatch.setattr(workdir, "publish", lambda tmp, final, meta: published.append(final.relative_to(work))
                        or real_publish(tmp, final, meta))
    monkeypatch.setattr(tasks, "run_filter", real_filter)
    prepare(config(inputs, out, *args))
    # Only what the kill left undone was redone: no clean task, the filter tasks from 2 on, the dedup.
    assert published == [Path("filter") / f"task-{t:06d}" for t in range(2, num_tasks)] + [Path("dedup")]
    assert without_timings(tree_bytes(out)) == without_timings(tree_bytes(reference))
    assert not work.exists()


def test_resume_refuses_work_of_other_settings(tmp_path):
    inputs = news_corpus(tmp_path)
    out = tmp_path / "out"
    work = workdir.work_dir_of(out)
    work.mkdir()
    (work / workdir.PLAN_FILE).write_text(json.dumps({"fingerprint": "other"}))
    with pytest.raises(UserError, match="holds an interrupted prepare of other inputs or settings"):
        prepare(config(inputs, out))


def test_full_disk_leaves_no_output_and_keeps_the_work(tmp_path, monkeypatch):
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(build, "write_report", full)
    out = tmp_path / "out"
    with pytest.raises(UserError, match=r"no space left on device while writing .*out; the finished work is kept"):
        prepare(config(news_corpus(tmp_path), out))
    assert not out.exists()
    assert (workdir.work_dir_of(out) / "dedup").is_dir()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out.tmp")] == []


def test_nothing_left_is_one_line(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text('{"text": "짧다"}\n{"text": 1}\n', encoding="utf-8")
    result = run_cli("prepare", "--input", path, "--out", tmp_path / "out", "--prepare.splitter=rule")
    assert_one_line_error(result, "no text is left", "min_document_chars")
    assert not (tmp_path / "out").exists() and not workdir.work_dir_of(tmp_path / "out").exists()


def test_only_bad_records_is_one_line(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text('{"text": "깨진\n{"body": 3}\n', encoding="utf-8")
    result = run_cli("prepare", "--input", path, "--out", tmp_path / "out", "--prepare.splitter=rule")
    assert_one_line_error(result, "no document could be read", "bad record(s)")


@pytest.mark.parametrize("case", ["missing input", "out is a file", "out not empty", "bad format", "bad field"])
def test_user_errors_are_one_line(tmp_path, case):
    corpus = tmp_path / "a.txt"
    corpus.write_text("문서 하나는 충분히 길게 적었다.\n", encoding="utf-8")
    out = tmp_path / "out"
    args = ["prepare", "--input", corpus, "--out", out]
    needle = {"missing input": "input not found", "out is a file": "is a file, not a directory",
              "out not empty": "already holds files", "bad format": "invalid choice",
              "bad field": "prepare.near_dup_threshold=0.3"}[case]
    if case == "missing input":
        args[2] = tmp_path / "nope.txt"
    elif case == "out is a file":
        out.write_text("x")
    elif case == "out not empty":
        out.mkdir()
        (out / "keep.txt").write_text("x")
    elif case == "bad format":
        args += ["--format", "xml"]
    else:
        args += ["--prepare.near_dup_threshold=0.3"]
    result = run_cli(*args)
    if case == "bad format":
        assert result.returncode == 2 and needle in result.stderr
        return
    assert_one_line_error(result, needle)
    if case == "out not empty":
        assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]


def test_cli_writes_the_corpus_and_says_where(tmp_path):
    result = run_cli("prepare", "--config", ROOT / "configs" / "debug.toml", "--input", news_corpus(tmp_path),
                     "--out", tmp_path / "out", "--prepare.splitter=rule", "--workers", "2")
    assert result.returncode == 0, result.stderr
    assert f"report {tmp_path / 'out' / 'report.html'}" in result.stderr
    assert "use it as --input of vocab and shards" in result.stderr
    assert (tmp_path / "out" / "text" / "part-00000.txt").is_file()


SHARED_RAW = ROOT.parent / "shared" / "raw"


def test_shared_raw_prepare_vocab_shards_train(tmp_path):
    """prepare (kiwi) -> vocab -> shards -> train on a subset of ../shared/raw."""
    if not SHARED_RAW.is_dir():
        pytest.skip("../shared/raw is not present")
    import csv

    csv.field_size_limit(1 << 28)
    subset = tmp_path / "raw"
    subset.mkdir()
    for name in ("wikinews.csv", "fairytale01.csv"):
        with open(SHARED_RAW / name, encoding="utf-8", newline="") as f:
            rows = list(csv.reader(f))
        with open(subset / name, "w", encoding="utf-8", newline="") as f:
            csv.writer(f).writerows(rows[:21])  # the header and 20 records
    (subset / "copy.csv").write_bytes((subset / "wikinews.csv").read_bytes())  # every article twice
    corpus = tmp_path / "corpus"
    result = run_cli("prepare", "--config", ROOT / "configs" / "debug.toml", "--input", subset, "--out", corpus)
    assert result.returncode == 0, result.stderr
    report = json.loads((corpus / "report.json").read_text())
    assert report["input"]["documents"] == 60 and report["input"]["bad_records"] == {}
    assert report["dedup"]["exact"] >= 20
    assert report["splitter"]["fallbacks"] < report["splitter"]["paragraphs"] / 100
    steps = [
        ("vocab", "--input", corpus / "text", "--out", tmp_path / "vocab", "--character-coverage", "0.995"),
        ("shards", "--input", corpus / "text", "--vocab", tmp_path / "vocab", "--out", tmp_path / "shards"),
        ("train", "--shards", tmp_path / "shards", "--out", tmp_path / "run", "--max-steps", "2",
         "--train.micro_batch_size=4", "--checkpoint.interval=2"),
    ]
    for step in steps:
        result = run_cli(step[0], "--config", ROOT / "configs" / "debug.toml", *step[1:])
        assert result.returncode == 0, (step[0], result.stderr[-2000:])
    assert (tmp_path / "run" / "checkpoints").is_dir()
    shutil.rmtree(tmp_path / "run")


def test_config_reports_every_problem_at_once():
    from kobert_pretrain.errors import ConfigError

    with pytest.raises(ConfigError) as e:
        load_config(None, ["--prepare.input=a", "--prepare.out=b", "--prepare.workers=0", "--prepare.splitter=kss",
                           "--prepare.min_document_hangul=1.5", "--prepare.boilerplate_min_docs=1"],
                    validate=("prepare",))
    assert e.value.problems == [
        "prepare.splitter='kss': must be one of kiwi, rule",
        "prepare.boilerplate_min_docs=1: would drop every line; use >= 2, or 0 for off",
        "prepare.min_document_hangul=1.5: must be in [0, 1]",
        "prepare.workers=0: must be >= 1",
    ]


@pytest.mark.slow
def test_sigkill_mid_run_then_the_same_command_resumes(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    inputs = [numbered_documents(tmp_path / f"doc{i}.txt", i, 12) for i in range(6)]
    args = [sys.executable, "-m", "kobert_pretrain", "prepare", "--config", str(ROOT / "configs" / "debug.toml"),
            *[a for p in inputs for a in ("--input", str(p))], "--out", str(tmp_path / "out"),
            "--prepare.chunk_mb=0.0005"]
    reference = prepare(config(inputs, tmp_path / "reference", "--prepare.chunk_mb=0.0005",
                               "--prepare.splitter=kiwi"))
    work = workdir.work_dir_of(tmp_path / "out")
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while len(list((work / "clean").glob("task-??????"))) < 2 and time.time() < deadline:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "out").exists()
    done = len(list((work / "clean").glob("task-??????")))
    assert 2 <= done < len(plan_tasks([p.resolve() for p in inputs], "auto", "blank_line", 500))
    result = run_cli(*args[3:])
    assert result.returncode == 0, result.stderr
    assert without_timings(tree_bytes(tmp_path / "out")) == without_timings(tree_bytes(reference))
    assert not work.exists()
