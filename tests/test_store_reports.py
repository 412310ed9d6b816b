"""Reports (humans against targets, judges and each other; the HIS files' agreement), the import/export
CLI and online backups, on SQLite and PostgreSQL."""
from __future__ import annotations

import csv
import io
import json
import os
import re
import subprocess
import sys
import time
from collections import Counter

import pytest
from sqlalchemy import select

from annotation import agreement
from annotation.assignment import AssignmentPolicy
from annotation.records import JudgeLabel, UnreadableFile
from annotation.store import Store
from db import Database
from db.models import AnnotationTask, Annotator, Dialogue
from hirpf.identities import IdentitySet
from hirpf.labels import SLOTS, slots_from_identities
from hirpf.paths import PROJECT_ROOT, his_file

from store_helpers import (
    ARTIST,
    DOCTOR,
    assigned,
    items,
    snapshot,
    turns,
)


# --- reports ----------------------------------------------------------------------------------------------
def test_exports_and_reports_name_annotators_by_pseudonyms_of_their_own(database):
    """An annotator's id once signed them in: no export or report prints it. Each names annotators by a
    pseudonym that holds within the file and changes from one file to the next."""
    from annotation import sessions
    from annotation.report import build_report
    from annotation.store_io import write_csv, write_jsonl

    store = Store(database, AssignmentPolicy(overlap=2))
    items(store, 2)
    ada, bo = store.register_annotator("Ada"), store.register_annotator("Bo")
    for annotator in (ada, bo):
        for _ in range(2):
            store.submit(store.next_task(annotator).task, slots=DOCTOR)

    def csv_pseudonyms() -> dict[str, set[str]]:
        out = io.StringIO()
        write_csv(store, out)
        assert ada not in out.getvalue() and bo not in out.getvalue()
        names: dict[str, set[str]] = {}
        for row in csv.DictReader(io.StringIO(out.getvalue())):
            names.setdefault(row["annotator"], set()).add(row["annotator_id"])
        return names

    first, second = csv_pseudonyms(), csv_pseudonyms()
    assert all(len(ids) == 1 for ids in first.values())  # stable within one export
    assert first["Ada"] != first["Bo"] and first["Ada"] != second["Ada"]  # distinct, and per export
    lines = io.StringIO()
    write_jsonl(store, lines)
    assert ada not in lines.getvalue() and bo not in lines.getvalue()
    report = build_report(database)
    assert ada not in json.dumps(report) and bo not in json.dumps(report)
    keys = report["human_vs_target"]["per_annotator"]
    assert sorted(a["display_name"] for a in keys.values()) == ["Ada", "Bo"]
    for pseudonym in [*keys, *next(iter(first.values()))]:  # meaningless to the API
        with pytest.raises(sessions.SessionEnded):
            sessions.annotator_of(database, pseudonym)


def test_the_report_compares_humans_with_targets_judges_and_each_other(database):
    from annotation.report import build_report

    store = Store(database, AssignmentPolicy(overlap=2))
    targets = ["Doctor,AGR_high,EXT_low", "Artist,AGR_low,CON_high,OPE_high", "Programmer,NEU_high", "OPE_low"]
    for i, target in enumerate(targets):
        store.add_dialogue(turns(i), target, system=f"sys-{i % 2}",
                           judges=[JudgeLabel("judge-a", slots=DOCTOR if i % 2 else ARTIST)])
    ada, bo = store.register_annotator("Ada"), store.register_annotator("Bo")
    answers = {ada: [DOCTOR, ARTIST, DOCTOR, ARTIST], bo: [DOCTOR, ARTIST, ARTIST, ARTIST]}
    given = {}
    for annotator, labels in answers.items():
        store.assign(annotator)
        for task_labels, dialogue in zip(labels, sorted(assigned(store, annotator), key=_index_of(store))):
            view = _view_of(store, annotator, dialogue)
            store.submit(view.task, slots=task_labels)
            given[annotator, dialogue] = task_labels
    report = build_report(database)
    assert set(report) >= {"human_vs_target", "human_vs_judge", "inter_annotator"}
    for section in ("human_vs_target", "human_vs_judge", "inter_annotator"):
        assert set(report[section]["per_slot"]) == set(SLOTS) and report[section]["overall"]

    # Independent count: human vs target accuracy on AGR and exact match.
    target_of = {d: slots_from_identities(IdentitySet.parse(t))
                 for d, t in zip(sorted(assigned(store, ada), key=_index_of(store)), targets)}
    pairs = [(labels, target_of[d]) for (_, d), labels in given.items()]
    assert report["human_vs_target"]["per_slot"]["AGR"]["accuracy"] == pytest.approx(
        sum(h["AGR"] == t["AGR"] for h, t in pairs) / len(pairs))
    assert report["human_vs_target"]["overall"]["exact_match"] == pytest.approx(
        sum(h == t for h, t in pairs) / len(pairs))
    by_name = {a["display_name"]: a for a in report["human_vs_target"]["per_annotator"].values()}
    assert by_name["Bo"]["overall"]["n"] == 4
    # Two annotators: Cohen's kappa per slot, on their paired labels.
    order = sorted(assigned(store, ada), key=_index_of(store))
    for slot in ("AGR", "Profession"):
        expected = agreement.cohen_kappa([given[ada, d][slot] for d in order], [given[bo, d][slot] for d in order])
        figure = report["inter_annotator"]["per_slot"][slot]["cohen_kappa"]
        assert figure == pytest.approx(expected)
    judge = report["human_vs_judge"]["per_judge"]["judge-a"]
    assert judge["overall"]["n"] == 8 and set(judge["per_system"]) == {"sys-0", "sys-1"}


