"""`app.zerogpu.gpu`: a no-op without the `spaces` package; with it, `spaces.GPU(duration=...)` wraps the
function (a stand-in module with the package's decorator signature, since ZeroGPU exists only on Spaces)."""
from __future__ import annotations

import types

import pytest

from hirpf.environment import SETTINGS


def with_spaces(monkeypatch, spaces_module):
    """`app.zerogpu` as if `spaces` were (a module) or were not (None) importable; `gpu` reads it per call."""
    import app.zerogpu

    monkeypatch.setattr(app.zerogpu, "spaces", spaces_module)
    return app.zerogpu


def fake_spaces(calls: list):
    module = types.ModuleType("spaces")

    def GPU(fn=None, duration=60):  # noqa: N802  (the package's name)
        def wrap(f):
            calls.append((f.__name__, duration))
            return lambda *a, **k: ("on-gpu", f(*a, **k))
        return wrap(fn) if fn is not None else wrap

    module.GPU = GPU
    return module


def test_without_spaces_functions_are_unchanged(monkeypatch):
    zerogpu = with_spaces(monkeypatch, None)

    def reply():
        return 1

    assert zerogpu.gpu(reply) is reply


def test_with_spaces_every_model_function_gets_a_gpu_for_the_configured_time(monkeypatch):
    calls = []
    zerogpu = with_spaces(monkeypatch, fake_spaces(calls))
    monkeypatch.delenv("HIRPF_GPU_DURATION", raising=False)
    assert zerogpu.gpu(lambda: 2)() == ("on-gpu", 2) and calls[-1][1] == SETTINGS["HIRPF_GPU_DURATION"].default
    monkeypatch.setenv("HIRPF_GPU_DURATION", "300")
    zerogpu.gpu(lambda: 3)
    assert calls[-1][1] == 300
    monkeypatch.setenv("HIRPF_GPU_DURATION", "soon")
    with pytest.raises(ValueError, match="HIRPF_GPU_DURATION='soon'"):
        zerogpu.gpu(lambda: 4)


def test_the_app_wraps_its_model_functions(monkeypatch, tiny_base_dir):
    """Building the app with `spaces` present wraps chat, regenerate, debate, questionnaire and survey."""
    from app.build import build_app
    from hirpf.engine import Engine

    calls = []
    with_spaces(monkeypatch, fake_spaces(calls))  # `gpu` reads it when a tab is built
    build_app(Engine.load(str(tiny_base_dir), lora_weights=None, load_in_8bit=False, dtype="float32"))
    assert len(calls) >= 5, calls


def test_on_zerogpu_replies_keep_engine_stream_on_the_model_queue(monkeypatch, tiny_engine, tmp_path):
    """Each ZeroGPU call runs in a worker with its own model, where the shared scheduler cannot live: chat,
    regenerate and debate stream through `Engine.stream`, one at a time on the model queue."""
    from app.build import build_app

    with_spaces(monkeypatch, fake_spaces([]))
    demo = build_app(tiny_engine, data_dir=tmp_path)
    assert not demo.reply_serving.through_scheduler
    assert demo.reply_serving.source(tiny_engine) is tiny_engine
    chat = next(f for f in demo.blocks.fns.values() if f.api_name == "chat")
    assert (chat.concurrency_id, chat.concurrency_limit) == ("model", 1)
