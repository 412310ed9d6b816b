"""The Evaluation admin tab: load dialogues, set the assignment policy, watch progress, see agreement, export.

This is where the unblinded data is (targets, systems, judges), so the tab is locked: it opens with the
password in `HIRPF_ADMIN_PASSWORD`, or for the Hugging Face users listed in `HIRPF_ADMIN_USERS` (signed in
through OAuth on a Space). With neither set it says how to turn it on and shows nothing else. The unlock is
held server side (`gr.State`, holding the admin session's token), and every admin event checks it, so a
hand-made API call gets nothing either. Nothing here has a starting value: admin data reaches a browser only
in answer to an unlocked session, and files only through `admin_downloads` (to that session's cookie).

Wrong passwords are throttled per client (`throttle.Throttle`: backoff, then a lockout), answered at once and
off every queue, so a guesser never delays the real admin.

`python -m app.admin_tab [--port P] [--data_dir DIR]` serves this tab on its own (set the password first).
"""
from __future__ import annotations

import hmac
import html
import io
import json
from dataclasses import dataclass
from pathlib import Path

import gradio as gr
from gradio.utils import get_upload_folder

from annotation.assignment import AssignmentPolicy
from annotation.report import build_report, overview
from annotation.sign_in import access_code_required, set_access_code
from annotation.store import StoreError
from annotation.store_io import import_file, write_csv, write_jsonl
from hirpf import environment
from hirpf.labels import SLOTS

from .admin_downloads import AdminDownloads, Download
from .admin_pairs import PairBuilds, build_pair_section
from .assets import asset
from .markup import code_block, table_cell
from .services import (
    SLOT_TITLES,
    apply_policy,
    oauth_configured,
    open_store,
    policy_as_text,
    sign_in_mode,
    start_policy,
)
from .standalone import main, tab_app
from .throttle import Throttle, Throttled, client_of

PASSWORD_ENV, USERS_ENV = "HIRPF_ADMIN_PASSWORD", "HIRPF_ADMIN_USERS"
TITLE = "Evaluation admin"
# After each wrong password a client waits 1, 2, 4, ... s; the 10th in a row locks it out for 15 minutes.
ADMIN_THROTTLE = {"base_delay_s": 1.0, "max_delay_s": 60.0, "lockout_after": 10, "lockout_s": 900.0}
MEDIA_TYPES = {"csv": "text/csv; charset=utf-8", "jsonl": "application/x-ndjson; charset=utf-8",
               "json": "application/json; charset=utf-8"}
IMPORT_KINDS = [("Detect from the file", "auto"), ("HIS open situations (CSV)", "his-open"),
                ("HIS scale interviews (CSV)", "his-scale"), ("HIS dataset samples (CSV)", "his-data"),
                ("Simulator or app export (JSONL)", "jsonl")]
PROGRESS_HEADERS = ["Annotator", "Signed in as", "Done", "Assigned", "Skipped"]

DISABLED_TEXT = f"""### The admin view is off
It shows unblinded results, so it opens only when it is protected. Set one of these environment variables
(on a Space: *Settings → Variables and secrets*, the password as a **secret**) and restart the app:

- `{PASSWORD_ENV}`: a password that opens this tab;
- `{USERS_ENV}`: Hugging Face usernames, comma-separated, who may open it after signing in (needs
  `hf_oauth: true` in the Space's README front matter)."""


@dataclass(frozen=True)
class AdminAccess:
    """Who may open the admin tab."""

    password: str | None = None
    users: frozenset[str] = frozenset()  # Hugging Face usernames, case-folded

    @classmethod
    def from_env(cls) -> "AdminAccess":
        return cls(environment.HIRPF_ADMIN_PASSWORD, frozenset(u.casefold() for u in environment.HIRPF_ADMIN_USERS))

    @property
    def enabled(self) -> bool:
        return bool(self.password or self.users)

    def admits(self, password: str | None, username: str | None) -> bool:
        if username and username.casefold() in self.users:
            return True
        # Compared in constant time; an empty attempt never matches.
        return bool(self.password and password) and hmac.compare_digest(password.encode(), self.password.encode())


def _figure(x: float | None, percent: bool = False) -> str:
    if x is None:
        return "–"
    return f"{x:.1%}" if percent else f"{x:.3f}"


def _scale_line(name: str, figures: dict) -> str:
    if not figures.get("n"):
        return f"- {name}: no pairs yet"
    return (f"- {name}: accuracy {_figure(figures['accuracy'], True)}, κ {_figure(figures['kappa'])}, ordinal α "
            f"{_figure(figures['ordinal_alpha'])}, mean |difference| {_figure(figures['mean_abs_diff'])} "
            f"(n = {figures['n']})")


def report_markdown(report: dict) -> str:
    """The agreement report as tables: humans vs targets, vs the LLM judges, and between annotators. Names
    (annotators', judges') come from people and files: each is one escaped cell, plain text."""
    target, judge, inter = report["human_vs_target"], report["human_vs_judge"], report["inter_annotator"]
    counts = report["counts"]
    lines = [f"**{counts['annotations']}** answers from **{counts['annotators']}** annotators (imported label sets "
             f"included) on **{counts['dialogues']}** dialogues; {counts['skipped']} skipped.", "",
             "#### Human vs target identity", "| Slot | Accuracy | Cohen's κ | n |", "|---|---|---|---|"]
    lines += [f"| {SLOT_TITLES[s]} | {_figure(f['accuracy'], True)} | {_figure(f['kappa'])} | {f['n']} |"
              for s, f in target["per_slot"].items()]
    o = target["overall"]
    lines += [f"| **All six** (exact match {_figure(o['exact_match'], True)}) | {_figure(o['accuracy'], True)} | "
              f"{_figure(o['kappa'])} | {o['n']} |", "", "| Annotator | Accuracy | Exact match | Dialogues |",
              "|---|---|---|---|"]
    lines += [f"| {table_cell(a['display_name'])} | {_figure(a['overall']['accuracy'], True)} | "
              f"{_figure(a['overall']['exact_match'], True)} | {a['overall']['n']} |"
              for a in target["per_annotator"].values()]
    lines += ["", _scale_line("Scale interviews vs the expected option", target["scale"]), "",
              "#### Human vs LLM judge", "| Judge | Accuracy | mean κ | Exact match | Pairs |",
              "|---|---|---|---|---|"]
    lines += [f"| {table_cell(name)} | {_figure(f['overall']['accuracy'], True)} | {_figure(f['overall']['kappa'])} | "
              f"{_figure(f['overall']['exact_match'], True)} | {f['overall']['n']} |"
              for name, f in judge["per_judge"].items()] or ["| (no judge predictions) | | | | |"]
    lines += ["", _scale_line("Scale interviews vs the judges", judge["scale"]), "",
              "#### Between annotators", "| Slot | Krippendorff's α | Cohen's κ | Fleiss' κ | Agreement | Units |",
              "|---|---|---|---|---|---|"]
    for s in SLOTS:
        f = inter["per_slot"][s]
        lines.append(f"| {SLOT_TITLES[s]} | {_figure(f['krippendorff_alpha'])} | {_figure(f['cohen_kappa'])} | "
                     f"{_figure(f['fleiss_kappa'])} | {_figure(f['percent_agreement'], True)} | {f['n_units']} |")
    o = inter["overall"]
    lines += [f"| **Mean** (exact match {_figure(o['exact_match'], True)}, {o['n_annotators']} annotators) | "
              f"{_figure(o['krippendorff_alpha'])} | {_figure(o['cohen_kappa'])} | {_figure(o['fleiss_kappa'])} | "
              f"{_figure(o['percent_agreement'], True)} | {o['n_units']} |"]
    return "\n".join(lines)


def sign_in_markdown(mode: str, access_code: bool) -> str:
    """Which sign-in the annotators have, in words."""
    if mode == "hf":
        return "**Annotators sign in** with their Hugging Face accounts only."
    lines = ["**Annotators sign in** with a name and a secret: the resume code shown once at their first sign-in "
             "(stored hashed); a name alone resumes nobody.",
             "- Study access code: " + ("**required** to join (stored hashed)." if access_code else
                                        "none: anybody who can open the page may join."),
             "- Hugging Face accounts: " + ("on." if oauth_configured() else "off (`hf_oauth: true` on a Space).")]
    return "\n".join(lines)


def download_link(link: str, filename: str) -> str:
    return (f"[Download {filename}]({link}) (this admin session only; the link expires after 15 minutes or "
            "when this page is closed)")


