"""The settings home (`hirpf/environment.py`): each variable parsed and checked there, read nowhere else, every
one on the generated docs/configuration.md, and the model flags defined once (`hirpf.model_options`)."""
from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from hirpf import environment
from hirpf.environment import SETTINGS, SettingError
from hirpf.paths import PROJECT_ROOT
from hirpf.settings_table import REGENERATE, markdown

# variable -> (a good value, what it reads as, a bad value or None where any text will do)
EXAMPLES = {
    "HIRPF_BASE_MODEL": ("some/dir", "some/dir", None),
    "HIRPF_LORA_WEIGHTS": ("None", None, None),
    "HIRPF_LOAD_IN_8BIT": ("Yes", True, "maybe"),
    "HIRPF_CACHE_DIR": ("/tmp/c", Path("/tmp/c"), None),
    "HIRPF_HIS_DIR": ("/tmp/his", Path("/tmp/his"), None),
    "HIRPF_MAX_BATCH": ("3", 3, "0"),
    "HIRPF_PREFILL_CHUNK": ("0", 0, "-3"),
    "HIRPF_PREFILL_STEP_SHARE": ("0.25", 0.25, "nan"),
    "HIRPF_PREFIX_CACHE_MB": ("0", 0, "lots"),
    "HIRPF_MAX_CONTEXT": ("100", 100, "1"),
    "HIRPF_SERVING_THREADS": ("3", 3, "0"),
    "HIRPF_DECODE_DTYPE": ("bfloat16", "bfloat16", "int8"),
    "HIRPF_HOST": ("0.0.0.0", "0.0.0.0", None),
    "HIRPF_PORT": ("9000", 9000, "http"),
    "HIRPF_DATA_DIR": ("/tmp/d", Path("/tmp/d"), None),
    "HIRPF_ANNOTATION_ONLY": ("1", True, "only"),
    "HIRPF_SCHEDULER": ("off", False, "2"),
    "HIRPF_ENGINE_PROCESS": ("0", False, "sometimes"),
    "HIRPF_GPU_DURATION": ("300", 300, "soon"),
    "DATABASE_URL": ("sqlite:///x.db", "sqlite:///x.db", None),
    "HIRPF_SIGN_IN": ("HF", "hf", "github"),
    "HIRPF_ASSIGNMENT": ("overlap=2", "overlap=2", None),  # its parts are checked by app.evaluation_store
    "HIRPF_ADMIN_PASSWORD": (" pass word ", " pass word ", None),
    "HIRPF_ADMIN_USERS": ("Alice, bob,", ("Alice", "bob"), None),
    "HIRPF_JUDGE_BASE_URL": ("http://127.0.0.1:9/v1", "http://127.0.0.1:9/v1", None),
    "HIRPF_JUDGE_MODEL": ("referee", "referee", None),
    "HIRPF_JUDGE_CACHE_DIR": ("none", None, None),
    "OPENAI_BASE_URL": ("http://127.0.0.1:9/v1", "http://127.0.0.1:9/v1", None),
    "OPENAI_API_KEY": ("sk-test", "sk-test", None),
    "HIRPF_TEST_POSTGRES_URL": ("postgresql://u@h/db", "postgresql://u@h/db", None),
}
# Set by a platform for its own use, read where used: not settings (environment.py's docstring).
PLATFORM_VARIABLES = {"RANK", "WORLD_SIZE", "OAUTH_CLIENT_ID"}
PACKAGES = ("hirpf", "app", "annotation", "db", "training")


def project_sources(*folders: str) -> list[Path]:
    return [path for folder in folders for path in sorted((PROJECT_ROOT / folder).rglob("*.py"))]


@pytest.fixture
def clean_environment(monkeypatch):
    for setting in SETTINGS.values():
        for variable in (setting.name, *setting.aliases):
            monkeypatch.delenv(variable, raising=False)
    return monkeypatch


def test_every_setting_has_an_example():
    assert sorted(EXAMPLES) == sorted(SETTINGS)


@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_a_setting_reads_its_variable_and_names_it_when_the_value_is_bad(name, clean_environment):
    good, expected, bad = EXAMPLES[name]
    assert getattr(environment, name) == SETTINGS[name].default
    clean_environment.setenv(name, "  ")  # blank counts as unset
    assert getattr(environment, name) == SETTINGS[name].default
    clean_environment.setenv(name, good)
    assert getattr(environment, name) == expected
    assert SETTINGS[name].source() == f"environment ({name})"
    if bad is not None:
        clean_environment.setenv(name, bad)
        with pytest.raises(SettingError, match=f"^{name}='{re.escape(bad)}'"):
            getattr(environment, name)


