"""The README and docs/ point at things that exist: links, anchors, files, modules and the CI command.

These check structure, never wording: a page may be rewritten freely as long as what it names is real.
"""
from __future__ import annotations

import re
from importlib.util import find_spec
from pathlib import Path

import pytest

from hirpf.paths import PROJECT_ROOT

from documentation import PAGES

# Backticked paths under these folders name project files (outputs such as runs/ and artifacts/ do not).
SOURCE_FOLDERS = ("hirpf", "app", "annotation", "db", "training", "tests", "benchmarks", "scripts", "models", "docs")


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    return {github_slug(m.group(1)) for m in re.finditer(r"^#+ (.*)$", page.read_text(encoding="utf-8"), re.M)}


def names_a_file(token: str) -> bool:
    """Whether a path-like token claims to be a project file: it has an extension, or its folder exists. URL
    routes (`hirpf/download/<ticket>`, `hirpf/admin/close`) do neither."""
    token = token.rstrip("./")
    return "<" not in token and ("." in token.rsplit("/", 1)[-1] or (PROJECT_ROOT / token).parent.is_dir())


def exists_in_project(path: str) -> bool:
    """A file or folder, or `module.attribute` (`app/reply_serving.paced`) of an existing module."""
    return (PROJECT_ROOT / path).exists() or (PROJECT_ROOT / path).with_suffix(".py").exists()


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
def test_every_relative_link_and_anchor_exists(page):
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text(encoding="utf-8")):
        if re.match(r"[a-z]+:", target):
            continue  # an outside address
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(target)
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            broken.append(target)
    assert broken == []


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
def test_every_project_path_and_module_named_exists(page):
    text = page.read_text(encoding="utf-8")
    tokens = re.findall(r"(?<![\w./-])((?:%s)/[\w./<>-]*)" % "|".join(SOURCE_FOLDERS), text)
    paths = {token.rstrip(".") for token in tokens if names_a_file(token)}
    missing = [p for p in sorted(paths) if not exists_in_project(p)]
    modules = set(re.findall(r"python -m ([a-z_][\w.]*)", text))
    unknown = [m for m in sorted(modules) if m != "pytest" and find_spec(m) is None]
    assert (missing, unknown) == ([], [])


def test_ci_runs_the_readme_setup_and_test_commands():
    readme = (PROJECT_ROOT / "README.md").read_text(encoding="utf-8")
    test_command = next(line.strip() for line in readme.splitlines() if "python -m pytest" in line)
    setup, _, run = test_command.partition(" && ")
    ci = (PROJECT_ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert setup in ci and run in ci


def test_readme_stays_a_front_page():
    """The reference lives in docs/; the README keeps what a newcomer needs first (issue 23: ≤ 200 lines)."""
    assert len((PROJECT_ROOT / "README.md").read_text(encoding="utf-8").splitlines()) <= 200
