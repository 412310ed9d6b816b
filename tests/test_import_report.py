"""Imports never stop halfway: every bad row is reported with its line and reason, on SQLite and
PostgreSQL, and the valid rows before and after it are stored. JSONL lines end at "\\n" only."""
from __future__ import annotations

import errno
import json

import pytest
from sqlalchemy import select, text

from annotation.store import Store
from annotation.store_io import import_file
from db import Database
from db.models import Dialogue

SLOTS = {"AGR": "high", "CON": "none", "EXT": "low", "NEU": "none", "OPE": "none", "Profession": "Doctor"}


def record(i: int, **fields) -> dict:
    return {"dialog": said(f"Question {i}?", f"Answer {i}."), "active_adapters": ["Doctor"], "system": "sim-1",
            **fields}


def said(question: str, answer: str = "x") -> list[dict]:
    return [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]


@pytest.fixture
def store(database_url):
    database = Database(database_url)
    yield Store(database)
    database.close()


def stored_contents(store: Store) -> list[str]:
    with store.db.read() as session:
        return sorted(d.transcript[0]["content"] for d in session.scalars(select(Dialogue)))


def test_bad_rows_are_reported_with_their_line_and_the_rest_is_imported(store, tmp_path):
    scale = dict(kind="scale_interview", statement="I keep things tidy.")
    lines = [
        json.dumps(record(1)),
        json.dumps(record(2, active_adapters=5)),
        "[" * 100_000,
        json.dumps(record(3)),
        '{"dialog": [], "n": ' + "9" * 5000 + "}",
        json.dumps(record(4, dialog=said("hi \ud800"))),
        json.dumps(record(5, system="sim-\ud800")),
        json.dumps(record(6, dialog=said("nul \u0000"))),
        json.dumps(record(7, **scale, factor="F" * 101)),
        json.dumps(record(8, system="sim\u0000")),
        json.dumps(record(9, active_adapters=[["AGR_high"]])),
        json.dumps(record(10, judge={"name": "j", "slots": SLOTS, "raw_reply": "a\u0000b"})),
        json.dumps(record(11)),
    ]
    path = tmp_path / "rows.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")  # json.dumps escaped the surrogates: valid UTF-8
    report = import_file(store, path)
    reasons = dict(report.errors)
    assert (report.added, sorted(reasons)) == (3, [2, 3, 5, 6, 7, 8, 9, 10, 11, 12]), report.describe()
    assert "active_adapters: expected a list of identity names, got a number" in reasons[2]
    assert "nested too deeply" in reasons[3]
    assert "4300" in reasons[5] or "digits" in reasons[5]
    assert "surrogate" in reasons[6] and "content" in reasons[6]
    assert "surrogate" in reasons[7] and "system" in reasons[7]
    assert "NUL" in reasons[8] and "content" in reasons[8]
    assert "factor: 101 characters, the limit is 100" in reasons[9]
    assert "NUL" in reasons[10] and "system" in reasons[10]
    assert "active_adapters: identity names must be text, found a list" in reasons[11]
    assert "NUL" in reasons[12] and "raw reply" in reasons[12]
    assert stored_contents(store) == sorted(["Question 1?", "Question 3?", "Question 11?"])
    assert "\ud800" not in report.describe() and "\u0000" not in report.describe()  # printable and storable


def test_a_full_disk_is_reported_for_its_row_and_later_rows_still_import(tmp_path):
    """A real SQLITE_FULL: the database may not grow past a few pages, so the one large row fails."""
    database = Database(f"sqlite:///{tmp_path / 'small.sqlite3'}")
    store = Store(database)
    store.add_dialogue(record(0)["dialog"], "Doctor")  # the writer connection exists and the WAL is set up

    def limit(session):
        pages = session.execute(text("PRAGMA page_count")).scalar()
        session.execute(text(f"PRAGMA max_page_count = {pages + 40}"))

    database.write(limit)
    big = record(2, dialog=said("big " + "x" * 2_000_000))
    path = tmp_path / "rows.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in (record(1), big, record(3))) + "\n", encoding="utf-8")
    report = import_file(store, path)
    assert (report.added, [line for line, _ in report.errors]) == (2, [2]), report.describe()
    assert "full" in report.errors[0][1]
    assert stored_contents(store) == ["Question 0?", "Question 1?", "Question 3?"]
    database.close()


def test_an_os_error_while_writing_is_reported_for_its_row(store, tmp_path, monkeypatch):
    real_write = store.db.write
    calls = []

    def write(fn):
        calls.append(fn)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fn)

    monkeypatch.setattr(store.db, "write", write)
    path = tmp_path / "rows.jsonl"
    path.write_text("\n".join(json.dumps(record(i)) for i in range(1, 4)) + "\n", encoding="utf-8")
    report = import_file(store, path)
    assert (report.added, [line for line, _ in report.errors]) == (2, [2]), report.describe()
    assert "No space left on device" in report.errors[0][1]
    assert stored_contents(store) == ["Question 1?", "Question 3?"]


def test_jsonl_lines_end_at_newlines_only(store, tmp_path):
    """U+2028, U+2029 and U+0085, which json.dumps(ensure_ascii=False) writes as they are, stay inside their
    record; lines may end in "\\r\\n"."""
    odd = "one\u2028two\u2029three\u0085four"
    records = [record(1, dialog=said(odd)),
               record(2, system="sim\u2028x")]
    path = tmp_path / "rows.jsonl"
    path.write_bytes("\r\n".join(json.dumps(r, ensure_ascii=False) for r in records).encode("utf-8") + b"\r\n")
    report = import_file(store, path)
    assert (report.added, report.errors) == (2, []), report.describe()
    assert stored_contents(store) == ["Question 2?", odd]


def test_a_jsonl_file_whose_first_line_is_broken_is_still_read_line_by_line(store, tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text("[not a record\n" + json.dumps(record(1)) + "\n", encoding="utf-8")
    report = import_file(store, path)
    assert (report.added, [line for line, _ in report.errors]) == (1, [1]), report.describe()


def test_a_json_list_nested_too_deeply_is_refused_whole_with_a_clear_error(store, tmp_path):
    from annotation.records import UnreadableFile

    path = tmp_path / "rows.json"
    path.write_text("[" * 100_000, encoding="utf-8")
    with pytest.raises(UnreadableFile, match="nested too deeply"):
        import_file(store, path)
