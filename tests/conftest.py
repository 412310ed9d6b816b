"""Shared fixtures: the embedded model, tiny engines, a tiny base model directory and a clean app environment;
the plugins below add the database fixtures and a local chat-completions server. (Helpers that are not
fixtures live in plain modules the tests import: testing_utils.py, app_serving.py, store_helpers.py, ...)"""
from __future__ import annotations

import pytest
import torch

from app.tiny_model import randomize_experts, save_tiny_base

# Fixtures from plain modules, registered here rather than imported into each test module by name.
pytest_plugins = ["db_fixtures", "openai_server"]


def pytest_collection_modifyitems(config, items):
    """Tests marked `cuda` need a CUDA device: without one they are skipped, so CI collects them and runs
    the rest (`scripts/gpu_check.sh` runs them on a GPU machine)."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (scripts/gpu_check.sh runs these on a GPU)")
    for item in items:
        if item.get_closest_marker("cuda") is not None:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def embedded_engine():
    from hirpf.engine import Engine

    return Engine.load("embedded", lora_weights=None, load_in_8bit=False, dtype="float32")


@pytest.fixture(scope="module")
def tiny_engine(tiny_base_dir):
    """An engine on the tiny base with random rank-4 experts: replies are noise, the plumbing is real."""
    from hirpf.engine import Engine
    from hirpf.experts import ExpertConfig
    from hirpf.inject import add_experts

    engine = Engine.load(str(tiny_base_dir), lora_weights=None, load_in_8bit=False, dtype="float32")
    add_experts(engine.model, ExpertConfig(rank=4))
    randomize_experts(engine.model)
    return engine


@pytest.fixture(scope="module")
def exact_engine(tiny_base_dir):
    """A tiny float64 Llama (the embedded tokenizer) with random layered experts: batched equals alone exactly."""
    from hirpf.engine import Engine
    from hirpf.experts import ExpertConfig
    from hirpf.inject import add_experts

    engine = Engine.load(str(tiny_base_dir), lora_weights=None, load_in_8bit=False, dtype="float32")
    engine.model.to(torch.float64)
    add_experts(engine.model, ExpertConfig(rank=4, dropout=0.0, layout="layered"))
    randomize_experts(engine.model, seed=1)
    return engine


@pytest.fixture(scope="session")
def tiny_base_dir(tmp_path_factory):
    """The app's tiny random Llama (`app.tiny_model`) with the embedded model's tokenizer and chat template,
    saved as a base model directory: the trainer's logic runs in seconds on it."""
    return save_tiny_base(tmp_path_factory.mktemp("tiny-base"))


@pytest.fixture
def app_env(monkeypatch):
    """No outside configuration leaks in: SQLite under the test's data dir, no admin access, no OAuth."""
    for name in ("DATABASE_URL", "HIRPF_ADMIN_PASSWORD", "HIRPF_ADMIN_USERS", "HIRPF_ASSIGNMENT", "OAUTH_CLIENT_ID",
                 "SPACE_ID", "SYSTEM"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch
