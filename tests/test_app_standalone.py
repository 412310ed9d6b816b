"""Each tab runs on its own (`python -m app.<tab>`), like gradio's `demo/*/run.py`: its standalone builder
makes a Blocks with that tab alone, around the tiny random model where the tab needs one."""
from __future__ import annotations

import ast
from pathlib import Path

import gradio as gr
import pytest

from hirpf.paths import PROJECT_ROOT

TAB_MODULES = ["chat_tab", "debate_tab", "questionnaire_tab", "annotation_tab", "admin_tab"]


@pytest.mark.parametrize("module", TAB_MODULES)
def test_each_tab_builds_on_its_own(module, tiny_engine, tmp_path, monkeypatch):
    import importlib

    monkeypatch.setenv("HIRPF_ADMIN_PASSWORD", "standalone")
    tab = importlib.import_module(f"app.{module}")
    demo = tab.standalone_app(engine=tiny_engine, data_dir=tmp_path).blocks
    assert isinstance(demo, gr.Blocks) and demo.fns
    assert not any(isinstance(b, gr.Tab) for b in demo.blocks.values())  # the tab alone, not the app


def test_the_tiny_model_helper_builds_a_working_engine():
    from app.tiny_model import tiny_engine

    engine = tiny_engine()
    assert engine.has_experts and len(engine.tokenizer) > 1000


def test_tabs_never_import_each_other():
    tabs = {f"{m}" for m in TAB_MODULES}
    for module in TAB_MODULES:
        tree = ast.parse((PROJECT_ROOT / "app" / f"{module}.py").read_text())
        imported = {node.module.split(".")[-1] for node in ast.walk(tree)
                    if isinstance(node, ast.ImportFrom) and node.module}
        assert not (imported & (tabs - {module})), f"app/{module}.py imports {imported & tabs}"


def test_no_inline_browser_code_or_styles_in_the_tabs():
    for path in (PROJECT_ROOT / "app").glob("*.py"):
        text = path.read_text()
        assert "=>" not in text and "localStorage.setItem" not in text, path.name  # JavaScript lives in assets
        assert "{ display:" not in text and "border-radius" not in text, path.name
    assert {p.suffix for p in Path(PROJECT_ROOT / "app" / "assets").iterdir()} >= {".js", ".css"}


def test_a_comparison_goes_only_when_the_visitor_changes_its_settings(tiny_engine):
    """The Compare result hides on the visitor's own edits (`input`, clicks), never on a `change` that a
    value written back by the server sets off: on a busy server the strengths text a box's click recomputes
    arrived after the next Compare had begun and hid that new comparison (seen with the embedded model)."""
    from app.chat_tab import standalone_app

    config = standalone_app(tiny_engine).blocks.get_config_file()
    [comparison] = [c["id"] for c in config["components"] if c.get("props", {}).get("elem_id") == "chat-comparison"]
    [hide] = [d for d in config["dependencies"] if d["outputs"] == [comparison]]
    assert {event for _, event in hide["targets"]} <= {"input", "click"}
    assert len(hide["targets"]) >= 5  # boxes, strengths, conditioning, baseline, Clear
