"""The Chat tab's "send to a study": a Compare result (one message answered under two settings) stored as
one pair of a *preference* study (issue 25), as a build or an import stores it (`annotation.pair_studies`).

    sender = CompareToStudy(data_dir, admin)      # admin: the app's AdminSession
    sender.lay_out()                              # inside the Compare result, hidden with it
    sender.wire(compare_event, comparison_state)  # offers the studies once a Compare has answered

What is stored: the message, the identity set, the two conditions (`experts+prompt@1.0` and `prompt`, say,
with the app's model as their base model, as the admin's builds record it) and, per reply, the decoding
settings and seed it was made with (`source_ref`: a Compare draws a new seed each time, so the seed is
the reply's, and one condition gathers many Compares). Writing to the annotation store is the admin's: with
admin access configured the offer shows, and a send works, only in a browser session that unlocked the
Evaluation admin tab (`AdminSession.may_write`).
"""
from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path

import gradio as gr

from annotation.pair_studies import Condition, compared_pair_plan, parse_condition, save_study, study_names
from annotation.store import StoreError
from hirpf.identities import IdentitySet
from hirpf.prompts import Conditioning
from hirpf.sampling import Sampling

from .admin_session import LOCKED_TEXT, AdminSession
from .evaluation_store import open_store

TITLE = "Send to a study"
NO_IDENTITY = "no identity"  # the label of the "beside no identity at all" baseline's condition


@dataclass(frozen=True)
class Comparison:
    """What one Compare answered and how: kept server side (a `gr.State`) until it is sent."""

    history: tuple[dict, ...]  # the messages answered; the last is the user's
    identities: IdentitySet
    conditioning: Conditioning  # what the identity reply really had (`chat_tab.conditioning_shown`)
    baseline: str  # "prompt" or "none"
    sampling: Sampling  # its seed drawn, never None
    replies: tuple[str, str]  # with the identities, and the baseline's
    base_model: str  # the app's model, as the admin's builds record it


def identity_condition(identities: IdentitySet, conditioning: Conditioning, base_model: str) -> Condition:
    """The condition of the reply made with the identities: `experts+prompt@1.5` needs one strength for all."""
    if not conditioning.uses_experts:
        return parse_condition(conditioning.value, base_model=base_model)
    strengths = {identities.strength(name) for name in identities.names}
    if len(strengths) > 1:
        given = ",".join(f"{name}={identities.strength(name):g}" for name in identities.names)
        raise ValueError(f"strengths: a study's condition gives every identity one strength, and this Compare "
                         f"had {given}; set them alike to send it")
    (strength,) = strengths or {1.0}
    return parse_condition(f"{conditioning.value}@{float(strength)}", base_model=base_model)


def baseline_condition(baseline: str, base_model: str) -> Condition:
    if baseline == "prompt":
        return parse_condition("prompt", base_model=base_model)
    if baseline == "none":
        return Condition(NO_IDENTITY, base_model=base_model)  # the plain model: no conditioning of the set
    raise ValueError(f"baseline: 'prompt' or 'none', not {baseline!r}")


def reply_provenance(sampling: Sampling) -> str:
    decoding = (f"temperature {sampling.temperature:g}, top-p {sampling.top_p:g}, top-k {sampling.top_k}"
                if sampling.do_sample else "greedy")
    return f"chat compare: seed {sampling.seed}, {decoding}, max new tokens {sampling.max_new_tokens}"


def send_comparison(data_dir: str | Path | None, comparison: Comparison, study: str) -> str:
    """Store `comparison` as a pair of the preference study `study` (made when new); returns the stored
    name. ValueError or StoreError (`PairStudyError`) naming what is wrong; nothing is stored then."""
    name = " ".join((study or "").split())
    if not name:
        raise ValueError("study: choose a preference study or type a new study's name")
    if len(comparison.history) != 1:
        raise ValueError("message: a pair shows annotators one message and two replies, and this Compare "
                         "answered a conversation; Clear, then Compare its message alone to send it")
    conditions = (identity_condition(comparison.identities, comparison.conditioning, comparison.base_model),
                  baseline_condition(comparison.baseline, comparison.base_model))
    if conditions[0].label == conditions[1].label:
        raise ValueError(f"conditions: both replies were made under {conditions[0].label!r} (no experts on this "
                         "model, or every strength 0), so there is nothing to prefer")
    provenance = reply_provenance(comparison.sampling)
    plan = compared_pair_plan(comparison.identities.names, conditions, comparison.history[-1]["content"],
                              comparison.replies, (provenance, provenance))
    save_study(open_store(data_dir).db, name, plan)
    return name


class CompareToStudy:
    """The send row of one Chat tab: a study to pick or name, a button, what happened."""

    def __init__(self, data_dir: str | Path | None, admin: AdminSession):
        self.data_dir, self.admin = data_dir, admin

    def lay_out(self) -> None:
        with gr.Row(visible=False, elem_id="chat-compare-send") as self.row:
            self.study = gr.Dropdown([], value=None, allow_custom_value=True, label="Preference study",
                                     info="an existing one, or type a new name", elem_id="chat-compare-study")
            self.send = gr.Button("Send to the study", size="sm", scale=0, elem_id="chat-compare-send-button")
        self.note = gr.Markdown(elem_id="chat-compare-sent")

    def offer(self, token: str | None) -> dict:
        """Show the row, with the preference studies stored, to a session that may write them."""
        if not self.admin.may_write(token):
            return {self.row: gr.Row(visible=False), self.study: gr.Dropdown(choices=[]), self.note: ""}
        names = study_names(open_store(self.data_dir).db, design="preference")
        return {self.row: gr.Row(visible=True), self.study: gr.Dropdown(choices=names), self.note: ""}

    def send_to_study(self, comparison: Comparison | None, study: str | None, token: str | None) -> dict:
        """Store the last Compare as a pair of a preference study (a new name makes the study)."""
        if not self.admin.may_write(token):
            raise gr.Error(LOCKED_TEXT, title=TITLE, print_exception=False)
        if comparison is None:
            raise gr.Error("Compare first: the result is what is sent.", title=TITLE, print_exception=False)
        try:
            name = send_comparison(self.data_dir, comparison, study or "")
        except (ValueError, StoreError) as err:
            raise gr.Error(html.escape(str(err)), title=TITLE, print_exception=False) from None
        names = study_names(open_store(self.data_dir).db, design="preference")
        return {self.study: gr.Dropdown(choices=names, value=name),
                self.note: f"Sent to the preference study **{html.escape(name)}**."}

    def wire(self, compared: gr.events.Dependency, comparison: gr.State) -> None:
        """Offer the row once a Compare has answered; send on the button."""
        outputs = [self.row, self.study, self.note]
        compared.success(self.offer, [self.admin.token], outputs, queue=False, show_progress="hidden",
                         api_visibility="private")
        self.send.click(self.send_to_study, [comparison, self.study, self.admin.token], [self.study, self.note],
                        api_name="compare_to_study")
