"""The HIS human-evaluation CSVs: the real files parse (read in place from ../shared/his), malformed rows are
reported with their lines, encodings are detected or taken, and the GPT-vs-human agreement is reproduced."""
import ast
import csv
import io
from collections import Counter, defaultdict

import pytest

from annotation.agreement import format_his_open_agreement, his_open_agreement, slot_agreement
from annotation.his_import import DATASET, FILES, OPEN, SCALE, HisImportError, read_his_csv, read_text
from hirpf.labels import SLOTS
from hirpf.paths import his_file

HIS_SLOT_ORDER = ("AGR", "CON", "EXT", "EMS", "OPE", "Profession")  # the HIS files' own slot names
FLIP = {"high": "low", "low": "high"}


def his_path(kind):
    path = his_file(FILES[kind])
    if not path.exists():
        pytest.skip(f"HIS data not found at {path}")
    return path


@pytest.fixture(scope="module")
def open_file():
    return read_his_csv(his_path(OPEN))


def raw_rows(path):
    """The file's rows by a second, naive route: csv on a lenient decode, cells left as written."""
    text = path.read_bytes().decode("utf-8", errors="replace")
    return list(csv.DictReader(io.StringIO(text, newline="")))


def his_value(value):
    return "none" if value in (None, "None", "") else value


# --- the three real files -------------------------------------------------------------------------------
def test_open_file_parses_every_row(open_file):
    assert open_file.kind == OPEN and open_file.errors == []
    assert len(open_file.records) == 320
    assert Counter(r.system for r in open_file.records) == {"gpt": 80, "ours": 80, "llama2": 80, "llama3": 80}
    assert all(r.turns and r.target_slots and r.judge_slots and r.human_slots for r in open_file.records)
    assert [r.line for r in open_file.records] == list(range(2, 322))  # one physical line per row


def test_open_file_ems_is_flipped_into_neu(open_file):
    raw = raw_rows(his_path(OPEN))
    flipped = 0
    for record, row in zip(open_file.records, raw):
        for column, slots in (("identity", record.target_slots), ("gpt_pred", record.judge_slots),
                              ("human_pred", record.human_slots)):
            ems = his_value(ast.literal_eval(row[column])["EMS"])
            assert slots["NEU"] == FLIP.get(ems, ems)
            flipped += ems != "none"
            assert list(slots) == list(SLOTS)
    assert flipped > 0


def test_damaged_utf8_is_replaced_and_reported():
    for kind in (OPEN, SCALE):
        path = his_path(kind)
        decoded = read_text(path)
        assert decoded.encoding == "utf-8" and decoded.damaged
        data = path.read_bytes()
        for offset in decoded.damaged:  # each reported offset starts a sequence that is not UTF-8
            with pytest.raises(UnicodeDecodeError):
                data[offset:offset + 4].decode("utf-8")
        assert decoded.text.count("\ufffd") >= len(decoded.damaged)
        parsed = read_his_csv(path)
        assert parsed.notes and f"{len(decoded.damaged)} damaged UTF-8" in parsed.notes[0]
    with pytest.raises(HisImportError, match=r"not valid utf-8: byte 0x.. at byte offset \d+"):
        read_text(his_path(OPEN), encoding="utf-8")  # an explicit encoding is strict


def test_scale_file_parses_items_answers_and_personas():
    parsed = read_his_csv(his_path(SCALE))
    assert parsed.kind == SCALE and parsed.errors == [] and len(parsed.records) == 50
    for record, row in zip(parsed.records, raw_rows(his_path(SCALE))):
        assert record.judge_option == int(row["judge_score"]) and record.human_option == int(row["human_score"])
        assert (record.judge_option == record.human_option) == (row["TRUE"] == "TRUE")
        assert record.target_slots is not None  # every interview names its persona
        factor, polarity = row["factor_polarity"].rsplit("_", 1)
        if factor == "Neuroticism":  # keyed toward emotional stability: _pos is low neuroticism
            assert (record.item_slot, record.item_pole) == ("NEU", "low" if polarity == "pos" else "high")
        if factor in ("Doctor", "Artist", "Programmer"):
            assert (record.item_slot, record.item_pole) == ("Profession", factor)


def test_dataset_file_parses_transcripts_targets_and_labels():
    parsed = read_his_csv(his_path(DATASET))
    assert parsed.kind == DATASET and parsed.errors == [] and len(parsed.records) == 50
    for record, row in zip(parsed.records, raw_rows(his_path(DATASET))):
        assert record.turns[0]["role"] == "system"
        assert {t["role"] for t in record.turns[1:]} == {"user", "assistant"}
        assert "<<user>>" not in record.turns[1]["content"]
        # the file's own `equal` column: the human labels equal the adapters
        assert (record.human_slots == record.target_slots) == (row["equal"] == "TRUE")
        assert record.human_slots["NEU"] == FLIP.get(his_value(row["EMS"]), his_value(row["EMS"]))


