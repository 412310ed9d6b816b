"""Serving a built app: Gradio's launch plus what HIRPF adds at launch time (its stylesheet, the admin's
routes, run history off). Its own module so that the full app (`app.build`) and a tab served alone
(`app.standalone`) launch the same way without importing each other."""
from __future__ import annotations

import os

from fastapi.responses import JSONResponse

from .built_app import BuiltApp

# The API page asks every app for its MCP tools and reads any answer but a success as "no MCP server".
# HIRPF serves none (Gradio's needs the gradio[mcp] extra, which is not installed): it launches with MCP off
# whatever GRADIO_MCP_SERVER says, and answers that question by saying so, not with a bare "not found".
MCP_SCHEMA_ROUTE = "/gradio_api/mcp/schema"
MCP_OFF = "This app serves no MCP tools: it is launched with Gradio's MCP server switched off."
# Gradio recomputes its monitoring summary (a pandas group-by over up to 10,000 past events) after every
# queued event by default: 18 ms each once a long-lived app has seen 10,000 events, run while holding the
# interpreter lock that the scheduler's loop thread needs (docs/serving.md). Every 100th event keeps the
# summary fresh enough for a dashboard. Gradio reads its variable when the Blocks are made, before any launch,
# so the launch sets the queue's own setting, unless the operator set the variable.
ANALYTICS_EVERY_EVENTS = 100


def launch(app: BuiltApp, host: str = "127.0.0.1", port: int | None = 7860, **kwargs):
    """Serve `app` with its stylesheet (Gradio 6 takes CSS at launch, not in the Blocks) and the admin's
    routes (added to the FastAPI app Gradio creates at launch). Blocks the thread unless
    `prevent_thread_lock=True`, as `Blocks.launch` does.

    Gradio's run history is off, always: it would keep every call's inputs and outputs (resume codes,
    session tokens, the admin password) in the browser's localStorage and show them at `/gradio_api/runs`.
    Off, Gradio also deletes whatever an earlier version of the app left there."""
    block = not kwargs.pop("prevent_thread_lock", False)
    if "GRADIO_ANALYTICS_CACHE_FREQUENCY" not in os.environ:
        app.blocks._queue.ANAYLTICS_CACHE_FREQUENCY = ANALYTICS_EVERY_EVENTS  # (Gradio's spelling)
    demo = app.blocks
    result = demo.launch(server_name=host, server_port=port, css=app.css,
                         prevent_thread_lock=True, run_history=False, mcp_server=False, **kwargs)
    demo.app.add_api_route(MCP_SCHEMA_ROUTE, lambda: JSONResponse({"detail": MCP_OFF}, status_code=501),
                           methods=["GET"], include_in_schema=False)
    if app.downloads is not None:
        app.downloads.install(demo.app)
    if block:
        demo.block_thread()
    return result
