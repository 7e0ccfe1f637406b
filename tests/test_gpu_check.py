"""scripts/gpu_check.py's parts that run without a GPU: arguments, step dependencies, the report."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest

from conftest import ROOT

spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "scripts" / "gpu_check.py")
gpu_check = importlib.util.module_from_spec(spec)
sys.modules["gpu_check"] = gpu_check  # dataclasses look their module up there
spec.loader.exec_module(gpu_check)


@pytest.mark.parametrize("argv,needle", [
    (["--only", "install,warp"], "unknown step(s) warp"),
    (["--only", "resume"], "resume need(s) train2"),
    (["--steps", "5"], "--steps must be at least 20"),
])
def test_bad_arguments_are_one_line_errors(argv, needle, capsys):
    with pytest.raises(SystemExit) as e:
        gpu_check.parse_args(argv)
    assert e.value.code == 2
    assert needle in capsys.readouterr().err


def test_out_must_be_new_or_empty(tmp_path, capsys):
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "gpu_check.md").write_text("an earlier report\n")
    with pytest.raises(SystemExit):
        gpu_check.parse_args(["--out", str(tmp_path / "old")])
    assert "exists and is not an empty directory" in capsys.readouterr().err
    assert gpu_check.parse_args(["--out", str(tmp_path / "new")]).only == list(gpu_check.STEPS)


def test_report_from_step_results(tmp_path):
    args = gpu_check.parse_args(["--out", str(tmp_path), "--only", "install,speed"])
    steps = [gpu_check.Step("install", "passed", 3.2, {"gpus": 8, "gpu_cc": "7.0"}),
             gpu_check.Step("speed", "passed", 80.0, {"variants": [
                 {"bucketing": True, "bulk": 15, "micro_batch": 64, "seq_per_s": 250.25, "mean_padded_length": 96.4},
                 {"bucketing": False, "bulk": 1000, "micro_batch": 64, "seq_per_s": 201.0, "mean_padded_length": 128}]}),
             gpu_check.Step("train1")]
    json_path, md_path = gpu_check.write_report(tmp_path, steps, args)
    report = json.loads(json_path.read_text())
    assert report["passed"] is True  # train1 was not asked for
    assert [s["status"] for s in report["steps"]] == ["passed", "passed", "skipped"]
    md = md_path.read_text().splitlines()
    assert "Result: **PASSED**" in md
    assert "| install | passed | 3 | gpus 8, gpu_cc 7.0 |" in md
    assert "| on | 15 | 64 | 250.2 | 96 |" in md and "| off | 1000 | 64 | 201.0 | 128 |" in md


def test_losses_and_replica_lines_are_judged():
    step = gpu_check.Step("train1")
    records = [{"mlm_loss": 7.0 - 0.1 * i, "loss_scale": 1024.0, "skipped_steps": 0} for i in range(20)]
    gpu_check.check_losses(records, 20, step)
    assert step.problems == [] and step.details["mlm_loss_first_last"] == [7.0, pytest.approx(5.1)]
    gpu_check.check_losses(records[:5] + [{"mlm_loss": None}], 20, step)
    assert step.problems == ["6 steps logged, 20 expected", "non-finite MLM loss logged"]
    lines = gpu_check.replica_checks("x\ncheckpoint: step 10: parameters identical on 2 ranks\n"
                                     "checkpoint: step 20: parameters DIFFER on rank 1 (3 of 40 tensors)\n")
    assert lines == ["checkpoint: step 10: parameters identical on 2 ranks",
                     "checkpoint: step 20: parameters DIFFER on rank 1 (3 of 40 tensors)"]


def test_on_a_machine_without_gpu_the_install_step_fails_with_a_report(tmp_path):
    result = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh"), "--out", str(tmp_path / "r"),
                             "--only", "install"], env={"PYTHON": sys.executable, "PATH": "/usr/bin:/bin"},
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 1, result.stderr
    report = json.loads((tmp_path / "r" / "gpu_check.json").read_text())
    install = report["steps"][0]
    assert install["status"] == "failed"
    assert any("no GPU visible to MXNet" in p for p in install["problems"])
    assert "| install | failed |" in (tmp_path / "r" / "gpu_check.md").read_text()