# --- the GPT-versus-human agreement of the 320-dialogue file ---------------------------------------------
def naive_kappa(a, b):
    n = len(a)
    p_o = sum(x == y for x, y in zip(a, b)) / n
    p_e = sum(a.count(k) * b.count(k) for k in set(a) | set(b)) / n / n
    return (p_o - p_e) / (1 - p_e)


def test_his_open_agreement_reproduced_by_straight_counting(open_file):
    result = his_open_agreement(open_file.records)
    assert result["n"] == 320
    assert sum(s["gpt_vs_human"]["overall"]["n"] for s in result["per_system"].values()) == 320
    # Second route: the raw CSV cells, counted by hand per system and slot.
    by_system = defaultdict(lambda: defaultdict(lambda: ([], [])))
    for row in raw_rows(his_path(OPEN)):
        gpt, human = ast.literal_eval(row["gpt_pred"]), ast.literal_eval(row["human_pred"])
        for key in HIS_SLOT_ORDER:
            for group in (row["model"], "overall"):
                by_system[group][key][0].append(his_value(gpt[key]))
                by_system[group][key][1].append(his_value(human[key]))
    for group, slots in by_system.items():
        figures = result["overall" if group == "overall" else "per_system"]
        figures = (figures if group == "overall" else figures[group])["gpt_vs_human"]
        for key, (gpt, human) in slots.items():
            slot = figures["per_slot"]["NEU" if key == "EMS" else key]
            assert slot["n"] == (320 if group == "overall" else 80)
            assert slot["accuracy"] == pytest.approx(sum(x == y for x, y in zip(gpt, human)) / len(gpt))
            assert slot["kappa"] == pytest.approx(naive_kappa(gpt, human))
    for system in result["per_system"].values():
        for comparison in system.values():
            for slot in comparison["per_slot"].values():
                assert 0 <= slot["accuracy"] <= 1 and -1 <= slot["kappa"] <= 1


def test_the_files_true_column_compares_raw_values(open_file):
    # The published TRUE column is GPT == human per slot on the raw cells, so GPT's None against the
    # human's 'None' counts as a disagreement there; we compare labels, which only adds agreements.
    for record, row in zip(open_file.records, raw_rows(his_path(OPEN))):
        gpt, human = ast.literal_eval(row["gpt_pred"]), ast.literal_eval(row["human_pred"])
        published = ast.literal_eval(row["TRUE"])
        assert published == [gpt[k] == human[k] for k in HIS_SLOT_ORDER]
        ours = [record.judge_slots[s] == record.human_slots[s] for s in SLOTS]
        assert all(o or not p for o, p in zip(ours, published))



def test_the_published_rule_is_reported_beside_ours(open_file):
    """Issue 12 item 10: the paper counts GPT's missing prediction (None) against the human's 'None' as a
    disagreement (the file's TRUE column); we read it as none. Both figures, each under its own name."""
    result = his_open_agreement(open_file.records)
    ours, published = result["overall"]["gpt_vs_human"], result["overall"]["gpt_vs_human_published_rule"]
    assert ours["overall"]["accuracy"] == pytest.approx(0.953, abs=5e-4)
    assert published["overall"]["accuracy"] == pytest.approx(0.924, abs=5e-4)
    assert published["per_slot"]["Profession"]["accuracy"] == pytest.approx(0.8625)
    # Slot by slot and system by system, the published figure is the TRUE column's mean.
    true_column = defaultdict(lambda: defaultdict(list))
    for row in raw_rows(his_path(OPEN)):
        for key, agrees in zip(HIS_SLOT_ORDER, ast.literal_eval(row["TRUE"])):
            for group in (row["model"], "overall"):
                true_column[group]["NEU" if key == "EMS" else key].append(agrees)
    for group, slots in true_column.items():
        figures = (result["overall"] if group == "overall" else result["per_system"][group])
        for slot, agrees in slots.items():
            assert figures["gpt_vs_human_published_rule"]["per_slot"][slot]["accuracy"] == pytest.approx(
                sum(agrees) / len(agrees))
    table = format_his_open_agreement(result)
    assert "gpt vs human, published rule" in table and "missing prediction" in table


def test_missing_predictions_are_recorded(open_file):
    missing = Counter(slot for r in open_file.records for slot in r.judge_missing)
    assert missing == {"Profession": 42, "OPE": 25, "EXT": 8, "NEU": 4}
    assert all(r.judge_slots[s] == "none" for r in open_file.records for s in r.judge_missing)

