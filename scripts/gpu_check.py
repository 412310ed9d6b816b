"""The GPU check's entry (`bash scripts/gpu_check.sh` runs it): the CUDA-marked tests, then the GPU benchmark,
then one JSON summary on stdout (everything else goes to stderr and to `--out`).

    python scripts/gpu_check.py [--out DIR] [--budget 470]

Made for the machine such checks get: one GPU, no network, the working tree without the venv or model
weights, torch + transformers + peft + accelerate + pytest but not gradio, sqlalchemy or (perhaps)
bitsandbytes. So only `CUDA_TEST_FILES` are collected (they import neither the app nor the store) and the
models are random at real shapes (`tests/real_shapes.py`). The whole check stays within `--budget` seconds
(8 minutes at most): the tests get `TEST_SHARE` of it, the benchmark what is left.

Without CUDA it still runs end to end: the tests are collected and skipped, the benchmark runs its
`--smoke` (the CPU, one layer), and the summary says `"cuda": false`. Exit status: 0 when nothing failed.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import xml.etree.ElementTree as ElementTree
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CUDA_TEST_FILES = ["tests/test_cuda.py"]
TEST_SHARE = 0.5
HEADLINE = ("shape", "precision", "layers")


def log(*parts) -> None:
    print(*parts, file=sys.stderr, flush=True)


def junit_counts(path: Path) -> dict:
    """Passed / failed / skipped counts and each failure's test id and first message line, from pytest's
    `--junitxml` report."""
    root = ElementTree.parse(path).getroot()
    counts = {"passed": 0, "failed": 0, "skipped": 0, "failures": []}
    for case in root.iter("testcase"):
        outcome = next((child for child in case if child.tag in ("failure", "error", "skipped")), None)
        if outcome is None:
            counts["passed"] += 1
        elif outcome.tag == "skipped":
            counts["skipped"] += 1
        else:
            counts["failed"] += 1
            message = (outcome.get("message") or outcome.text or "").strip().splitlines()
            counts["failures"].append({"test": f"{case.get('classname')}::{case.get('name')}",
                                       "message": message[0][:300] if message else outcome.tag})
    return counts


def run(command: list[str], timeout: float, out_file: Path) -> tuple[int | None, str]:
    """Run `command` from the project root (its stderr to `out_file`, echoed to ours at the end); the exit
    status (None when it ran past `timeout`) and its stdout."""
    log("$", " ".join(command))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    try:
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=max(timeout, 1), env=env)
    except subprocess.TimeoutExpired as expired:
        out_file.write_text(_text(expired.stderr))
        return None, _text(expired.stdout)
    out_file.write_text(done.stderr)
    log(done.stderr[-4000:])
    return done.returncode, done.stdout


def _text(value) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else (value or "")


def check(out: Path, budget_s: float) -> dict:
    import torch

    started = time.monotonic()
    cuda = torch.cuda.is_available()
    summary: dict = {"cuda": cuda, "device": torch.cuda.get_device_name(0) if cuda else None,
                     "torch": torch.__version__, "python": sys.version.split()[0]}
    try:
        import bitsandbytes  # noqa: F401
        summary["bitsandbytes"] = True
    except Exception:  # an ImportError, or a bitsandbytes that fails to find its CUDA libraries
        summary["bitsandbytes"] = False

    junit = out / "cuda-tests.xml"
    # `-o addopts=`: not the project's two xdist workers (the device machine has no pytest-xdist, one GPU).
    status, stdout = run([sys.executable, "-m", "pytest", "-o", "addopts=", "-p", "no:cacheprovider",
                          *CUDA_TEST_FILES, "-m", "cuda", "-q", "-rs", f"--junitxml={junit}"],
                         budget_s * TEST_SHARE, out / "cuda-tests.stderr")
    (out / "cuda-tests.stdout").write_text(stdout)
    log(stdout[-6000:])
    tests = junit_counts(junit) if junit.is_file() else {"passed": 0, "failed": 0, "skipped": 0, "failures": []}
    tests["exit_status"] = status
    if status is None:
        tests["failures"].append({"test": "pytest", "message": f"ran past {budget_s * TEST_SHARE:.0f} s"})
    summary["tests"] = tests

    remaining = budget_s - (time.monotonic() - started)
    command = [sys.executable, "benchmarks/bench_gpu.py", "--json"]
    if not cuda:
        command += ["--smoke", "--shapes", "embedded"]
    status, stdout = run(command, remaining, out / "bench-gpu.stderr")
    (out / "bench-gpu.json").write_text(stdout)
    benchmark: dict = {"exit_status": status}
    try:
        document = json.loads(stdout)
    except json.JSONDecodeError:
        benchmark["error"] = f"ran past {remaining:.0f} s" if status is None else "no JSON on stdout"
    else:
        benchmark["note"] = document.get("smoke") or document.get("int8") or document.get("skipped")
        benchmark["rows"] = [{**{k: row[k] for k in HEADLINE},
                              "mixed_8_over_base": row["experts"]["mixed_8_over_base"],
                              "base_tokens_per_s_8": row["experts"]["base_tokens_per_s_8"],
                              "serving_speedup_8": row["serving"]["speedup_8"],
                              "batched_8_tokens_per_s": row["serving"]["batched_8"]["tokens_per_s"],
                              "peak_memory_gib": row.get("peak_memory_gib")} for row in document["rows"]]
    summary["benchmark"] = benchmark
    summary["seconds"] = round(time.monotonic() - started, 1)
    summary["ok"] = (tests["exit_status"] == 0 and tests["failed"] == 0 and status == 0 and "rows" in benchmark)
    summary["details"] = str(out)
    return summary


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=os.environ.get("OUT") or str(ROOT / "gpu_check_out"),
                        help="where the test report, logs and the benchmark's JSON go (default: $OUT, else "
                             "./gpu_check_out)")
    parser.add_argument("--budget", type=float, default=470.0,
                        help="seconds for the whole check (tests and benchmark), at most 480")
    args = parser.parse_args(argv)
    if not 0 < args.budget <= 480:
        parser.error(f"--budget must be in (0, 480] seconds, got {args.budget}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    summary = check(out, args.budget)
    print(json.dumps(summary, indent=2))
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
