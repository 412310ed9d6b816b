"""`BuiltApp`: a built HIRPF page and what serving it needs besides the Blocks, as `app.build` (the whole app,
the annotation-only app) and `app.standalone` (a tab alone) return it and `app.launching.launch` serves it."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only: this module stays light for the launcher
    import gradio as gr

    from .admin_downloads import AdminDownloads
    from .model_slot import ModelSlot
    from .reply_serving import ReplyServing


@dataclass(frozen=True)
class BuiltApp:
    blocks: "gr.Blocks"  # what Spaces expects as `demo`
    css: str | None = None  # Gradio 6 takes the stylesheet at launch, not in the Blocks
    downloads: "AdminDownloads | None" = None  # the admin's routes, added to the server at launch
    slot: "ModelSlot | None" = None  # the model and its background load; None without a model
    reply_serving: "ReplyServing | None" = None  # how streamed replies reach the model (tests, benchmarks)