def test_target_views_and_table(open_file):
    result = his_open_agreement(open_file.records)
    overall = result["overall"]
    target = [r.target_slots for r in open_file.records]
    human = [r.human_slots for r in open_file.records]
    assert overall["human_vs_target"] == slot_agreement(human, target)
    given = overall["human_vs_target_given"]["per_slot"]["AGR"]
    scored = [(h["AGR"], t["AGR"]) for h, t in zip(human, target) if t["AGR"] != "none"]
    assert given["n"] == len(scored)
    assert given["accuracy"] == pytest.approx(sum(h == t for h, t in scored) / len(scored))
    table = format_his_open_agreement(result)
    for name in ("gpt", "ours", "llama2", "llama3", "overall", "gpt vs human", *SLOTS):
        assert name in table


# --- crafted files: malformed rows, encodings --------------------------------------------------------------
OPEN_HEADER = ["model", "identity", "dialog", "gpt_pred", "human_pred", "TRUE"]
LABELS = "{'AGR': 'high', 'CON': None, 'EXT': 'low', 'EMS': 'high', 'OPE': None, 'Profession': 'Doctor'}"


def open_row(model="sys-a", text="Hello there.", labels=LABELS, dialog=None):
    dialog = dialog or repr({"dialog": [{"role": "user", "content": text},
                                        {"role": "assistant", "content": "Hi! How are you?"}]})
    return [model, labels, dialog, labels, labels, "[True] * 6"]


def write_csv(path, rows, encoding="utf-8"):
    buffer = io.StringIO(newline="")
    csv.writer(buffer).writerows(rows)
    path.write_bytes(buffer.getvalue().encode(encoding))
    return path


def test_malformed_rows_are_reported_with_their_lines_and_the_rest_parse(tmp_path):
    two_line_dialog = open_row(text="spans\ntwo lines")[2].replace("}, {", "},\n{")
    rows = [OPEN_HEADER,
            open_row(text="first line"),                                    # line 2
            open_row()[:4],                                                  # line 3: 4 fields
            open_row(labels="{'AGR': 'high'"),                               # line 4: not a literal
            open_row(labels=LABELS.replace("'low'", "'medium'")),            # line 5: unknown label
            open_row(dialog="{'dialog': []}"),                               # line 6: no turns
            open_row(dialog=two_line_dialog),                                 # lines 7-8: fine
            open_row(labels="__import__('os').getcwd()"),                    # line 9: code is not run
            open_row(model="sys-b", text="<script>alert(1)</script>")]      # line 10: text stays text
    parsed = read_his_csv(write_csv(tmp_path / "crafted.csv", rows))
    assert [e.line for e in parsed.errors] == [3, 4, 5, 6, 9]
    reasons = [e.reason for e in parsed.errors]
    assert "expected 6 fields, found 4" in reasons[0]
    assert "identity: not a Python literal" in reasons[1]
    assert "medium" in reasons[2] and "no turns" in reasons[3] and "not a Python literal" in reasons[4]
    assert [r.line for r in parsed.records] == [2, 7, 10]
    assert parsed.records[1].turns[0]["content"] == "spans\ntwo lines"
    assert parsed.records[2].turns[0]["content"] == "<script>alert(1)</script>"
    assert parsed.records[0].target_slots["NEU"] == "low"  # EMS high



def test_a_duplicated_column_is_refused(tmp_path):
    """Issue 12 item 10: a second `human_pred` column silently won over the first."""
    rows = [OPEN_HEADER + ["human_pred"], open_row() + [LABELS.replace("'high'", "'low'")]]
    with pytest.raises(HisImportError, match=r"dup\.csv: column 'human_pred' appears twice \(columns 5 and 7\)"):
        read_his_csv(write_csv(tmp_path / "dup.csv", rows))
    with pytest.raises(HisImportError, match="appears twice"):  # also when the kind is given
        read_his_csv(write_csv(tmp_path / "dup.csv", rows), kind=OPEN)
    padded = [["model", " model "] + OPEN_HEADER[1:], open_row()[:1] + open_row()]
    with pytest.raises(HisImportError, match="column 'model' appears twice"):  # names are compared stripped
        read_his_csv(write_csv(tmp_path / "padded.csv", padded))

def test_csv_syntax_errors_are_row_errors(tmp_path):
    path = write_csv(tmp_path / "quotes.csv", [OPEN_HEADER, open_row(), open_row()])
    lines = path.read_text().splitlines(keepends=True)
    path.write_text(lines[0] + lines[1] + '"stray"quote,a,b,c,d,e\n' + lines[2])
    parsed = read_his_csv(path)
    assert [(e.line, e.reason.split(":")[0]) for e in parsed.errors] == [(3, "CSV syntax")]
    assert [r.line for r in parsed.records] == [2, 4]


