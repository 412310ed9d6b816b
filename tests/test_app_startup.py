"""A light start (issue 23 item 8): `python app.py` serves its page before torch, transformers or peft are
imported; the model, and they, load in a background thread once the page answers, and a chat request sent
sooner waits for that load instead of failing."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from types import SimpleNamespace

from app.admin_pairs import PairBuilds
from app.model_slot import ModelSlot
from hirpf.paths import PROJECT_ROOT

from app_serving import client, replies, served, transcript

sys.path.insert(0, str(PROJECT_ROOT / "benchmarks"))

from bench_app_startup import free_port, page_answers  # noqa: E402  (how the start-up benchmark waits for the page)

# The model's packages, and the ones only an evaluation's judge (openai) or chart (matplotlib) needs.
NOT_FOR_THE_PAGE = ("torch", "transformers", "peft", "bitsandbytes", "safetensors", "openai", "matplotlib")

# Builds the app as Spaces does (app.py imported, not run), serves it, fetches the page and its config,
# then reports which of the packages it names the process has imported by then.
PAGE_ONLY = """
import json, runpy, sys, urllib.request
from app.launching import launch

built = runpy.run_path("app.py", run_name="hirpf_app")["built"]
_, url, _ = launch(built, "127.0.0.1", None, prevent_thread_lock=True, quiet=True)
for path in ("", "config"):
    with urllib.request.urlopen(url + path, timeout=60) as response:
        assert response.status == 200, (path, response.status)
print("imported:", json.dumps(sorted(name for name in sys.argv[1:] if name in sys.modules)))
built.blocks.close()
"""


def test_the_page_is_served_before_the_model_packages_are_imported(tmp_path):
    environment = dict(os.environ, HIRPF_DATA_DIR=str(tmp_path))
    done = subprocess.run([sys.executable, "-c", PAGE_ONLY, *NOT_FOR_THE_PAGE], cwd=PROJECT_ROOT, env=environment,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    [imported] = [line for line in done.stdout.splitlines() if line.startswith("imported:")]
    assert json.loads(imported.removeprefix("imported:")) == []


def test_app_py_starts_the_model_load_itself_once_the_page_answers(tiny_base_dir, tmp_path):
    """`python app.py` on the tiny model: with no visitor (no page load, no model request) the load still
    ends, as the model status the page's timer polls says (its timer stops then); then a chat is answered."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    environment = dict(os.environ, HIRPF_BASE_MODEL=str(tiny_base_dir), HIRPF_LORA_WEIGHTS="none",
                       HIRPF_DATA_DIR=str(tmp_path))
    process = subprocess.Popen([sys.executable, "app.py", "--port", str(port)], cwd=PROJECT_ROOT, env=environment,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while not page_answers(url):
            assert process.poll() is None, process.stderr.read()[-3000:]
            assert time.monotonic() < deadline, "no page after 300 s"
            time.sleep(0.1)
        app = client(url)
        while app.predict(api_name="/model_status")[1]["active"]:  # the status timer runs while it loads
            assert time.monotonic() < deadline, "the model load did not end: did app.py start it?"
            time.sleep(0.2)
        reply = app.predict(message="Hello!", max_new_tokens=4, seed=1, api_name="/chat")
        assert replies(transcript(reply))[-1]
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_a_chat_sent_while_the_model_loads_waits_for_it(tiny_engine):
    """The first visitor may write before the model is there: the reply's turn shows at once, pending, and
    the reply follows once the load ends; no error."""
    loaded = threading.Event()
    slot = ModelSlot(lambda: loaded.wait(120) and tiny_engine, "tiny random model")
    with served(slot) as url:
        job = client(url).submit(message="Hello!", max_new_tokens=4, seed=1, api_name="/chat")
        deadline = time.monotonic() + 120
        while not job.outputs():
            assert time.monotonic() < deadline and not job.done(), "no pending turn while the model loads"
            time.sleep(0.1)
        [pending] = [m for m in transcript(job.outputs()[-1]) if m.get("metadata")]
        assert pending["metadata"]["status"] == "pending" and not slot.finished and not job.done()
        loaded.set()
        answered = transcript(job.result(timeout=120))
    assert replies(answered)[-1] and [m["metadata"]["status"] for m in answered if m.get("metadata")] == ["done"]


def test_the_app_leaves_a_given_slot_to_its_owner_until_a_page_load(tmp_path):
    """`build_app(slot)` does not start the load (app.py does once the page answers); the page's load event
    does, for a server other than app.py's; the status timer only reads."""
    from app.build import build_app

    loads, engine = [], SimpleNamespace(has_experts=True)  # all the status line asks of a loaded engine
    slot = ModelSlot(lambda: loads.append("loaded") or engine, "test model")
    demo = build_app(slot, data_dir=tmp_path).blocks
    on_timer, on_page_load = (next(f.fn for f in demo.fns.values() if f.api_name == name)
                              for name in ("model_status", "model_status_on_load"))
    on_timer()
    assert not slot.finished and loads == []
    on_page_load()
    assert slot.get(timeout=30) is engine and loads == ["loaded"]


def test_a_resumed_pair_build_waits_for_the_model_without_starting_its_load(tmp_path):
    """Pair builds a restart cut short resume once the model is loaded (`build_app` asks at build time): the
    waiting must not start the load itself, or torch would be imported before the page is served."""
    loads = []
    slot = ModelSlot(lambda: loads.append("loaded") or "engine", "test model")
    resuming = PairBuilds(tmp_path, slot).resume_unfinished()
    resuming.join(timeout=1.0)
    assert resuming.is_alive() and loads == [] and not slot.finished
    assert slot.start().get(timeout=30) == "engine" and loads == ["loaded"]
    resuming.join(timeout=30)
    assert not resuming.is_alive()
