"""Start-up settings of the app: command-line flags, each with an environment variable behind it.

Precedence: flag, then `HIRPF_*` variable, then (host and port only) the `GRADIO_SERVER_*` variables that
Hugging Face Spaces sets, then the default. Importing this module loads neither Gradio nor torch.
"""
from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field
from pathlib import Path

from db.engine import data_dir
from hirpf.cli import ENV_BASE_MODEL, ENV_LORA_WEIGHTS

ANNOTATION_ONLY_ENV = "HIRPF_ANNOTATION_ONLY"
SCHEDULER_ENV = "HIRPF_SCHEDULER"


def _env(names: tuple[str, ...], default):
    return next((os.environ[n] for n in names if os.environ.get(n)), default)


def _env_flag(name: str) -> bool | None:
    value = os.environ.get(name, "").strip().lower()
    if not value:
        return None
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{name}={os.environ[name]!r}: use 1/0, true/false, yes/no or on/off")


@dataclass(frozen=True)
class AppSettings:
    host: str = "127.0.0.1"
    port: int = 7860
    base_model: str = "embedded"
    lora_weights: str | None = "default"  # a checkpoint directory, "default" (shipped experts) or None
    load_in_8bit: bool | None = None  # None: on when CUDA is available (as the CLI)
    data_dir: Path = field(default_factory=data_dir)  # resolved by db/engine.py, the one home of that rule
    annotation_only: bool = False  # serve only the annotator's and the admin's tabs, with no model at all
    scheduler: bool = True  # chat replies and debate statements share the scheduler's batch (off: one at a time)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python app.py", description="Serve the HIRPF app (Gradio).")
    parser.add_argument("--host", help="interface to listen on (env HIRPF_HOST, else GRADIO_SERVER_NAME; "
                                       "default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port (env HIRPF_PORT, else GRADIO_SERVER_PORT; default 7860)")
    parser.add_argument("--base_model", help="'embedded', a local path or a hub id (env HIRPF_BASE_MODEL; "
                                             "default embedded)")
    parser.add_argument("--lora_weights", help="expert checkpoint directory, or 'none' (env HIRPF_LORA_WEIGHTS; "
                                               "default: the shipped experts of the embedded model)")
    parser.add_argument("--load_in_8bit", action=argparse.BooleanOptionalAction, default=None,
                        help="bitsandbytes 8-bit base (env HIRPF_LOAD_IN_8BIT=1/0; default: on with CUDA)")
    parser.add_argument("--data_dir", help="where the app keeps its data, e.g. the annotation database "
                                           "(env HIRPF_DATA_DIR; default ./data)")
    parser.add_argument("--annotation_only", action="store_true", default=None,
                        help="serve the human evaluation only: no model is loaded and the page, its config and "
                             f"its API say nothing of it (env {ANNOTATION_ONLY_ENV}=1)")
    parser.add_argument("--scheduler", action=argparse.BooleanOptionalAction, default=None,
                        help="serve chat replies and debate statements through the scheduler's running batch, "
                             "HIRPF_MAX_BATCH visitors at once; --no-scheduler: one at a time, as before "
                             f"(env {SCHEDULER_ENV}=1/0; default on; ZeroGPU is always one at a time)")
    return parser


def settings_from(argv: list[str] | None = None) -> AppSettings:
    """Settings from flags (`argv`, [] for none) and the environment."""
    args = build_parser().parse_args([] if argv is None else argv)
    defaults = AppSettings()
    lora = args.lora_weights or _env(ENV_LORA_WEIGHTS, defaults.lora_weights)
    port = args.port or _env(("HIRPF_PORT", "GRADIO_SERVER_PORT"), defaults.port)
    try:
        port = int(port)
    except ValueError:
        raise ValueError(f"port {port!r} is not a number") from None
    return AppSettings(
        host=args.host or _env(("HIRPF_HOST", "GRADIO_SERVER_NAME"), defaults.host),
        port=port,
        base_model=args.base_model or _env(ENV_BASE_MODEL, defaults.base_model),
        lora_weights=None if str(lora).lower() == "none" else lora,
        load_in_8bit=args.load_in_8bit if args.load_in_8bit is not None else _env_flag("HIRPF_LOAD_IN_8BIT"),
        data_dir=data_dir(args.data_dir),
        annotation_only=bool(args.annotation_only or _env_flag(ANNOTATION_ONLY_ENV)),
        scheduler=next(v for v in (args.scheduler, _env_flag(SCHEDULER_ENV), defaults.scheduler) if v is not None),
    )