def test_cp1252_file_is_detected_and_can_be_named(tmp_path):
    text = "Caf\u00e9 na\u00efvet\u00e9 \u2013 \u201cquoted\u201d \u20ac5"
    path = write_csv(tmp_path / "excel.csv", [OPEN_HEADER, open_row(text=text)], encoding="cp1252")
    with pytest.raises(UnicodeDecodeError):
        path.read_bytes().decode("utf-8")
    for encoding in (None, "cp1252", "windows-1252"):
        parsed = read_his_csv(path, encoding=encoding)
        assert parsed.errors == [] and parsed.records[0].turns[0]["content"] == text
    assert read_his_csv(path).encoding == "cp1252"
    with pytest.raises(HisImportError, match=r"excel\.csv: not valid utf-8: byte 0xe9 at byte offset \d+"):
        read_his_csv(path, encoding="utf-8")


def test_undecodable_file_fails_naming_file_and_offset(tmp_path):
    data = b"model,identity\nabc," + b"\x81\x8d bad"
    path = tmp_path / "broken.csv"
    path.write_bytes(data)
    offset = data.index(b"\x81")
    with pytest.raises(HisImportError, match=rf"broken\.csv: cannot decode.*byte 0x81 at byte offset {offset}"):
        read_his_csv(path)


def test_byte_order_marks_and_utf16(tmp_path):
    rows = [OPEN_HEADER, open_row(text="\u00fcber \U0001F60A")]
    for encoding in ("utf-8-sig", "utf-16"):
        parsed = read_his_csv(write_csv(tmp_path / f"{encoding}.csv", rows, encoding))
        assert parsed.kind == OPEN and parsed.records[0].turns[0]["content"] == "\u00fcber \U0001F60A"
    with pytest.raises(HisImportError, match="control character U\\+0000"):
        read_his_csv(write_csv(tmp_path / "no-bom.csv", rows, "utf-16-le"))


def test_headers_that_fit_no_kind_are_refused(tmp_path):
    with pytest.raises(HisImportError, match="fits no HIS human-evaluation file"):
        read_his_csv(write_csv(tmp_path / "other.csv", [["a", "b"], ["1", "2"]]))
    with pytest.raises(HisImportError, match="missing column.*factor_polarity"):
        read_his_csv(write_csv(tmp_path / "open.csv", [OPEN_HEADER, open_row()]), kind=SCALE)


def test_crafted_scale_and_dataset_rows(tmp_path):
    dialog = repr([{"role": "system", "content": "You are a human with high emotional stability. Be yourself."},
                   {"role": "user", "content": "Do you stay calm?"}, {"role": "assistant", "content": "Mostly."}])
    scale = [["factor_polarity", "statement", "dialog", "judge_ans", "human_ans", "judge_score", "human_score"],
             ["Neuroticism_neg", "Worry a lot.", dialog, "B", "a", "2", "1"],
             ["Neuroticism_neg", "Worry a lot.", dialog, "B", "A", "3", "1"],   # letter and score disagree
             ["Charm_pos", "Am charming.", dialog, "B", "A", "2", "1"]]
    parsed = read_his_csv(write_csv(tmp_path / "scale.csv", scale))
    assert [e.line for e in parsed.errors] == [3, 4]
    assert "disagrees with judge_score" in parsed.errors[0].reason and "Charm" in parsed.errors[1].reason
    record = parsed.records[0]
    assert (record.item_slot, record.item_pole, record.judge_option, record.human_option) == ("NEU", "high", 2, 1)
    assert record.target_slots["NEU"] == "low"

    transcript = "<<system>>Be terse.\n<<user>>Plans?\n<<assistant>>None. I said <<user>> once.\n"
    header = ["dialog", "active_adapters", "AGR", "CON", "EXT", "EMS", "OPE", "Profession", "annotate_results"]
    dataset = [header,
               [transcript, "{'EMS_low', 'Doctor'}", "", "", "", "low", "", "Doctor", "{'Doctor', 'EMS_low'}"],
               [transcript, "{'EMS_low'}", "", "", "", "low", "", "", "{'EMS_high'}"],
               ["no markers", "{'EMS_low'}", "", "", "", "low", "", "", "{'EMS_low'}"]]
    parsed = read_his_csv(write_csv(tmp_path / "data.csv", dataset))
    assert [e.line for e in parsed.errors] == [6, 10]  # each transcript spans four lines
    assert "annotate_results disagrees" in parsed.errors[0].reason and "marker" in parsed.errors[1].reason
    record = parsed.records[0]
    assert [t["role"] for t in record.turns] == ["system", "user", "assistant"]
    assert record.turns[2]["content"] == "None. I said <<user>> once."
    assert record.target_slots == record.human_slots
    assert record.target_slots["NEU"] == "high" and record.target_slots["Profession"] == "Doctor"
