"""python -m annotation: the human-evaluation store without the UI.

    python -m annotation import FILE [--kind his-open|his-scale|his-data|jsonl] [--encoding E]
    python -m annotation export --format csv|jsonl [--output FILE]
    python -m annotation report [--json] [--his_open FILE]
    python -m annotation backup DEST [--every SECONDS --keep N]
    python -m annotation pairs build|import|report|export|judge ...   (blind pairwise studies: pair_cli.py)

Every command takes `--database URL` (default: `DATABASE_URL`, else `data/hirpf.sqlite3`; `HIRPF_DATA_DIR`
moves the folder). `import` exits 1 when it rejected rows (each reported with its line number on standard
error, the rest imported: a bad row never stops an import) and 2 when the file cannot be read at all.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from hirpf.labels import SLOTS


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m annotation", description=__doc__.split("\n")[0])
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--database", metavar="URL", help="SQLAlchemy URL (default: DATABASE_URL, else "
                        "the SQLite file data/hirpf.sqlite3 under HIRPF_DATA_DIR)")
    commands = parser.add_subparsers(dest="command", required=True)
    imports = commands.add_parser("import", parents=[common], help="import dialogues (HIS CSV or JSONL)")
    imports.add_argument("file", type=Path)
    imports.add_argument("--kind", choices=["his-open", "his-scale", "his-data", "jsonl"],
                         help="default: from the extension (.jsonl) or the CSV header")
    imports.add_argument("--encoding", help="the file's text encoding (default: detected)")
    exports = commands.add_parser("export", parents=[common], help="answered/skipped tasks, unblinded")
    exports.add_argument("--format", choices=["csv", "jsonl"], required=True)
    exports.add_argument("--output", type=Path, help="default: standard output")
    reports = commands.add_parser("report", parents=[common], help="agreement report")
    reports.add_argument("--json", action="store_true", help="the full report as JSON")
    reports.add_argument("--his_open", type=Path, metavar="FILE",
                         help="also the GPT-vs-human agreement of this HIS open_sample10_320.csv, straight from "
                              "the file, under our rule and the paper's (how GPT's missing predictions count)")
    backups = commands.add_parser("backup", parents=[common], help="online backup of a SQLite store")
    backups.add_argument("destination", type=Path, help="a file, or a folder for timestamped files")
    backups.add_argument("--every", type=float, metavar="SECONDS", help="repeat forever at this interval")
    backups.add_argument("--keep", type=int, default=24, help="with --every: newest backups to keep")
    from annotation.pair_cli import add_pairs_parser

    add_pairs_parser(commands, common)
    args = parser.parse_args(argv)

    from annotation.store import Store
    from db import Database

    database = Database(args.database)
    try:
        return COMMANDS[args.command](Store(database), args)
    finally:
        database.close()


def _import(store, args) -> int:
    from annotation.store_io import import_file

    try:
        report = import_file(store, args.file, args.kind, args.encoding)
    except (ValueError, OSError) as error:  # the file cannot be read at all (bad rows are in the report)
        print(f"error: {error}", file=sys.stderr)
        return 2
    summary, *details = report.describe().split("\n")
    print(summary)
    for line in details:
        print(line, file=sys.stderr)
    return 1 if report.errors else 0


def _export(store, args) -> int:
    from annotation.store_io import write_csv, write_jsonl

    write = write_csv if args.format == "csv" else write_jsonl
    if args.output is None:
        n = write(store, sys.stdout)
    else:
        with open(args.output, "w", encoding="utf-8", newline="") as out:
            n = write(store, out)
    print(f"{n} row(s) exported", file=sys.stderr)
    return 0


def _report(store, args) -> int:
    from annotation.agreement import format_his_open_agreement, his_open_agreement
    from annotation.his_import import OPEN, HisImportError, read_his_csv
    from annotation.report import build_report

    report = build_report(store.db)
    if args.his_open is not None:
        try:
            his = read_his_csv(args.his_open, kind=OPEN)
        except (HisImportError, OSError) as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        report["his_open_file"] = {"file": str(args.his_open), **his_open_agreement(his.records)}
    if args.json:
        print(json.dumps(report, indent=2, ensure_ascii=False))
        return 0
    print("stored: " + ", ".join(f"{n} {name.replace('_', ' ')}" for name, n in report["counts"].items()))
    rows = [("human vs target", report["human_vs_target"], "accuracy"),
            ("human vs judges", report["human_vs_judge"], "accuracy"),
            ("inter-annotator", report["inter_annotator"], "krippendorff_alpha")]
    print(f"{'':<18}{'figure':<20}" + "".join(f"{s:>12}" for s in SLOTS) + f"{'overall':>10}")
    for name, section, figure in rows:
        cells = "".join(f"{_number(section['per_slot'][s][figure]):>12}" for s in SLOTS)
        print(f"{name:<18}{figure:<20}{cells}{_number(section['overall'][figure]):>10}")
    if "his_open_file" in report:
        print(f"\nHIS open file {report['his_open_file']['file']}, read directly:\n")
        print(format_his_open_agreement(report["his_open_file"]), end="")
    return 0


def _number(value) -> str:
    return "-" if value is None else f"{value:.3f}"


def _backup(store, args) -> int:
    from annotation.backup import backup_sqlite, prune

    if not store.db.is_sqlite:
        print(f"error: {store.db.display_url} is not SQLite: back it up with the server's tools (pg_dump)",
              file=sys.stderr)
        return 2
    if args.every is None:
        print(backup_sqlite(store.db, args.destination))
        return 0
    args.destination.mkdir(parents=True, exist_ok=True)
    while True:  # until interrupted
        print(backup_sqlite(store.db, args.destination), flush=True)
        prune(args.destination, args.keep, Path(store.db.url.database).stem)
        time.sleep(args.every)


def _pairs(store, args) -> int:
    from annotation.pair_cli import run_pairs

    return run_pairs(store.db, args)


COMMANDS = {"import": _import, "export": _export, "report": _report, "backup": _backup, "pairs": _pairs}

if __name__ == "__main__":
    sys.exit(main())
