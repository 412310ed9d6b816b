"""The identity panel: which trait poles and which profession an agent speaks with.

Two checkbox groups whose values are canonical identity names (the API takes them as they are):
`traits` (ten boxes, a High and a Low one per trait, shown in two columns) and `profession` (three boxes).
The rules hold twice:
- in the browser, checking a box clears its rival at once (the other pole of that trait; the other
  profession), and the summary line under the panel follows every change;
- on the server, every model function reads the panel through `read_identities`, which parses the values
  strictly (`IdentitySet.parse`), so a hand-made API call with a bad set gets a `gr.Error` naming it.
Build one `IdentityPanel` per agent; `name` keeps element ids and API names apart.

With `with_strength`, a slider (0 to 2, 1 = as trained, 0 = the prompt alone) shows beside each checked
identity; the sliders write one text input, `strengths` (`AGR_low=1.6,Doctor=0.5`, identities at 1 left
out), which model functions read with the panel, so an API call passes strengths as that text.
"""
from __future__ import annotations

import gradio as gr

from hirpf.identities import (
    ALL_IDENTITIES,
    DEFAULT_STRENGTH,
    MAX_STRENGTH,
    MIN_STRENGTH,
    PROFESSIONS,
    TRAIT_POLES,
    IdentityError,
    IdentitySet,
    label,
)

from .assets import asset


def read_identities(traits, profession, who: str = "", strengths: str | None = None) -> IdentitySet:
    """The identity set a panel's values describe, with `strengths` (text, see the module docstring) for the
    chosen identities; `gr.Error` naming the offender when they break a rule."""
    names = list(traits or []) + list(profession or [])
    try:
        return IdentitySet.parse(names).with_strengths(strengths or None, ignore_absent=True)
    except IdentityError as err:
        raise gr.Error(f"Invalid identity set{f' for {who}' if who else ''}: {err}", title="Identity rules",
                       print_exception=False) from None


def strengths_text(traits, profession, *values) -> str:
    """The strengths input's text from the sliders (one per identity, inventory order): checked identities
    whose strength is not the default."""
    chosen = set(traits or []) | set(profession or [])
    return ",".join(f"{name}={value:g}" for name, value in zip(ALL_IDENTITIES, values)
                    if name in chosen and value is not None and float(value) != DEFAULT_STRENGTH)


def summary_line(traits, profession) -> str:
    """The composed identity in words, or what is wrong with it."""
    try:
        identities = IdentitySet.parse(list(traits or []) + list(profession or []))
    except IdentityError as err:
        return f"⚠ {err}"
    return f"Speaks as: {identities.describe()}."


def box_label(identity: str) -> str:
    """A checkbox's label: the identity in words, with soft hyphens in the long words so that "High
    conscientiousness" breaks inside its box in a narrow column instead of running out of it."""
    words = label(identity).capitalize()
    return words.replace("conscientiousness", "conscien\u00adtious\u00adness")


# Browser-side rules (app/assets/keep_last_*.js), run on each click with no round trip (a server reply arriving
# after a quicker second click would undo that click). Gradio appends a newly checked value at the end of the
# group's value, so "keep the last" keeps the box the visitor just checked. (A js-only event returns a list
# of output values.)


class IdentityPanel:
    """Checkboxes for one agent's identities, plus the line that says them in words."""

    def __init__(self, name: str = "identity", title: str = "Identity", value: IdentitySet | None = None,
                 with_strength: bool = False, interactive: bool = True):
        self.name = name
        value = value or IdentitySet()
        with gr.Column(elem_id=f"{name}-panel", elem_classes="hirpf-identity-panel"):
            gr.Markdown(f"### {title}")
            self.traits = gr.CheckboxGroup(
                choices=[(box_label(p), p) for p in TRAIT_POLES], value=list(value.traits),
                label="Personality: at most one pole per trait", elem_id=f"{name}-traits",
                elem_classes="hirpf-traits", interactive=interactive)
            self.profession = gr.CheckboxGroup(
                choices=list(PROFESSIONS), value=[value.profession] if value.profession else [],
                label="Profession: at most one", elem_id=f"{name}-profession", interactive=interactive)
            self.summary = gr.Markdown(summary_line(value.traits, [value.profession] if value.profession else []),
                                       elem_id=f"{name}-summary", elem_classes="hirpf-summary")
            self.sliders = []
            if with_strength:
                # A class, not an id: Gradio writes a Group's elem_id on two nested elements.
                with gr.Group(elem_classes="hirpf-strengths"):
                    for identity in ALL_IDENTITIES:
                        self.sliders.append(gr.Slider(
                            MIN_STRENGTH, MAX_STRENGTH, value=value.strength(identity) if identity in value else 1,
                            step=0.1, label=f"Strength: {label(identity)}", visible=identity in value,
                            info="0 = the prompt alone, 1 = as trained", elem_id=f"{name}-strength-{identity}"))
            # Hidden, but its label names the input on the API page.
            self.strengths = gr.Textbox(",".join(f"{n}={v:g}" for n, v in value.strengths), visible=False,
                                        label="Strengths, e.g. AGR_low=1.6,Doctor=0.5 (0 to 2; 1 = as trained)",
                                        elem_id=f"{name}-strengths")
        # `input` fires on the visitor's clicks only, so the rules never fight values set by the server.
        self.traits.input(None, self.traits, self.traits, js=asset("keep_last_pole_per_trait.js"))
        self.profession.input(None, self.profession, self.profession, js=asset("keep_last_profession.js"))
        gr.on([self.traits.change, self.profession.change], summary_line, self.inputs, self.summary,
              queue=False, show_progress="hidden", api_name=f"{name}_summary", api_visibility="undocumented")
        if self.sliders:
            def show_sliders(traits, profession):
                chosen = set(traits or []) | set(profession or [])
                return [gr.update(visible=identity in chosen) for identity in ALL_IDENTITIES]

            gr.on([self.traits.change, self.profession.change], show_sliders, self.inputs, self.sliders,
                  queue=False, show_progress="hidden", api_visibility="private")
            gr.on([self.traits.change, self.profession.change] + [s.change for s in self.sliders], strengths_text,
                  self.inputs + self.sliders, self.strengths, queue=False, show_progress="hidden",
                  api_visibility="private")

    def editable(self, yes: bool) -> list:
        """Updates that make both checkbox groups editable or not (for a caller whose choice ignores them)."""
        return [gr.update(interactive=yes), gr.update(interactive=yes)]

    @property
    def inputs(self) -> list:
        """The components a model function takes for this panel, in `read_identities` order."""
        return [self.traits, self.profession]
