"""The identity panel: which trait poles and which profession an agent speaks with.

Two checkbox groups whose values are canonical identity names (the API takes them as they are):
`traits` (ten boxes, a High and a Low one per trait, shown in two columns) and `profession` (three boxes).
The rules hold twice:
- in the browser, checking a box clears its rival at once (the other pole of that trait; the other
  profession), and the summary line under the panel follows every change;
- on the server, every model function reads the panel through `read_identities`, which parses the values
  strictly (`IdentitySet.parse`), so a hand-made API call with a bad set gets a `gr.Error` naming it.
Build one `IdentityPanel` per agent; `name` keeps element ids and API names apart.
"""
from __future__ import annotations

import gradio as gr

from hirpf.identities import PROFESSIONS, TRAIT_POLES, IdentityError, IdentitySet, label

from .assets import asset


def read_identities(traits, profession, who: str = "") -> IdentitySet:
    """The identity set a panel's values describe; `gr.Error` naming the offender when they break a rule."""
    names = list(traits or []) + list(profession or [])
    try:
        return IdentitySet.parse(names)
    except IdentityError as err:
        raise gr.Error(f"Invalid identity set{f' for {who}' if who else ''}: {err}", title="Identity rules",
                       print_exception=False) from None


def summary_line(traits, profession) -> str:
    """The composed identity in words, or what is wrong with it."""
    try:
        identities = IdentitySet.parse(list(traits or []) + list(profession or []))
    except IdentityError as err:
        return f"⚠ {err}"
    return f"Speaks as: {identities.describe()}."


# Browser-side rules (app/assets/keep_last_*.js), run on each click with no round trip (a server reply arriving
# after a quicker second click would undo that click). Gradio appends a newly checked value at the end of the
# group's value, so "keep the last" keeps the box the visitor just checked. (A js-only event returns a list
# of output values.)


class IdentityPanel:
    """Checkboxes for one agent's identities, plus the line that says them in words."""

    def __init__(self, name: str = "identity", title: str = "Identity", value: IdentitySet | None = None):
        self.name = name
        value = value or IdentitySet()
        with gr.Column(elem_id=f"{name}-panel", elem_classes="hirpf-identity-panel"):
            gr.Markdown(f"### {title}")
            self.traits = gr.CheckboxGroup(
                choices=[(label(p).capitalize(), p) for p in TRAIT_POLES], value=list(value.traits),
                label="Personality: at most one pole per trait", elem_id=f"{name}-traits",
                elem_classes="hirpf-traits")
            self.profession = gr.CheckboxGroup(
                choices=list(PROFESSIONS), value=[value.profession] if value.profession else [],
                label="Profession: at most one", elem_id=f"{name}-profession")
            self.summary = gr.Markdown(summary_line(value.traits, [value.profession] if value.profession else []),
                                       elem_id=f"{name}-summary", elem_classes="hirpf-summary")
        # `input` fires on the visitor's clicks only, so the rules never fight values set by the server.
        self.traits.input(None, self.traits, self.traits, js=asset("keep_last_pole_per_trait.js"))
        self.profession.input(None, self.profession, self.profession, js=asset("keep_last_profession.js"))
        gr.on([self.traits.change, self.profession.change], summary_line, self.inputs, self.summary,
              queue=False, show_progress="hidden", api_name=f"{name}_summary", api_visibility="undocumented")

    @property
    def inputs(self) -> list:
        """The components a model function takes for this panel, in `read_identities` order."""
        return [self.traits, self.profession]
