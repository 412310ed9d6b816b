"""The serving process's torch threads: one fewer than the cores (at least one), or what the setting says."""
from __future__ import annotations

import pytest
import torch

from hirpf import serving_threads


def test_one_core_is_left_to_the_rest_of_the_process(monkeypatch):
    monkeypatch.delenv("HIRPF_SERVING_THREADS", raising=False)
    monkeypatch.setattr(serving_threads, "available_cores", lambda: 16)
    assert serving_threads.serving_threads() == 15
    monkeypatch.setattr(serving_threads, "available_cores", lambda: 1)
    assert serving_threads.serving_threads() == 1


def test_the_setting_decides_and_a_bad_value_is_refused(monkeypatch):
    monkeypatch.setenv("HIRPF_SERVING_THREADS", "3")
    assert serving_threads.serving_threads() == 3
    before = torch.get_num_threads()
    try:
        assert serving_threads.use_serving_threads() == 3 and torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(before)
    monkeypatch.setenv("HIRPF_SERVING_THREADS", "0")
    with pytest.raises(ValueError, match="HIRPF_SERVING_THREADS"):
        serving_threads.serving_threads()
