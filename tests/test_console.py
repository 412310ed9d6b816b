"""`hirpf COMMAND`: the installed console script runs the same code as each `python -m` form."""
from __future__ import annotations

import subprocess
import sys
from importlib.metadata import entry_points
from importlib.util import find_spec
from pathlib import Path

import pytest

from hirpf.console import COMMANDS
from hirpf.paths import PROJECT_ROOT


def run(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(argv, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120)


def test_every_command_names_a_runnable_module_or_file():
    for target, _ in COMMANDS.values():
        if target.endswith(".py"):
            assert (PROJECT_ROOT / target).is_file()
        else:
            spec = find_spec(target)
            main_module = find_spec(f"{target}.__main__") if spec.submodule_search_locations else spec
            assert main_module is not None, target


def test_the_console_script_is_declared_and_installed():
    installed = entry_points(group="console_scripts", name="hirpf")
    assert [entry.value for entry in installed] == ["hirpf.console:main"], "run `bash scripts/setup.sh`"
    script = Path(sys.executable).parent / "hirpf"
    assert script.exists(), "the hirpf console script is missing: run `bash scripts/setup.sh` (pip install -e .)"


def test_a_command_gives_what_its_python_m_form_gives(tmp_path):
    database = f"sqlite:///{tmp_path / 'store.sqlite3'}"
    via_script = run(str(Path(sys.executable).parent / "hirpf"), "annotation", "report", "--json",
                     "--database", database)
    via_module = run(sys.executable, "-m", "annotation", "report", "--json", "--database", database)
    assert via_script.returncode == via_module.returncode == 0, via_script.stderr
    assert via_script.stdout == via_module.stdout


@pytest.mark.parametrize("argv, status", [(["nope"], 2), ([], 2), (["--help"], 0)])
def test_unknown_or_missing_commands_say_what_there_is(argv, status):
    result = run(sys.executable, "-m", "hirpf.console", *argv)
    assert result.returncode == status
    listed = result.stdout + result.stderr
    assert all(name in listed for name in COMMANDS)
    if argv == ["nope"]:
        assert "'nope'" in result.stderr


def test_the_hirpf_cli_keeps_its_subcommand_and_exit_status():
    """A flag without its value fails as `python -m hirpf export` does: argparse's status 2."""
    result = run(sys.executable, "-m", "hirpf.console", "export", "--output")
    assert result.returncode == 2 and "--output" in result.stderr
