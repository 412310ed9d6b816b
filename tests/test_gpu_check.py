"""`scripts/gpu_check.sh` on a machine without CUDA (CI): it runs end to end, skips the CUDA parts and still
ends with its JSON summary; and the summary counts what pytest's report says."""
from __future__ import annotations

import importlib.util
import json
import subprocess
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent


def gpu_check_module():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "scripts" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(torch.cuda.is_available(), reason="with CUDA the check measures for minutes: run it by hand")
def test_the_gpu_check_runs_without_cuda_and_ends_with_its_summary(tmp_path):
    done = subprocess.run(["bash", "scripts/gpu_check.sh", "--out", str(tmp_path), "--budget", "300"], cwd=ROOT,
                          capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout)  # stdout holds the summary and nothing else
    assert summary["cuda"] is False and summary["ok"] is True
    tests = summary["tests"]
    assert tests["skipped"] >= 10 and tests["passed"] == tests["failed"] == 0 and tests["exit_status"] == 0
    [row] = summary["benchmark"]["rows"]
    assert (row["shape"], row["precision"], row["layers"]) == ("embedded", "float32", 1)
    detail = json.loads((tmp_path / "bench-gpu.json").read_text())["rows"][0]["serving"]
    # How many of the 8 share a step depends on how fast the loop thread runs beside the submitting one (a
    # busy machine finishes early requests before late ones arrive): that they batch at all is what is checked.
    assert detail["batched_8"]["widest_batch"] >= 2 and detail["serial"]["widest_batch"] == 1
    assert detail["batched_8"]["tokens"] == detail["serial"]["tokens"] > 0


def test_the_summary_counts_passes_skips_failures_and_errors(tmp_path):
    report = tmp_path / "report.xml"
    report.write_text("""<?xml version="1.0" encoding="utf-8"?>
<testsuites><testsuite name="pytest" tests="4">
  <testcase classname="tests.test_cuda" name="test_a"/>
  <testcase classname="tests.test_cuda" name="test_b"><skipped message="needs a CUDA device"/></testcase>
  <testcase classname="tests.test_cuda" name="test_c">
    <failure message="AssertionError: 1 != 2&#10;more">tb</failure></testcase>
  <testcase classname="tests.test_cuda" name="test_d"><error message="fixture failed">tb</error></testcase>
</testsuite></testsuites>""")
    counts = gpu_check_module().junit_counts(report)
    assert (counts["passed"], counts["skipped"], counts["failed"]) == (1, 1, 2)
    assert counts["failures"] == [{"test": "tests.test_cuda::test_c", "message": "AssertionError: 1 != 2"},
                                  {"test": "tests.test_cuda::test_d", "message": "fixture failed"}]


def test_the_budget_is_checked():
    done = subprocess.run(["bash", "scripts/gpu_check.sh", "--budget", "900"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2 and "--budget must be in (0, 480] seconds, got 900.0" in done.stderr
