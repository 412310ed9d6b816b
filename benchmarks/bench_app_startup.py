"""Start-up time of the app: from `python app.py` to a usable page and a chat reply.

Each run starts a fresh process (`python app.py --port P`, the embedded model and shipped experts, the
converted model already cached) and measures from just before the process starts until
  page        GET / answers 200 (the page is usable: the panel and the chat work without the model),
  first token the chat API (`/chat` via gradio_client) has streamed the first piece of a reply,
  reply       that reply is complete (8 new tokens).
The page is served before torch and transformers are imported (the model loads once the page answers), so
the target is on the page: at most 6 s, median of the runs, on the project's 2-core CPU machine; the first
reply's times stand beside it. The machine is shared, so each run also reports the load average (1 min, at
its start and its end) and the CPU time the app process had used by then (user + system, all threads),
which depends far less on the other work than wall time does.

    .venv/bin/python benchmarks/bench_app_startup.py [--runs 3] [--json] [--results benchmarks/results-startup.json]
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT_S = 300
PAGE_TARGET_S = 6.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def page_answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def cpu_seconds(pid: int) -> float | None:
    """CPU time (user + system, all threads) the process has used so far; Linux only. Unlike wall time it
    barely depends on what else the shared machine is doing."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def one_run() -> dict:
    from gradio_client import Client

    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    load = os.getloadavg()[0]
    began = time.perf_counter()
    process = subprocess.Popen([sys.executable, "app.py", "--port", str(port)], cwd=ROOT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        while not page_answers(url):
            if process.poll() is not None:
                raise RuntimeError(f"app.py exited with {process.returncode}: {process.stderr.read()[-2000:]}")
            if time.perf_counter() - began > TIMEOUT_S:
                raise TimeoutError(f"no page after {TIMEOUT_S} s")
            time.sleep(0.05)
        page = time.perf_counter() - began
        page_cpu = cpu_seconds(process.pid)
        # A generous HTTP timeout: while torch loads, the server answers the client's first requests slowly.
        client = Client(url, verbose=False, httpx_kwargs={"timeout": 60})
        job = client.submit(message="Hello! How are you today?", max_new_tokens=8, seed=1, api_name="/chat")
        first_token = first_token_cpu = None
        for update in job:
            reply = [m for m in update[0] if m["role"] == "assistant" and not m.get("metadata")]
            if first_token is None and reply and reply[-1]["content"]:
                first_token = time.perf_counter() - began
                first_token_cpu = cpu_seconds(process.pid)
        job.result()
        done = time.perf_counter() - began
    finally:
        process.terminate()
        process.wait(timeout=30)
    return {"page_s": round(page, 2), "first_token_s": round(first_token or done, 2), "reply_s": round(done, 2),
            "page_cpu_s": page_cpu, "first_token_cpu_s": first_token_cpu, "load_average_1min": round(load, 2),
            "load_average_1min_end": round(os.getloadavg()[0], 2)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--results", type=Path, help="also write the results as JSON to this file")
    args = parser.parse_args()
    runs = []
    for i in range(args.runs):
        runs.append(one_run())
        if not args.json:
            print(f"run {i + 1}: {runs[-1]}", file=sys.stderr)
    summary = {key: round(statistics.median(r[key] for r in runs if r[key] is not None), 2)
               for key in ("page_s", "first_token_s", "reply_s", "page_cpu_s", "first_token_cpu_s")}
    result = {"runs": runs, "median": summary, "page_target_s": PAGE_TARGET_S,
              "meets_target": summary["page_s"] <= PAGE_TARGET_S}
    if args.results:
        args.results.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2) if args.json else
          f"median: page {summary['page_s']} s (target: at most {PAGE_TARGET_S:g} s), chat first token "
          f"{summary['first_token_s']} s, reply done {summary['reply_s']} s; CPU time used by then: page "
          f"{summary['page_cpu_s']} s, first token {summary['first_token_cpu_s']} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