def test_an_alias_is_read_when_the_hirpf_variable_is_unset(clean_environment):
    clean_environment.setenv("GRADIO_SERVER_PORT", "7000")  # what Spaces sets
    assert environment.HIRPF_PORT == 7000 and SETTINGS["HIRPF_PORT"].source() == "environment (GRADIO_SERVER_PORT)"
    clean_environment.setenv("HIRPF_PORT", "7001")
    assert environment.HIRPF_PORT == 7001
    clean_environment.setenv("HIS_BASE_MODEL", "his/model")
    assert environment.HIRPF_BASE_MODEL == "his/model"


def test_an_undeclared_name_is_refused():
    with pytest.raises(AttributeError, match="HIRPF_MAX_BATCHES"):
        environment.HIRPF_MAX_BATCHES  # noqa: B018


def test_every_variable_named_in_the_project_is_declared():
    """A HIRPF_* name in any source file, tests and tools included (this file names undeclared ones on
    purpose), is a setting of hirpf/environment.py."""
    sources = [p for p in project_sources(*PACKAGES, "tests", "scripts", "benchmarks") if p != Path(__file__)]
    named = {name for path in sources
             for name in re.findall(r"\bHIRPF_[A-Z0-9_]*[A-Z0-9]\b", path.read_text(encoding="utf-8"))}
    named |= set(re.findall(r"\bHIRPF_[A-Z0-9_]*[A-Z0-9]\b", (PROJECT_ROOT / "app.py").read_text(encoding="utf-8")))
    assert sorted(named - set(SETTINGS)) == []


def _environment_reads(tree: ast.AST):
    """(line, variable or None) of every read of os.environ / os.getenv in a module (None: not a literal)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            target = node.func
            reads = (target.attr == "get" and ast.unparse(target.value) == "os.environ") or \
                ast.unparse(target) == "os.getenv"
            if reads:
                first = node.args[0] if node.args else None
                yield node.lineno, first.value if isinstance(first, ast.Constant) else None
        elif isinstance(node, ast.Subscript) and ast.unparse(node.value) == "os.environ" \
                and isinstance(node.ctx, ast.Load):
            yield node.lineno, node.slice.value if isinstance(node.slice, ast.Constant) else None


def test_no_module_reads_a_setting_but_the_settings_home():
    """Every reader goes through hirpf.environment; `from hirpf.environment import HIRPF_X` would freeze the
    value at import, so settings are read as attributes."""
    home = PROJECT_ROOT / "hirpf" / "environment.py"
    wrong = []
    for path in [*project_sources(*PACKAGES), PROJECT_ROOT / "app.py"]:
        if path == home:
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        where = path.relative_to(PROJECT_ROOT)
        wrong += [f"{where}:{line} reads {name}" for line, name in _environment_reads(tree)
                  if name not in PLATFORM_VARIABLES]
        wrong += [f"{where}:{node.lineno} imports {alias.name}" for node in ast.walk(tree)
                  if isinstance(node, ast.ImportFrom) and (node.module or "").endswith("environment")
                  for alias in node.names if alias.name in SETTINGS]
    assert wrong == []


def test_the_configuration_page_is_generated_from_the_table():
    page = (PROJECT_ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    assert page == markdown() + "\n", f"docs/configuration.md is stale: run `{REGENERATE}`"
    assert all(f"`{name}`" in page for name in SETTINGS)


def run_settings(*argv: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hirpf.console", "settings", *argv], cwd=PROJECT_ROOT,
                          capture_output=True, text=True, timeout=120, env=env)


def test_the_settings_command_prints_values_and_sources_and_hides_secrets(tmp_path):
    clean = {k: v for k, v in os.environ.items()
             if not any(k in (s.name, *s.aliases) for s in SETTINGS.values())}
    shown = run_settings(env={**clean, "HIRPF_MAX_BATCH": "3", "HIRPF_ADMIN_PASSWORD": "hunter2-secret"})
    assert shown.returncode == 0, shown.stderr
    rows = {line.split()[0]: line.split()[1:] for line in shown.stdout.splitlines()}
    assert rows["HIRPF_MAX_BATCH"] == ["3", "environment", "(HIRPF_MAX_BATCH)"]
    assert rows["HIRPF_PREFILL_CHUNK"] == ["256", "default"]
    assert rows["HIRPF_ADMIN_PASSWORD"][1:] == ["environment", "(HIRPF_ADMIN_PASSWORD)"]
    assert "hunter2-secret" not in shown.stdout
    assert set(SETTINGS) <= set(rows)
    bad = run_settings(env={**clean, "HIRPF_MAX_BATCH": "none"})
    assert bad.returncode == 2 and "HIRPF_MAX_BATCH='none'" in bad.stdout
    page = run_settings("--markdown", env={**clean, "HIRPF_MAX_BATCH": "3", "HIRPF_DATA_DIR": str(tmp_path)})
    assert page.stdout == (PROJECT_ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")


def test_the_home_imports_neither_torch_nor_gradio():
    code = ("import sys, hirpf.environment, hirpf.model_options, hirpf.settings_table, app.launch_options; "
            "print(sorted(m for m in ('torch', 'gradio', 'transformers') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "[]", result.stderr
