"""The Debate tab: two identity-composed agents debate a motion, their statements streaming side by side.

Agent A argues for the motion and B against (`hirpf.eval.debate`: openings, rebuttal rounds, closings; each
agent sees its own view of the transcript). The tab only reads the panels, plays `stream_debate` and shows
each agent's statements in its own column. A finished or stopped debate can be downloaded (JSON and
Markdown) and sent to human evaluation.

Each statement streams as a chat reply does (`app.reply_serving`): through the engine's scheduler, where it
shares the running batch with other visitors' replies. Stop works as in the chat: the button cancels the
event and sets this session's stop flag, so the statement being written ends at the next token (its row
leaves the batch) and the transcript keeps what was said.
"""
from __future__ import annotations

import json
import tempfile
import time
from contextlib import closing
from dataclasses import dataclass, replace
from pathlib import Path

import gradio as gr

from hirpf.eval.debate import Debate, DebateSpec, Turn, schedule, stream_debate
from hirpf.prompts import Conditioning

from .assets import MODEL_TAB_CSS
from .built_app import BuiltApp
from .chat_transcript import CONDITIONING_LABELS
from .identity_panel import IdentityPanel, read_identities
from .model_inputs import read_conditioning, read_sampling
from .model_slot import ModelLoadError, ModelSlot
from .reply_serving import ReplyServing, paced, reply_serving
from .send_to_evaluation import send_to_evaluation
from .standalone import MODEL_QUEUE, main, model_slot, tab_app
from .stop_signals import StopSignals
from .zerogpu import gpu

# Our own motions; each gives identities something to pull on.
TOPICS = [
    "Cities should ban private cars from their centres.",
    "Working from home should be the default for office jobs.",
    "Schools should replace homework with supervised study time.",
    "Hospitals should let AI make routine diagnoses.",
]
MAX_TOPIC_CHARS = 300
MAX_ROUNDS = 4
MAX_STATEMENT_TOKENS = 256
RUNNING, FINISHED, STOPPED = "running", "finished", "stopped"
SIDE_NAMES = {"A": "Agent A (for the motion)", "B": "Agent B (against the motion)"}


@dataclass(frozen=True)
class DebateRecord:
    """One session's debate as far as it got, with how it was generated and its files once written. Frozen:
    the running event and the Stop handler each make new records, never change one the other holds."""

    debate: Debate
    conditioning: Conditioning
    seed: int | None
    status: str = RUNNING
    files: tuple[str, ...] = ()

    @property
    def total_turns(self) -> int:
        return len(schedule(self.debate.spec.rounds))

    def to_dict(self) -> dict:
        return {**self.debate.to_dict(), "status": self.status, "conditioning": self.conditioning.value,
                "seed": self.seed}

    def to_markdown(self) -> str:
        text = self.debate.to_markdown()
        if self.status == STOPPED:
            text += f"\n*(stopped after {len(self.debate.turns)} of {self.total_turns} statements)*\n"
        return text


def read_topic(topic) -> str:
    text = " ".join(str(topic or "").split())
    if not text:
        raise gr.Error("Give the debate a topic (a motion such as \"Cities should ban cars\").", title="Debate",
                       print_exception=False)
    if len(text) > MAX_TOPIC_CHARS:
        raise gr.Error(f"The topic is {len(text)} characters long; keep it under {MAX_TOPIC_CHARS}.",
                       title="Debate", print_exception=False)
    return text


def read_rounds(rounds) -> int:
    if rounds is None or int(rounds) != rounds or not 1 <= rounds <= MAX_ROUNDS:
        raise gr.Error(f"rounds must be a whole number from 1 to {MAX_ROUNDS}, got {rounds!r}", title="Debate",
                       print_exception=False)
    return int(rounds)


def stage_title(turn: Turn) -> str:
    if turn.stage == "rebuttal":
        return f"Rebuttal {turn.round}"
    return f"{turn.stage.capitalize()} statement"


def side_messages(record: DebateRecord | None, speaker: str) -> list[dict]:
    """One agent's statements, as chatbot messages headed by their stage."""
    if record is None:
        return []
    turns = record.debate.turns
    messages = []
    for n, turn in enumerate(turns):
        if turn.speaker != speaker:
            continue
        text = turn.content
        if record.status == STOPPED and n == len(turns) - 1:
            text = f"{text} ⏹ *(stopped)*".strip()
        messages.append({"role": "assistant", "content": f"**{stage_title(turn)}**\n\n{text}"})
    return messages


