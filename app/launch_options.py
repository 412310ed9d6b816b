"""The app's launch options: command-line flags, each with an environment variable behind it.

Precedence: flag, then the variable (`hirpf.environment`, where each is declared with its default and help;
host and port also answer to the `GRADIO_SERVER_*` variables that Hugging Face Spaces sets), then the
default. Importing this module loads neither Gradio nor torch.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from db.connection import data_dir
from hirpf import environment
from hirpf.environment import SETTINGS
from hirpf.model_options import add_model_arguments, flag_help, model_options


@dataclass(frozen=True)
class LaunchOptions:
    host: str
    port: int
    base_model: str
    lora_weights: str | None  # a checkpoint directory, "default" (shipped experts) or None
    load_in_8bit: bool | None  # None: on when CUDA is available (as the CLI)
    data_dir: Path  # resolved by db/connection.py, the one home of that rule
    annotation_only: bool  # serve only the annotator's and the admin's tabs, with no model at all
    scheduler: bool  # chat replies and debate statements share the scheduler's batch (off: one at a time)
    engine_process: bool  # that batch runs in a process of its own (where the model is on the CPU)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python app.py", description="Serve the HIRPF app (Gradio).")
    parser.add_argument("--host", help=flag_help(SETTINGS["HIRPF_HOST"]))
    parser.add_argument("--port", type=int, help=flag_help(SETTINGS["HIRPF_PORT"]))
    add_model_arguments(parser, ("base_model", "lora_weights", "load_in_8bit"))
    parser.add_argument("--data_dir", help=flag_help(SETTINGS["HIRPF_DATA_DIR"]))
    parser.add_argument("--annotation_only", action="store_true", default=None,
                        help=flag_help(SETTINGS["HIRPF_ANNOTATION_ONLY"]))
    parser.add_argument("--scheduler", action=argparse.BooleanOptionalAction, default=None,
                        help=flag_help(SETTINGS["HIRPF_SCHEDULER"]))
    parser.add_argument("--engine_process", action=argparse.BooleanOptionalAction, default=None,
                        help=flag_help(SETTINGS["HIRPF_ENGINE_PROCESS"]))
    return parser


def launch_options(argv: list[str] | None = None) -> LaunchOptions:
    """Options from flags (`argv`, [] for none) and the environment."""
    args = build_parser().parse_args([] if argv is None else argv)
    model = model_options(args)

    def flag_or_variable(flag, variable: str):
        return flag if flag is not None else getattr(environment, variable)

    return LaunchOptions(
        host=args.host or environment.HIRPF_HOST,
        port=args.port or environment.HIRPF_PORT,
        base_model=model.base_model,
        lora_weights=model.lora_weights,
        load_in_8bit=model.load_in_8bit,
        data_dir=data_dir(args.data_dir),
        annotation_only=flag_or_variable(args.annotation_only, "HIRPF_ANNOTATION_ONLY"),
        scheduler=flag_or_variable(args.scheduler, "HIRPF_SCHEDULER"),
        engine_process=flag_or_variable(args.engine_process, "HIRPF_ENGINE_PROCESS"),
    )