def _index_of(store: Store):
    """Sort key: a dialogue's number i (from its first user turn), to line answers up with targets."""
    with store.db.read() as session:
        numbers = {d.public_id: int(re.search(r"\d+", d.transcript[1]["content"]).group())
                   for d in session.scalars(select(Dialogue))}
    return numbers.__getitem__


def _view_of(store: Store, annotator: str, dialogue: str) -> dict:
    with store.db.read() as session:
        task = session.scalar(select(AnnotationTask.public_id).join(Dialogue).join(Annotator).where(
            Annotator.public_id == annotator, Dialogue.public_id == dialogue))
    return store.task_view(task)


def test_imported_his_open_file_reproduces_the_gpt_versus_human_agreement(database):
    """The 320-dialogue HIS file through the store and the report gives the same GPT-vs-human figures as
    reading the file directly."""
    from annotation.agreement import his_open_agreement
    from annotation.his_import import read_his_csv
    from annotation.report import build_report
    from annotation.store_io import import_file

    path = his_file("human_evaluation/open_sample10_320.csv")
    if not path.exists():
        pytest.skip(f"HIS data not found at {path}")
    store = Store(database)
    result = import_file(store, path)
    assert (result.kind, result.added, result.errors) == ("his-open", 320, [])
    direct = his_open_agreement(read_his_csv(path).records)
    stored = build_report(database)["human_vs_judge"]["per_judge"]["his-gpt"]
    for slot in SLOTS:
        assert stored["per_slot"][slot] == pytest.approx(direct["overall"]["gpt_vs_human"]["per_slot"][slot])
    for system, figures in direct["per_system"].items():
        assert stored["per_system"][system]["overall"] == pytest.approx(figures["gpt_vs_human"]["overall"])
    # Imported label sets are never handed tasks and leave the overlap to our annotators.
    assert store.assign(store.register_annotator("Ada"), 5) == 5
    assert import_file(store, path).duplicates == 320


def test_imported_his_scale_and_dataset_files_reach_the_report(database):
    """The 50 scale interviews (referee vs human option) and the 50 dataset samples (human labels vs the
    target identities) through the store give the figures straight counting of the CSV columns gives."""
    from annotation.report import build_report
    from annotation.store_io import import_file

    scale_path, data_path = (his_file(f"human_evaluation/{n}") for n in ("scale_sample50.csv", "data_sample50.csv"))
    if not scale_path.exists() or not data_path.exists():
        pytest.skip("HIS human-evaluation files not found")
    store = Store(database)
    assert (import_file(store, scale_path).kind, import_file(store, data_path).kind) == ("his-scale", "his-data")
    with scale_path.open(encoding="utf-8", errors="replace", newline="") as f:
        scale_rows = list(csv.DictReader(f))
    report = build_report(database)
    scale = report["human_vs_judge"]["per_judge"]["his-judge"]["scale"]
    assert scale["n"] == len(scale_rows) == 50
    assert scale["accuracy"] == pytest.approx(sum(r["judge_ans"] == r["human_ans"] for r in scale_rows) / 50)
    assert scale["mean_abs_diff"] == pytest.approx(
        sum(abs(float(r["judge_score"]) - float(r["human_score"])) for r in scale_rows) / 50)
    target = report["human_vs_target"]
    assert target["overall"]["n"] == 50 and 0.5 < target["overall"]["accuracy"] <= 1.0
    with database.read() as session:
        kinds = Counter(session.scalars(select(Dialogue.kind)))
    assert kinds == {"scale_interview": 50, "identity": 50}