def build_admin_tab(data_dir: str | Path | None = None, access: AdminAccess | None = None,
                    downloads: AdminDownloads | None = None, throttle: Throttle | None = None,
                    pair_builds: PairBuilds | None = None) -> dict:
    """Lay out the admin tab inside the current Blocks; without any access configured, only the note.
    `downloads`: where exports are handed out (the app installs its route at launch); `throttle`: the
    password backoff (injectable for tests); `pair_builds`: pair-study builds on the app's model (default:
    none, as with `--annotation_only`)."""
    access = access or AdminAccess.from_env()
    if not access.enabled:
        gr.Markdown(DISABLED_TEXT, elem_id="admin-disabled")
        return {}
    downloads = downloads or AdminDownloads()
    throttle = throttle or Throttle(**ADMIN_THROTTLE)
    mode = sign_in_mode()
    # Server side, per browser session: the admin session's token once unlocked (None before). When Gradio
    # drops the session (page closed), the token and its download links go with it.
    unlocked = gr.State(None, delete_callback=downloads.close_session)
    policy_now = start_policy()
    with gr.Column(elem_id="admin-lock") as lock_box:
        gr.Markdown("### Evaluation admin\nThis view shows unblinded results. " + (
            "Enter the admin password" if access.password else "Sign in with an allowed Hugging Face account")
            + " to open it.")
        password = gr.Textbox(label="Admin password", type="password", visible=bool(access.password),
                              elem_id="admin-password")
        if access.users:
            if oauth_configured():
                gr.LoginButton(elem_id="admin-hf-login")
            else:
                gr.Markdown(f"`{USERS_ENV}` is set, but Hugging Face sign-in is not configured "
                            "(`hf_oauth: true` on a Space), so only the password can open this view.")
        unlock = gr.Button("Open the admin view", variant="primary", elem_id="admin-unlock")
    with gr.Column(visible=False, elem_id="admin-panel") as panel:
        gr.Markdown("### Progress")
        counts = gr.Markdown(elem_id="admin-counts")
        progress_table = gr.Dataframe(headers=PROGRESS_HEADERS, value=None, interactive=False, wrap=True,
                                      elem_id="admin-progress")
        refresh = gr.Button("Refresh", size="sm", elem_id="admin-refresh")
        with gr.Accordion("Load dialogues", open=True, elem_id="admin-import"):
            gr.Markdown("HIS human-evaluation CSVs, or JSONL from the simulators or an export (one "
                        "`{\"dialog\": [...], \"active_adapters\": [...], \"system\": ...}` record a line). Rows "
                        "already stored are skipped; rejected rows are listed with their line numbers. Dialogues "
                        "sent from the app's other tabs arrive by themselves.")
            with gr.Row():
                upload = gr.File(label="File", file_types=[".csv", ".jsonl", ".json"], elem_id="admin-file")
                with gr.Column():
                    kind = gr.Dropdown(IMPORT_KINDS, value="auto", label="Format", elem_id="admin-kind")
                    encoding = gr.Textbox(label="Encoding (empty: detect)", elem_id="admin-encoding")
                    load = gr.Button("Import", variant="primary", elem_id="admin-load")
            import_result = gr.Markdown(elem_id="admin-import-result")
        with gr.Accordion("Assignment policy", open=False, elem_id="admin-policy"):
            gr.Markdown("Applies to tasks handed out from now on, by every app on this database, and is kept "
                        "there across restarts. Every item goes to *overlap* annotators, never more than *cap* "
                        "(0: the overlap); a *shared* fraction of items goes to everyone; annotators get *batch* "
                        "tasks at a time, in an order shuffled by *seed*.")
            with gr.Row():
                overlap = gr.Number(policy_now.overlap, precision=0, minimum=1, label="Overlap",
                                    elem_id="admin-overlap")
                cap = gr.Number(policy_now.cap or 0, precision=0, minimum=0, label="Cap", elem_id="admin-cap")
                shared = gr.Slider(0, 1, value=policy_now.shared_fraction, step=0.05, label="Shared fraction",
                                   elem_id="admin-shared")
                batch = gr.Number(policy_now.batch, precision=0, minimum=1, label="Batch", elem_id="admin-batch")
                seed = gr.Number(policy_now.seed, precision=0, minimum=0, label="Seed", elem_id="admin-seed")
            policy_button = gr.Button("Apply", elem_id="admin-apply-policy")
            policy_note = gr.Markdown(elem_id="admin-policy-note")
        with gr.Accordion("Annotator sign-in", open=False, elem_id="admin-sign-in"):
            sign_in_note = gr.Markdown(elem_id="admin-sign-in-mode")
            with gr.Row(equal_height=True, visible=mode == "name"):
                access_code = gr.Textbox(label="New study access code (empty: none)", type="password", scale=3,
                                         elem_id="admin-access-code")
                set_code = gr.Button("Set", scale=1, elem_id="admin-set-access-code")
        with gr.Accordion("Agreement", open=False, elem_id="admin-agreement"):
            compute = gr.Button("Compute agreement", elem_id="admin-compute")
            agreement = gr.Markdown(elem_id="admin-report")
            report_file = gr.Markdown(elem_id="admin-report-file")
        with gr.Accordion("Export", open=False, elem_id="admin-export"):
            gr.Markdown("Every answered or skipped task, unblinded: annotator, target, system, source, the "
                        "original transcript, the answer and every judge's prediction.")
            with gr.Row():
                export_format = gr.Radio(["csv", "jsonl"], value="csv", label="Format", elem_id="admin-format")
                export = gr.Button("Export", elem_id="admin-export-button")
            export_file = gr.Markdown(elem_id="admin-export-file")
        # `require` and `offer` are defined below, before any event can run.
        build_pair_section(pair_builds or PairBuilds(data_dir), unlocked, lambda token: require(token),
                           lambda token, filename, content: offer(token, filename, content))
    # A one-time claim, handed to the page at unlock, that set_admin_cookie.js trades for the admin session's
    # cookie (set by the server, HttpOnly): the page never holds the session's token.
    cookie_claim = gr.Textbox(visible=False, elem_id="admin-session")

    def store():
        return open_store(data_dir)

    def forget_upload(path: str) -> None:
        # Gradio keeps an upload in its cache, readable by anybody holding its link: an imported file is
        # unblinded data, so its copy goes as soon as it is read. (Only files in that cache, never others.)
        cache = Path(get_upload_folder()).resolve()
        if Path(path).resolve().is_relative_to(cache):
            Path(path).unlink(missing_ok=True)

    def require(token: str | None) -> None:
        if not downloads.is_open(token):
            raise gr.Error("Open the admin view first (admin password or an allowed Hugging Face account).",
                           title=TITLE, print_exception=False)

    def progress_screen() -> dict:
        seen = overview(store().db)
        people = [a for a in seen.annotators if not a.imported]
        imported = len(seen.annotators) - len(people)
        dialogues = seen.dialogues
        summary = (f"**{dialogues['identity']}** identity dialogues and **{dialogues['scale_interview']}** scale "
                   f"interviews stored; **{len(people)}** annotators"
                   + (f" (plus {imported} imported label sets)" if imported else "") + ".")
        rows = [[a.display_name, a.external_id or "", a.done, a.assigned, a.skipped] for a in people]
        return {counts: summary, progress_table: rows or None}

    def policy_fields(policy: AssignmentPolicy) -> dict:
        return {overlap: policy.overlap, cap: policy.cap or 0, shared: policy.shared_fraction, batch: policy.batch,
                seed: policy.seed}

    def open_admin(password_attempt: str | None = None, profile: gr.OAuthProfile | None = None,
                   request: gr.Request = None) -> dict:
        """Open the admin view with the password (or as an allowed Hugging Face user)."""
        client = client_of(request)
        try:
            throttle.check(client)  # before the password is even looked at
        except Throttled as wait:
            raise gr.Error(str(wait), title=TITLE, print_exception=False) from None
        if not access.admits(password_attempt, profile.username if profile is not None else None):
            left = throttle.failed(client)
            raise gr.Error(("Wrong admin password" if access.password else "This account may not open the admin view.")
                           + (f" ({left} attempts left before a lockout)" if left < 5 else ""),
                           title=TITLE, print_exception=False)
        throttle.succeeded(client)
        token = downloads.open_session()
        return {unlocked: token, lock_box: gr.Column(visible=False), panel: gr.Column(visible=True), password: "",
                **progress_screen(), **policy_fields(store().policy), **sign_in_fields(),
                cookie_claim: downloads.claim_for(token)}

    def sign_in_fields() -> dict:
        return {sign_in_note: sign_in_markdown(mode, access_code_required(store().db)), access_code: ""}

    def change_access_code(token: str | None, new_code: str | None = None) -> dict:
        """Require a study access code to join from now on (empty: none); people already signed up keep
        signing in with their resume codes."""
        require(token)
        try:
            set_access_code(store().db, new_code)
        except StoreError as err:
            raise gr.Error(str(err), title=TITLE, print_exception=False) from None
        return sign_in_fields()

    def refresh_progress(token: str | None) -> dict:
        """Dialogue counts and every annotator's progress."""
        require(token)
        return progress_screen()

    def import_dialogues(token: str | None, path: str | None, file_kind: str = "auto",
                         file_encoding: str | None = None) -> dict:
        """Import an uploaded HIS CSV or JSONL file; says what was added and which rows were rejected."""
        require(token)
        if not path:
            raise gr.Error("Choose a file to import first.", title=TITLE, print_exception=False)
        try:
            result = import_file(store(), path, None if file_kind == "auto" else file_kind,
                                 (file_encoding or "").strip() or None)
        except (StoreError, ValueError, OSError) as err:
            # Gradio shows an error's message as HTML; the file's name and rows are anybody's text.
            raise gr.Error(html.escape(str(err).replace(str(path), Path(path).name)), title=TITLE,
                           print_exception=False) from None
        text = result.describe().replace(str(path), Path(path).name)
        forget_upload(path)
        return {import_result: code_block(text), upload: None, **progress_screen()}

    def set_policy(token: str | None, new_overlap: float, new_cap: float, new_shared: float, new_batch: float,
                   new_seed: float) -> dict:
        """Change the assignment policy (tasks handed out from now on, by every app on this database)."""
        require(token)
        try:
            policy = AssignmentPolicy(overlap=int(new_overlap), cap=int(new_cap) or None,
                                      shared_fraction=float(new_shared), batch=int(new_batch), seed=int(new_seed))
        except (TypeError, ValueError) as err:
            raise gr.Error(f"Assignment policy: {err}", title=TITLE, print_exception=False) from None
        apply_policy(store(), policy)
        return {policy_note: f"Applied and stored in the database (`{policy_as_text(policy)}`).",
                **policy_fields(policy)}

    def offer(token: str, filename: str, content: str) -> str:
        try:
            link = downloads.offer(token, Download(filename, MEDIA_TYPES[filename.rsplit(".", 1)[-1]],
                                                   content.encode("utf-8")))
        except PermissionError as err:
            raise gr.Error(str(err), title=TITLE, print_exception=False) from None
        return download_link(link, filename)

    def compute_agreement(token: str | None) -> dict:
        """Agreement of the humans with the targets, with the LLM judges and with each other."""
        require(token)
        report = build_report(store().db)
        return {agreement: report_markdown(report),
                report_file: offer(token, "agreement.json", json.dumps(report, indent=2, ensure_ascii=False))}

    def export_annotations(token: str | None, fmt: str = "csv") -> dict:
        """Every answered or skipped task, unblinded, as CSV or JSONL: a link for this admin session only."""
        require(token)
        if fmt not in ("csv", "jsonl"):
            raise gr.Error(f"Export format {fmt!r}: use csv or jsonl.", title=TITLE, print_exception=False)
        out = io.StringIO(newline="")
        (write_csv if fmt == "csv" else write_jsonl)(store(), out)
        return {export_file: offer(token, f"annotations.{fmt}", out.getvalue())}

    policy_inputs = [overlap, cap, shared, batch, seed]
    screen = [counts, progress_table]
    # Off every queue: a refusal is answered at once, so guesses neither wait for nor hold up anybody.
    gr.on([unlock.click, password.submit], open_admin, [password],
          [unlocked, lock_box, panel, password, *screen, *policy_inputs, sign_in_note, access_code, cookie_claim],
          api_name="admin_open", queue=False).then(None, [cookie_claim], None, js=asset("set_admin_cookie.js"))
    set_code.click(change_access_code, [unlocked, access_code], [sign_in_note, access_code],
                   api_name="admin_access_code")
    refresh.click(refresh_progress, [unlocked], screen, api_name="admin_progress")
    load.click(import_dialogues, [unlocked, upload, kind, encoding], [import_result, upload, *screen],
               api_name="admin_import")
    policy_button.click(set_policy, [unlocked, *policy_inputs], [policy_note, *policy_inputs], api_name="admin_policy")
    compute.click(compute_agreement, [unlocked], [agreement, report_file], api_name="admin_agreement")
    export.click(export_annotations, [unlocked, export_format], [export_file], api_name="admin_export")
    return {"panel": panel, "unlock": unlock}


def standalone_app(engine=None, data_dir: str | Path | None = None) -> gr.Blocks:
    """The Evaluation admin tab alone (no model: `engine` is ignored), with its download route."""
    downloads = AdminDownloads()
    demo = tab_app(TITLE, lambda demo: build_admin_tab(data_dir=data_dir, downloads=downloads))
    demo.hirpf_downloads = downloads
    return demo


if __name__ == "__main__":
    main(standalone_app)
