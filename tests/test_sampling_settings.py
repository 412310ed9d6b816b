"""Sampling settings and identity strengths are checked where they are made, the one place every path shares
(`Engine.generate`, the scheduler, the app's panels, the CLI, the evaluations)."""
from __future__ import annotations

import dataclasses

import gradio as gr
import pytest

from app.model_inputs import read_sampling
from hirpf.identities import IdentityError, IdentitySet
from hirpf.routing import Routing
from hirpf.sampling import Sampling

BAD = [("top_p", 0), ("top_p", 1.5), ("top_p", float("nan")), ("top_p", "0.9"), ("top_k", -1), ("top_k", True),
       ("temperature", 0), ("temperature", float("inf")), ("max_new_tokens", 0), ("max_new_tokens", 2.5),
       ("num_beams", 0), ("seed", -1), ("seed", 1.5), ("repetition_penalty", 0), ("do_sample", 1)]


@pytest.mark.parametrize(("field", "value"), BAD)
def test_a_bad_sampling_setting_is_refused_when_made(field, value):
    with pytest.raises(ValueError, match=field):
        Sampling(**{field: value})
    with pytest.raises(ValueError, match=field):
        dataclasses.replace(Sampling(), **{field: value})  # a changed copy is checked again


def test_sampling_settings_are_normalised_and_frozen():
    sampling = Sampling(max_new_tokens=16.0, seed=7.0, temperature=-0.0 + 0.5, top_p=1)
    assert (sampling.max_new_tokens, sampling.seed, sampling.top_p) == (16, 7, 1.0)
    assert type(sampling.max_new_tokens) is int and type(sampling.top_p) is float
    assert Sampling(do_sample=False, temperature=0).generate_kwargs()["do_sample"] is False  # greedy: unused
    with pytest.raises(dataclasses.FrozenInstanceError):
        sampling.top_p = 0.0


@pytest.mark.parametrize(("top_p", "seed"), [(0, None), (1.2, None), (0.9, 1.5), (0.9, -3)])
def test_the_apps_panel_refuses_what_sampling_refuses(top_p, seed):
    with pytest.raises(gr.Error):
        read_sampling(64, 0.7, top_p, seed)
    assert read_sampling(64, 0, 0.5, 0) == Sampling(max_new_tokens=64, do_sample=False, temperature=1.0, top_p=0.5)


def test_a_strength_of_true_is_refused_and_minus_zero_is_zero():
    doctor = IdentitySet.parse("Doctor")
    for bad in (True, False):
        with pytest.raises(IdentityError, match="Doctor"):
            doctor.with_strengths({"Doctor": bad})
    minus_zero, zero = doctor.with_strengths({"Doctor": -0.0}), doctor.with_strengths("Doctor=0")
    assert minus_zero == zero and str(minus_zero) == "Doctor=0"
    assert Routing([minus_zero]).key == Routing([zero]).key  # one set, one prefix-store key
    assert doctor.with_strengths("-0") == zero