def status_line(record: DebateRecord | None) -> str:
    if record is None:
        return ""
    done, total = len(record.debate.turns), record.total_turns
    mode = CONDITIONING_LABELS[record.conditioning]
    if record.status == FINISHED:
        return f"Finished: {done} statements ({mode}). Download the transcript or send it to human evaluation."
    if record.status == STOPPED:
        return f"Stopped after {done} of {total} statements ({mode})."
    if not done:
        return f"Starting: {total} statements to write ({mode})…"
    last = record.debate.turns[-1]
    return f"Statement {done} of {total}: agent {last.speaker}, {stage_title(last).lower()}… ({mode})"


def with_files(record: DebateRecord, status: str) -> DebateRecord:
    """The record ended with `status`, its transcript written as JSON and Markdown (when it has any)."""
    record = replace(record, status=status)
    return replace(record, files=tuple(write_files(record)) if record.debate.turns else ())


def write_files(record: DebateRecord) -> list[str]:
    """The transcript as JSON and Markdown in a fresh temporary folder (Gradio serves it from there)."""
    folder = Path(tempfile.mkdtemp(prefix="hirpf-debate-"))
    stem = f"debate-{time.strftime('%Y%m%d-%H%M%S')}"
    json_path, markdown_path = folder / f"{stem}.json", folder / f"{stem}.md"
    json_path.write_text(json.dumps(record.to_dict(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    markdown_path.write_text(record.to_markdown() + "\n", encoding="utf-8")
    return [str(json_path), str(markdown_path)]


def shown(record: DebateRecord | None) -> tuple:
    """Both transcripts and the status line, for the views."""
    return side_messages(record, "A"), side_messages(record, "B"), status_line(record)


def stop_key(request: gr.Request | None) -> str | None:
    """This session's debate's stop flag: apart from the chat's, so stopping a debate leaves a reply in the
    Chat tab running."""
    return f"{request.session_hash}/debate" if request and request.session_hash else None


class DebateHandlers:
    """The Debate tab's event handlers, around the app's model (`slot`), the sessions' stop flags, how
    statements are served, and the data folder debates are sent to. `build_debate_tab` lays the tab out and
    wires these (the model handler through `gpu` at that moment)."""

    def __init__(self, slot: ModelSlot, stops: StopSignals, serving: ReplyServing, data_dir: str | Path | None):
        self.slot, self.stops, self.serving, self.data_dir = slot, stops, serving, data_dir

    def run_debate(self, topic: str, rounds: float, a_traits: list[str], a_profession: list[str], b_traits: list[str],
                   b_profession: list[str], conditioning: str, max_new_tokens: float, temperature: float,
                   top_p: float, seed: float = 0, request: gr.Request = None):
        """Debate the topic between agent A (for) and agent B (against); streams both transcripts, then the
        transcript files."""
        a = read_identities(a_traits, a_profession, "agent A")
        b = read_identities(b_traits, b_profession, "agent B")
        spec = DebateSpec(read_topic(topic), a, b, read_rounds(rounds))
        mode = read_conditioning(conditioning)
        sampling = read_sampling(max_new_tokens, temperature, top_p, seed)
        try:
            engine = self.slot.get()
        except ModelLoadError as err:
            raise gr.Error(str(err), title="Model") from None
        record = DebateRecord(Debate(spec), engine.effective_conditioning(mode), sampling.seed)
        yield *shown(record), None, record, ""
        with self.stops.armed(stop_key(request)) as handle:
            try:
                with closing(stream_debate(self.serving.source(engine), spec, record.conditioning, sampling,
                                           handle.event)) as steps:
                    for debate in paced(steps):
                        record = replace(record, debate=debate)
                        yield *shown(record), gr.skip(), record, gr.skip()
            except Exception as err:  # the model failed: keep and offer what was said so far
                record = with_files(record, STOPPED)
                yield *shown(record), list(record.files) or None, record, gr.skip()
                raise gr.Error(f"Generation failed: {err}", title="Model") from err
            record = with_files(record, STOPPED if handle.requested or not record.debate.finished else FINISHED)
        yield *shown(record), list(record.files) or None, record, gr.skip()

    def stop_debate(self, record: DebateRecord | None, request: gr.Request):
        """Stop this session's debate at the next token; the statements so far stay and can be downloaded."""
        self.stops.stop(stop_key(request))
        if record is not None and record.status == RUNNING:
            record = with_files(record, STOPPED)
        return *shown(record), (list(record.files) or None) if record else None, record

    def send_debate(self, record: DebateRecord | None) -> str:
        """Send the last debate to human evaluation (one dialogue per agent); returns what happened, in words."""
        if record is None or not record.debate.turns:
            raise gr.Error("Run a debate first: there is no transcript to send.", title="Human evaluation",
                           print_exception=False)
        if record.status == RUNNING:
            raise gr.Error("The debate is still running: wait for it to finish or stop it first.",
                           title="Human evaluation", print_exception=False)
        spec = record.debate.spec
        system = f"hirpf:{self.slot.description} ({record.conditioning.value})"
        return send_to_evaluation(record.debate.to_dict()["turns"], spec.a, spec.b, system,
                                  data_dir=self.data_dir)


def build_debate_tab(slot: ModelSlot, stops: StopSignals, serving: ReplyServing,
                     data_dir: str | Path | None = None) -> dict:
    """Lay out the tab inside the current Blocks and wire its events; returns its main components.
    `serving`: how statements reach the model; `data_dir`: the app's data folder, where debates sent to
    human evaluation are stored."""
    with gr.Row():
        with gr.Column(scale=1, min_width=260):
            # Titles short enough for one line, so the two panels' boxes line up.
            panel_a = IdentityPanel("debate-a", "Agent A: for")
        with gr.Column(scale=1, min_width=260):
            panel_b = IdentityPanel("debate-b", "Agent B: against")
        with gr.Column(scale=2, min_width=320):
            topic = gr.Textbox(label="Motion", placeholder="What the agents debate, e.g. " + TOPICS[0],
                               elem_id="debate-topic", lines=2, max_lines=4)
            gr.Examples(examples=[[t] for t in TOPICS], inputs=[topic], label="Example motions")
            rounds = gr.Slider(1, MAX_ROUNDS, value=1, step=1, precision=0, label="Rebuttal rounds",
                               elem_id="debate-rounds", info="between the opening and the closing statements")
            with gr.Accordion("Generation", open=False, elem_id="debate-generation"):
                conditioning = gr.Radio(
                    choices=[(CONDITIONING_LABELS[c], c.value) for c in Conditioning],
                    value=Conditioning.EXPERTS_AND_PROMPT.value, label="Conditioning",
                    elem_id="debate-conditioning")
                max_new_tokens = gr.Slider(8, MAX_STATEMENT_TOKENS, value=96, step=1, precision=0,
                                           label="Max new tokens per statement", elem_id="debate-max-new-tokens")
                temperature = gr.Slider(0, 2, value=0.7, step=0.05, label="Temperature (0 = greedy)",
                                        elem_id="debate-temperature")
                top_p = gr.Slider(0.05, 1, value=0.9, step=0.05, label="Top-p", elem_id="debate-top-p")
                seed = gr.Number(value=0, precision=0, minimum=0, label="Seed (0 = random)", elem_id="debate-seed")
            with gr.Row():
                start = gr.Button("Start debate", variant="primary", elem_id="debate-start")
                stop = gr.Button("Stop", elem_id="debate-stop")  # not red: nothing may be running
    status = gr.Markdown(elem_id="debate-status")
    with gr.Row(equal_height=True):
        # One bubble per statement (Gradio would merge an agent's consecutive statements into one).
        transcript_a = gr.Chatbot(label=SIDE_NAMES["A"], elem_id="debate-transcript-a", height=460,
                                  placeholder="Agent A's statements appear here.", group_consecutive_messages=False)
        transcript_b = gr.Chatbot(label=SIDE_NAMES["B"], elem_id="debate-transcript-b", height=460,
                                  placeholder="Agent B's statements appear here.", group_consecutive_messages=False)
    with gr.Row():
        files = gr.File(label="Transcript (JSON and Markdown)", file_count="multiple", interactive=False,
                        elem_id="debate-files", scale=2)
        with gr.Column(scale=1):
            send = gr.Button("Send to human evaluation", elem_id="debate-send")
            sent = gr.Markdown(elem_id="debate-sent")
    record_state = gr.State(None)  # per session: the DebateRecord
    views = [transcript_a, transcript_b, status]

    handlers = DebateHandlers(slot, stops, serving, data_dir)
    inputs = [topic, rounds, *panel_a.inputs, *panel_b.inputs, conditioning, max_new_tokens, temperature, top_p,
              seed]
    debate_event = start.click(gpu(handlers.run_debate), inputs, [*views, files, record_state, sent],
                               api_name="debate", **serving.queue)
    stop.click(handlers.stop_debate, [record_state], [*views, files, record_state], cancels=[debate_event],
               queue=False, api_name="debate_stop")
    # No model work: off the model queue, answered at once even while others generate.
    send.click(handlers.send_debate, [record_state], [sent], queue=False, api_name="debate_send_to_evaluation")
    return {"panels": (panel_a, panel_b), "topic": topic, "rounds": rounds,
            "transcripts": (transcript_a, transcript_b), "files": files, "record": record_state}


def standalone_app(engine=None, data_dir=None) -> BuiltApp:
    """The Debate tab alone, around `engine` (default: the tiny random model)."""
    slot = model_slot(engine)
    return tab_app("Debate", lambda demo: build_debate_tab(slot, StopSignals(), reply_serving(MODEL_QUEUE),
                                                                   data_dir=data_dir),
                   css=MODEL_TAB_CSS)


if __name__ == "__main__":
    main(standalone_app)
