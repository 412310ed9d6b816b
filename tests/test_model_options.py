"""The model flags, defined once (`hirpf.model_options`): every command that loads a model takes them from
there and reads them the same way: the flag, else its environment variable, else the default."""
from __future__ import annotations

import pytest

from hirpf.model_options import model_options


def chat_parser():
    from hirpf.cli import build_parser
    return build_parser(), ["chat"]


def export_parser():
    from hirpf.cli import build_parser
    return build_parser(), ["export", "--identities", "Doctor", "--output", "out"]


def eval_parser():
    from hirpf.eval.__main__ import build_parser
    return build_parser("recognize"), ["recognize"]


def app_parser():
    from app.launch_options import build_parser
    return build_parser(), []


def train_parser():
    from training.train_options import build_parser
    return build_parser(), ["--data", "d.json", "--output_dir", "out"]


def synthesize_parser():
    from training.synthesize import build_parser
    return build_parser(), ["--backend", "local-contrastive", "--output", "out.jsonl"]


PARSERS = [chat_parser, export_parser, eval_parser, app_parser, train_parser, synthesize_parser]


@pytest.mark.parametrize("parser", PARSERS, ids=lambda p: p.__name__)
def test_every_command_reads_the_base_model_flag_then_the_variable(parser, monkeypatch):
    """The trainer and the synthesizer used to take only their own --base_model default, not HIRPF_BASE_MODEL."""
    built, required = parser()
    monkeypatch.delenv("HIRPF_BASE_MODEL", raising=False)
    monkeypatch.delenv("HIS_BASE_MODEL", raising=False)
    assert model_options(built.parse_args(required)).base_model == "embedded"
    monkeypatch.setenv("HIRPF_BASE_MODEL", "from/env")
    assert model_options(built.parse_args(required)).base_model == "from/env"
    assert model_options(built.parse_args([*required, "--base_model", "from/flag"])).base_model == "from/flag"


@pytest.mark.parametrize("parser", [chat_parser, export_parser, eval_parser, app_parser], ids=lambda p: p.__name__)
def test_none_means_no_experts_from_the_flag_and_from_the_variable(parser, monkeypatch):
    """`python -m hirpf export --lora_weights none` used to hand the word 'none' to the loader as a directory."""
    built, required = parser()
    monkeypatch.delenv("HIRPF_LORA_WEIGHTS", raising=False)
    monkeypatch.delenv("HIS_LORA_WEIGHTS", raising=False)
    assert model_options(built.parse_args(required)).lora_weights == "default"
    assert model_options(built.parse_args([*required, "--lora_weights", "NONE"])).lora_weights is None
    monkeypatch.setenv("HIRPF_LORA_WEIGHTS", "none")
    assert model_options(built.parse_args(required)).lora_weights is None
    assert model_options(built.parse_args([*required, "--lora_weights", "ckpt"])).lora_weights == "ckpt"


@pytest.mark.parametrize("parser", [chat_parser, eval_parser, app_parser], ids=lambda p: p.__name__)
def test_eight_bit_flag_wins_over_the_variable(parser, monkeypatch):
    built, required = parser()
    monkeypatch.delenv("HIRPF_LOAD_IN_8BIT", raising=False)
    assert model_options(built.parse_args(required)).load_in_8bit is None  # on when CUDA is available
    monkeypatch.setenv("HIRPF_LOAD_IN_8BIT", "yes")
    assert model_options(built.parse_args(required)).load_in_8bit is True
    assert model_options(built.parse_args([*required, "--no-load_in_8bit"])).load_in_8bit is False


def test_the_model_card_command_names_the_base_model_only_when_it_was_not_the_default(monkeypatch):
    """The trainer's --base_model default moved from argparse (None now) to the settings table; the card's
    reproducing command must still leave out a default base model (the shipped card's commands have none)."""
    import json

    from hirpf.paths import PROJECT_ROOT
    from training.model_card import training_command

    monkeypatch.delenv("HIRPF_BASE_MODEL", raising=False)
    shipped = json.loads((PROJECT_ROOT / "models" / "smollm2-135m-experts" / "training_summary.json").read_text())
    assert "--base_model" not in training_command(shipped["args"])
    assert "--base_model other/model" in training_command({**shipped["args"], "base_model": "other/model"})