# --- files in and out ------------------------------------------------------------------------------------
def _run_cli(*args: str, database: str) -> subprocess.CompletedProcess:
    """`python -m annotation` in a real process."""
    return subprocess.run([sys.executable, "-m", "annotation", *args, "--database", database], cwd=PROJECT_ROOT,
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)},
                          timeout=300)


def _cli(capsys, *args: str, database: str) -> subprocess.CompletedProcess:
    """The same entry point in this process (a new process costs seconds of imports)."""
    from annotation.__main__ import main

    capsys.readouterr()
    code = main([*args, "--database", database])
    out = capsys.readouterr()
    return subprocess.CompletedProcess(args, code, out.out, out.err)


def test_cli_import_export_report_round_trip(database, tmp_path, capsys):
    url = database.url.render_as_string(hide_password=False)
    good = [{"dialog": turns(i), "active_adapters": ["Doctor", "AGR_high"], "system": "sim-3b", "source": "simulator",
             "judge": {"name": "judge-x", "slots": DOCTOR, "raw_reply": "{...}"}} for i in range(3)]
    lines = [json.dumps(good[0]), "{not json", json.dumps(good[1]),
             json.dumps({"dialog": [{"role": "bard", "content": "hi"}], "active_adapters": []}),
             "", json.dumps({**good[2], "dialog": good[2]["dialog"], "system": "sim-3b – “café”"}),
             json.dumps({"dialog": turns(9), "active_adapters": ["AGR_high", "AGR_low"]}),
             json.dumps({"dialog": turns(8), "judge": {"name": "j", "slots": {"AGR": "maybe"}}})]
    source = tmp_path / "simulated.jsonl"
    source.write_text("\n".join(lines) + "\n", encoding="cp1252")

    first = _run_cli("import", str(source), "--encoding", "cp1252", database=url)
    assert first.returncode == 1, first.stderr
    assert "3 dialogue(s) added" in first.stdout
    rejected = dict(re.findall(r"line (\d+): (.*)", first.stderr))
    assert set(rejected) == {"2", "4", "7", "8"}
    assert "not JSON" in rejected["2"] and "unknown role 'bard'" in rejected["4"]
    assert "AGR" in rejected["7"] and "unknown label" in rejected["8"]
    again = _cli(capsys, "import", str(source), "--encoding", "cp1252", database=url)
    assert "0 dialogue(s) added, 3 already stored" in again.stdout
    undecodable = tmp_path / "binary.jsonl"
    undecodable.write_bytes(b"\x00\x81\xff" * 10)
    failed = _cli(capsys, "import", str(undecodable), database=url)
    assert failed.returncode == 2 and "error:" in failed.stderr

    store = Store(database)
    annotator = store.register_annotator("Ada", external_id="hf:ada")
    while (view := store.next_task(annotator)) is not None:
        if view.position == 2:
            store.skip(view.task, "too short")
        else:
            store.submit(view.task, slots=ARTIST, comment='says "=1+1", <b>hi</b>', seconds=9)

    exported = _cli(capsys, "export", "--format", "csv", database=url)
    assert exported.returncode == 0, exported.stderr
    rows = list(csv.DictReader(io.StringIO(exported.stdout)))
    assert len(rows) == 3 and Counter(r["status"] for r in rows) == {"done": 2, "skipped": 1}
    done = [r for r in rows if r["status"] == "done"]
    assert {r["target"] for r in rows} == {"AGR_high,Doctor"}
    assert all(r["target:Profession"] == "Doctor" and r["human:Profession"] == "Artist" for r in done)
    assert all(r["judge:judge-x:AGR"] == "high" and r["system"].startswith("sim-3b") for r in rows)
    assert {r["comment"] for r in done} == {'says "=1+1", <b>hi</b>'}
    assert any(r["system"] == "sim-3b – “café”" for r in rows)
    out = tmp_path / "export.jsonl"
    assert _cli(capsys, "export", "--format", "jsonl", "--output", str(out), database=url).returncode == 0
    records = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert len(records) == 3 and all(r["annotator"]["external_id"] == "hf:ada" for r in records)
    assert all(r["dialogue"]["transcript"][0]["role"] == "system" for r in records)  # the original

    reported = _cli(capsys, "report", "--json", database=url)
    assert reported.returncode == 0, reported.stderr
    report = json.loads(reported.stdout)
    assert report["human_vs_target"]["overall"]["n"] == 2
    assert report["human_vs_target"]["per_slot"]["Profession"]["accuracy"] == 0.0
    assert report["human_vs_judge"]["per_judge"]["judge-x"]["overall"]["n"] == 2
    assert report["counts"]["skipped"] == 1
    text_report = _cli(capsys, "report", database=url)
    assert text_report.returncode == 0 and "human vs target" in text_report.stdout

    backup = _cli(capsys, "backup", str(tmp_path / "copy.sqlite3"), database=url)
    if database.is_sqlite:
        assert backup.returncode == 0 and (tmp_path / "copy.sqlite3").exists()
    else:
        assert backup.returncode == 2 and "pg_dump" in backup.stderr



