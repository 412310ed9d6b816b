"""What the app's annotation tests share: seeded dialogues with a secret system name and targets, the
annotator endpoints' outputs as a `Screen`, and the calls an annotator or the admin makes through
`gradio_client` and raw HTTP."""
from __future__ import annotations

import re
from pathlib import Path
from typing import NamedTuple

import httpx
from gradio_client import Client
from sqlalchemy import func, select

from app.evaluation_store import open_store
from db.models import Annotation, AnnotationTask, Annotator, Dialogue

SYSTEM = "secret-system-x"  # a system name no annotator may ever see
SOURCE = "secret-run-42.jsonl"
PASSWORD = "correct horse battery staple"
TARGETS = [["AGR_high", "EXT_low", "Doctor"], ["CON_low", "OPE_high", "Artist"], ["NEU_high", "Programmer"]]
# Our own dialogue text, free of identity words, so any such word in a response came from somewhere else.
OPENERS = ["How was the weekend?", "What will you cook tonight?", "Any plans for the summer?"]
# The submit endpoint's parameters, one per slot in `SLOTS` order.
ANSWER = {"agreeableness": "high", "conscientiousness": "low", "extraversion": "none", "neuroticism": "none",
          "openness": "high", "profession": "none"}


class Screen(NamedTuple):
    """An annotator endpoint's outputs, in `build_annotation_tab`'s order (layout columns carry no value)."""

    who: dict | None
    header: str
    prompt: str
    transcript: str
    slots: list
    scale: object
    comment: str
    skip_reason: str
    message: str
    task: str
    resume_code: str | None  # the one-time code in the banner at the top (sign-ins only)

    @classmethod
    def of(cls, result: tuple, who: dict | None = None) -> Screen:
        """`who`: the sign-in that was sent, kept where the endpoint leaves the stored sign-in as it is."""
        def value(output, unchanged=None):
            if isinstance(output, dict) and output.get("__type__") == "update":
                return output.get("value", unchanged)
            return unchanged if output is None else output

        v = [value(r) for r in result]
        return cls(value(result[0], who), v[1], v[2], v[3], v[4:10], v[10], v[11], v[12], v[13], v[14],
                   v[15] if len(v) > 15 else None)


def seed_dialogues(data_dir: Path, n: int = 3) -> list[str]:
    """Dialogues with targets, a system name and a source file; returns their public ids."""
    store = open_store(data_dir)
    ids = []
    for i in range(n):
        turns = [{"role": "system", "content": f"You are {', '.join(TARGETS[i % 3])}, running on {SYSTEM}."},
                 {"role": "user", "content": OPENERS[i % 3]},
                 {"role": "assistant", "content": f"Quietly, at home {i}. I am {SYSTEM}, by the way."},
                 {"role": "user", "content": "Sounds nice."},
                 {"role": "assistant", "content": f"It was fine <b>really</b> {{{{value}}}} ${{value}} {i}."}]
        ids.append(store.add_dialogue(turns, TARGETS[i % 3], source="simulator", system=SYSTEM,
                                      source_ref=f"{SOURCE}:{i + 1}").dialogue)
    return ids


def count_dialogues(data_dir: Path) -> int:
    with open_store(data_dir).db.read() as session:
        return session.scalar(select(func.count()).select_from(Dialogue))


def sign_in(c: Client, name: str = "Ada", code: str | None = None) -> Screen:
    return Screen.of(c.predict(name=name, code=code, api_name="/annotation_sign_in"))


def resume_code(screen: Screen) -> str:
    """The resume code a first sign-in shows (once)."""
    assert re.fullmatch(r"[A-Z0-9]{4}-[A-Z0-9]{4}-[A-Z0-9]{4}", screen.resume_code or ""), screen.resume_code
    return screen.resume_code


def admin_cookies(url: str, claim: str) -> httpx.Cookies:
    """The admin session's cookie, as the page gets it: the one-time claim from unlocking, posted back."""
    response = httpx.post(url + "hirpf/admin/cookie", content=claim)
    assert response.status_code == 204, response.text
    return response.cookies


def admin_download(url: str, markdown: str, cookies: httpx.Cookies) -> str:
    """The file behind an admin download link, fetched with the admin session's cookie."""
    link = re.search(r"\]\((hirpf/download/[^)]+)\)", markdown).group(1)
    response = httpx.get(url + link, cookies=cookies)
    assert response.status_code == 200, response.text
    return response.text


def submit(c: Client, screen: Screen, comment: str = "", **labels) -> Screen:
    values = {**ANSWER, **labels}
    return Screen.of(c.predict(annotator=screen.who, task_id=screen.task, comment_text=comment, **values,
                               api_name="/annotation_submit"), screen.who)


def stored_answers(data_dir: Path) -> list[tuple]:
    with open_store(data_dir).db.read() as session:
        return session.execute(select(Annotator.display_name, Annotation.slots, Annotation.option, Annotation.comment,
                                      Annotation.edits, AnnotationTask.public_id).select_from(Annotation)
                               .join(AnnotationTask).join(Annotator).order_by(Annotation.id)).all()
