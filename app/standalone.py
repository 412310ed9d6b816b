"""Running one tab on its own, like gradio's `demo/*/run.py`: `python -m app.chat_tab [--port P]
[--data_dir DIR]`. Model tabs get the tiny random model (`app.tiny_model`) unless given an engine."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import gradio as gr

from .built_app import BuiltApp
from .model_slot import ModelSlot

if TYPE_CHECKING:
    from .admin_downloads import AdminDownloads

MODEL_QUEUE = {"concurrency_id": "model", "concurrency_limit": 1}  # a tab alone: the full app's queues


def model_slot(engine=None) -> ModelSlot:
    """`engine` in a slot, or the tiny random model, loading in the background."""
    if engine is not None:
        return ModelSlot.ready(engine, "given model")
    from .tiny_model import tiny_engine

    return ModelSlot(tiny_engine, "tiny random model").start()


def tab_app(title: str, build: Callable[[gr.Blocks], object], css: tuple[str, ...] = (),
            downloads: "AdminDownloads | None" = None) -> BuiltApp:
    """A Blocks holding what `build(demo)` lays out, and nothing else; `css`: app/assets stylesheets;
    `downloads`: the admin's routes, when the tab hands files out."""
    from .assets import stylesheet

    with gr.Blocks(title=title, analytics_enabled=False) as demo:
        build(demo)
    return BuiltApp(demo, css=stylesheet(*css) if css else None, downloads=downloads)


def main(standalone_app: Callable[..., BuiltApp], argv: list[str] | None = None) -> None:
    """Serve `standalone_app(data_dir=...)` on the command line's host and port."""
    from .launching import launch

    parser = argparse.ArgumentParser(description="Serve one tab of the HIRPF app on its own.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--data_dir", type=Path, help="where stored things go (default: the app's data dir)")
    args = parser.parse_args(argv)
    launch(standalone_app(data_dir=args.data_dir), args.host, args.port)