def test_report_shows_the_his_files_published_rule_beside_ours(database, capsys):
    """Issue 12 item 10: `report` gave 0.953 for GPT vs human on the 320-dialogue file, reading GPT's missing
    predictions as none; the paper's rule (the file's TRUE column) counts them as disagreements: 0.924."""
    path = his_file("human_evaluation/open_sample10_320.csv")
    if not path.exists():
        pytest.skip(f"HIS data not found at {path}")
    url = database.url.render_as_string(hide_password=False)
    assert _cli(capsys, "import", str(path), database=url).returncode == 0
    text = _cli(capsys, "report", "--his_open", str(path), database=url)
    assert text.returncode == 0, text.stderr
    lines = text.stdout.splitlines()

    def overall_accuracy(section: str) -> str:
        start = next(i for i, line in enumerate(lines) if line.startswith(section))
        assert "missing" in lines[start]  # the heading says how a missing prediction counts
        return next(line for line in lines[start:] if line.startswith("overall")).split()[-2]
    assert overall_accuracy("gpt vs human, ours") == "0.953"
    assert overall_accuracy("gpt vs human, published rule") == "0.924"
    as_json = json.loads(_cli(capsys, "report", "--json", "--his_open", str(path), database=url).stdout)
    his = as_json["his_open_file"]["overall"]
    assert his["gpt_vs_human"]["overall"]["accuracy"] == pytest.approx(0.953, abs=5e-4)
    assert his["gpt_vs_human_published_rule"]["overall"]["accuracy"] == pytest.approx(0.924, abs=5e-4)
    assert his["gpt_vs_human_published_rule"]["per_slot"]["Profession"]["accuracy"] == pytest.approx(0.8625)

def test_a_json_list_file_imports_record_by_record(database, tmp_path):
    """A `.json` file holding one list (the HIS training files' shape): bad records are reported by position,
    the rest stored; a list that is not valid JSON is refused whole and stores nothing."""
    from annotation.store_io import import_file

    store = Store(database)
    path = tmp_path / "dialogues.json"
    path.write_text(json.dumps([{"dialog": turns(1), "active_adapters": ["Doctor"]},
                                {"dialog": [], "active_adapters": ["Doctor"]},
                                {"dialog": turns(2), "active_adapters": ["EMS_high"]}]), encoding="utf-8")
    report = import_file(store, path)
    assert (report.kind, report.added, [line for line, _ in report.errors]) == ("json", 2, [2])
    assert "record 2:" in report.describe()
    before = snapshot(database)
    path.write_text('[{"dialog": []}, oops]', encoding="utf-8")
    with pytest.raises(UnreadableFile, match="not a valid JSON list"):
        import_file(store, path)
    assert snapshot(database) == before


def test_online_backup_copies_a_consistent_database(tmp_path):
    from annotation.backup import PeriodicBackup, backup_sqlite, prune

    database = Database(f"sqlite:///{tmp_path / 'live.sqlite3'}")
    store = Store(database)
    items(store, 4)
    copy = backup_sqlite(database, tmp_path / "backups" / "copy.sqlite3")
    restored = Database(f"sqlite:///{copy}")
    assert snapshot(restored) == snapshot(database)
    folder = tmp_path / "rolling"
    folder.mkdir()
    made = [backup_sqlite(database, folder) for _ in range(3)]
    assert len(set(made)) == 3 and len(prune(folder, 2, "live")) == 1
    assert sorted(folder.iterdir()) == sorted(made[1:])
    restored.close()
    periodic = PeriodicBackup(database, tmp_path / "periodic", every=0.05, keep=2).start()
    try:
        for _ in range(200):
            if periodic.last is not None:
                break
            time.sleep(0.05)
    finally:
        periodic.stop()
    assert periodic.error is None and periodic.last is not None and periodic.last.exists()
    database.close()
