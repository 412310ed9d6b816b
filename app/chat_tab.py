"""The Chat tab: talk to one identity-composed agent, changing its identities between turns.

Every reply reads the identity panel at the moment it starts (live masking: nothing is reloaded, the
next call simply routes through other experts) and is recorded with the set it was generated with.
Chat and Regenerate stream through the engine's scheduler, where visitors' replies decode together
(`app.reply_serving`); Compare is one batched call on the app's model queue. Stop both cancels the event
and sets this session's stop flag, which takes its reply alone out of the running batch.
"""
from __future__ import annotations

import random
import time
from contextlib import closing
from dataclasses import replace

import gradio as gr

from hirpf.context_limit import ContextLimitError
from hirpf.identities import IdentitySet
from hirpf.prompts import Conditioning
from hirpf.sampling import Sampling

from .admin_session import AdminSession
from .assets import MODEL_TAB_CSS
from .built_app import BuiltApp
from .chat_transcript import (
    CONDITIONING_LABELS,
    DONE,
    STOPPED,
    assistant_turn,
    mark_stopped,
    model_history,
    render,
    user_turn,
)
from .compare_to_study import CompareToStudy, Comparison
from .identity_panel import IdentityPanel, read_identities
from .model_inputs import MAX_NEW_TOKENS, read_conditioning, read_sampling
from .model_slot import ModelLoadError, ModelSlot
from .reply_serving import ReplyServing, paced, reply_serving
from .standalone import MODEL_QUEUE, main, model_slot, tab_app
from .stop_signals import StopSignals
from .zerogpu import gpu

# Our own openers; each probes a different side of a persona. Each fits Gradio's example button, which
# cuts a text after 60 characters.
EXAMPLES = [
    "How did you spend last weekend?",
    "A friend cancels an hour before we meet. What do you say?",
    "I give a talk to two hundred people tomorrow. Any advice?",
    "What does a good working day look like for you?",
]
COMPARING = "*Answering…*"


def conditioning_shown(identities: IdentitySet, mode: Conditioning) -> Conditioning:
    """The conditioning a reply really has: experts at strength 0 add nothing, so a set whose every identity
    is at 0 is answered (and captioned) by the prompt alone."""
    if mode is Conditioning.EXPERTS_AND_PROMPT and identities.names and \
            all(identities.strength(name) == 0 for name in identities.names):
        return Conditioning.PROMPT
    return mode


def compared_history(message: str, conversation: list) -> list[dict]:
    """What Compare answers: the conversation so far and the box's message or, with the box empty (Send
    empties it), the conversation up to its last user message, which is then answered again."""
    record = list(conversation or [])
    text = (message or "").strip()
    if text:
        return model_history(record) + [{"role": "user", "content": text}]
    last_user = max((i for i, turn in enumerate(record) if turn["role"] == "user"), default=None)
    if last_user is None:
        raise gr.Error("Type a message to compare replies to, or send one first.", title="Compare",
                       print_exception=False)
    return model_history(record[:last_user + 1])


class ChatHandlers:
    """The Chat tab's event handlers, around the app's model (`slot`), the sessions' stop flags and how
    streamed replies are served. `build_chat_tab` lays the tab out and wires these (each model handler
    through `gpu` at that moment, so ZeroGPU wraps what the built app calls)."""

    def __init__(self, slot: ModelSlot, stops: StopSignals, serving: ReplyServing):
        self.slot, self.stops, self.serving = slot, stops, serving

    def stream_reply(self, record: list[dict], identities: IdentitySet, mode: Conditioning, sampling: Sampling,
                     request: gr.Request):
        """Yield (chatbot, record) as the reply to `record` grows; the last record ends with the finished reply."""
        turn = assistant_turn(identities, mode, sampling.seed)
        yield render(record + [turn]), record + [turn]  # at once, even while the model is still loading
        try:
            engine = self.slot.get()
        except ModelLoadError as err:
            yield render(record), record
            raise gr.Error(str(err), title="Model") from None
        # Without experts (or with every one at strength 0) identities act through the prompt only.
        mode = conditioning_shown(identities, engine.effective_conditioning(mode))
        try:  # the newest turns that fit the model's context; the caption says how many were left out
            fitted = engine.fit_history(model_history(record), identities, mode, sampling.max_new_tokens)
        except ContextLimitError as err:
            yield render(record), record
            raise gr.Error(str(err), title="Message too long", print_exception=False) from None
        turn = dict(turn, conditioning=mode.value, left_out=fitted.left_out, context=engine.context_limit)
        began = time.perf_counter()
        with self.stops.armed(request.session_hash if request else None) as handle:
            try:
                reply = self.serving.source(engine).stream(fitted.history, identities, mode, sampling, handle.event)
                with closing(reply) as chunks:
                    for text in paced(chunks):
                        turn = dict(turn, content=text, seconds=time.perf_counter() - began,
                                    status=STOPPED if handle.requested else turn["status"])
                        yield render(record + [turn]), record + [turn]
            except Exception as err:  # the model failed: keep the conversation, drop the broken reply
                yield render(record), record
                raise gr.Error(f"Generation failed: {err}", title="Model") from err
            turn = dict(turn, seconds=time.perf_counter() - began, status=STOPPED if handle.requested else DONE)
        yield render(record + [turn]), record + [turn]

    def chat(self, message: str, conversation: list, traits: list[str], profession: list[str], conditioning: str,
             max_new_tokens: float, temperature: float, top_p: float, seed: float = 0, strengths: str = "",
             request: gr.Request = None):
        """Send the message to the agent with the given identities (strengths: e.g. AGR_low=1.6,Doctor=0.5, 0 to
        2, 1 = as trained); streams the transcript as the reply grows."""
        identities = read_identities(traits, profession, strengths=strengths)
        mode = read_conditioning(conditioning)
        sampling = read_sampling(max_new_tokens, temperature, top_p, seed)
        text = (message or "").strip()
        if not text:
            raise gr.Error("Type a message first.", title="Chat", print_exception=False)
        record = list(conversation or []) + [user_turn(text)]
        yield from self.stream_reply(record, identities, mode, sampling, request)

    def regenerate_reply(self, conversation: list, traits: list[str], profession: list[str], conditioning: str,
                         max_new_tokens: float, temperature: float, top_p: float, seed: float = 0,
                         strengths: str = "", request: gr.Request = None):
        """Replace the last reply with a new one, generated with the identities selected now."""
        identities = read_identities(traits, profession, strengths=strengths)
        mode = read_conditioning(conditioning)
        sampling = read_sampling(max_new_tokens, temperature, top_p, seed)
        record = list(conversation or [])
        while record and record[-1]["role"] == "assistant":
            record.pop()
        if not record:
            raise gr.Error("Nothing to regenerate yet: send a message first.", title="Chat", print_exception=False)
        yield from self.stream_reply(record, identities, mode, sampling, request)

    def compare_replies(self, message: str, conversation: list, traits: list[str], profession: list[str],
                        conditioning: str, max_new_tokens: float, temperature: float, top_p: float, seed: float = 0,
                        strengths: str = "", baseline: str = "prompt"):
        """Answer the message (after the conversation so far; when empty, the conversation's last user message
        again) twice in one batched call with one seed: with the identities as chosen, and with the prompt
        alone (baseline "prompt") or no identity ("none"). Returns the two replies, each under a heading that
        says how it was made; the conversation is kept."""
        identities = read_identities(traits, profession, strengths=strengths)
        mode = read_conditioning(conditioning)
        sampling = read_sampling(max_new_tokens, temperature, top_p, seed)
        if sampling.seed is None:  # one seed for both rows, said on both: draw it here
            sampling = replace(sampling, seed=random.randrange(1, 2**31))
        if baseline not in ("prompt", "none"):
            raise gr.Error(f"Compare with 'prompt' or 'none', not {baseline!r}.", title="Compare",
                           print_exception=False)
        history = compared_history(message, conversation)
        try:
            engine = self.slot.get()
        except ModelLoadError as err:
            raise gr.Error(str(err), title="Model") from None
        mode = conditioning_shown(identities, engine.effective_conditioning(mode))
        against = Conditioning.PROMPT if baseline == "prompt" else None
        try:
            left, right = engine.compare(history, identities, mode, against, sampling)
        except Exception as err:
            raise gr.Error(f"Generation failed: {err}", title="Model") from err
        seed_note = f" · seed {sampling.seed}" if sampling.seed is not None else ""
        right_title = (f"{CONDITIONING_LABELS[Conditioning.PROMPT].capitalize()}: {identities.describe()}" if against
                       else "No identity (plain base model)")
        made = Comparison(tuple(history), identities, mode, baseline, sampling, (left, right), self.slot.description)
        return (f"**{CONDITIONING_LABELS[mode].capitalize()}: {identities.describe()}**{seed_note}\n\n{left}",
                f"**{right_title}**{seed_note}\n\n{right}", made)

    def stop_reply(self, conversation: list, request: gr.Request):
        """Stop this session's running reply at the next token; the text so far stays."""
        self.stops.stop(request.session_hash if request else None)
        record = mark_stopped(list(conversation or []))
        return render(record), record

    def clear_chat(self, request: gr.Request):
        """Stop any running reply and start a new conversation."""
        self.stops.stop(request.session_hash if request else None)
        return [], []


def build_chat_tab(slot: ModelSlot, stops: StopSignals, model_queue: dict, serving: ReplyServing,
                   sender: CompareToStudy) -> dict:
    """Lay out the tab inside the current Blocks and wire its events; returns its main components. Chat and
    Regenerate are served as `serving` says; Compare waits on `model_queue`; `sender` sends a Compare result
    to a pair study."""
    with gr.Row():
        with gr.Column(scale=2, min_width=380):
            panel = IdentityPanel("chat", "Agent identity", with_strength=True)
            conditioning = gr.Radio(
                choices=[(CONDITIONING_LABELS[c], c.value) for c in Conditioning],
                value=Conditioning.EXPERTS_AND_PROMPT.value, label="Conditioning", elem_id="chat-conditioning",
                info="how the identities reach the model: expert layers, the system prompt, or both")
            with gr.Accordion("Sampling", open=False, elem_id="chat-sampling"):
                max_new_tokens = gr.Slider(1, MAX_NEW_TOKENS, value=128, step=1, precision=0, label="Max new tokens",
                                           elem_id="chat-max-new-tokens")
                temperature = gr.Slider(0, 2, value=0.7, step=0.05, label="Temperature (0 = greedy)",
                                        elem_id="chat-temperature")
                top_p = gr.Slider(0.05, 1, value=0.9, step=0.05, label="Top-p", elem_id="chat-top-p")
                seed = gr.Number(value=0, precision=0, minimum=0, label="Seed (0 = random)", elem_id="chat-seed")
        with gr.Column(scale=5):
            chatbot = gr.Chatbot(label="Conversation", elem_id="chat-transcript", height=520,
                                 placeholder="Pick identities on the left, then say something.")
            message = gr.Textbox(label="Message", show_label=False, placeholder="Your message (Enter to send)",
                                 elem_id="chat-message", lines=1, max_lines=6)
            with gr.Row():
                send = gr.Button("Send", variant="primary", elem_id="chat-send")
                stop = gr.Button("Stop", elem_id="chat-stop")  # not red: nothing may be running
                regenerate = gr.Button("Regenerate", elem_id="chat-regenerate")
                clear = gr.Button("Clear", elem_id="chat-clear")
            with gr.Row():
                compare = gr.Button("Compare", elem_id="chat-compare")
                baseline = gr.Radio([("beside the prompt alone", "prompt"), ("beside no identity at all", "none")],
                                    value="prompt", label="Compare baseline", show_label=False,
                                    elem_id="chat-compare-baseline",
                                    info="the message (or the last one sent) answered twice in one batch, one seed")
            # Shown from a Compare until the settings it answered change.
            with gr.Column(elem_id="chat-comparison", visible=False) as comparison:
                with gr.Row():
                    compared = gr.Markdown(elem_id="chat-compare-identity", min_height=80)
                    compared_baseline = gr.Markdown(elem_id="chat-compare-baseline-reply", min_height=80)
                sender.lay_out()
            gr.Examples(examples=[[e] for e in EXAMPLES], inputs=[message], label="Examples")
    conversation = gr.State([])  # per session: the record with each reply's identity set
    last_comparison = gr.State(None)  # per session: the last Compare's `Comparison`, for sending it to a study
    # The strengths go last, so an API call that leaves them out gets each identity at strength 1.
    settings = [conditioning, max_new_tokens, temperature, top_p, seed, panel.strengths]

    handlers = ChatHandlers(slot, stops, serving)
    identity_inputs = panel.inputs
    # Send moves the message out of the box (emptied at once) into `pending`, which the reply then answers, as
    # Gradio's ChatInterface does; the API's /chat takes the message itself, through a button no one sees. The
    # reply's events leave the box out of their outputs: every streamed update would carry it too, and Gradio
    # rebuilds a component for each `gr.skip()`, a fifth of the web server's interpreter time at 8 visitors
    # (docs/serving.md), time the scheduler's loop thread waited for.
    pending = gr.State("")
    api_chat = gr.Button(visible=False, elem_id="chat-api")
    chat_inputs = [conversation, *identity_inputs, *settings]
    chat_event = gr.on([send.click, message.submit], lambda text: ("", text), message, [message, pending],
                       queue=False, show_progress="hidden", api_visibility="private").then(
        gpu(handlers.chat), [pending, *chat_inputs], [chatbot, conversation], api_name="chat_sent",
        api_visibility="private", **serving.queue)  # named, or it would take "chat" from the function's name
    api_chat_event = api_chat.click(gpu(handlers.chat), [message, *chat_inputs], [chatbot, conversation],
                                    api_name="chat", **serving.queue)
    regenerate_event = regenerate.click(gpu(handlers.regenerate_reply), [conversation, *identity_inputs, *settings],
                                        [chatbot, conversation], api_name="regenerate", **serving.queue)
    quick = {"queue": False, "show_progress": "hidden", "api_visibility": "private"}
    compare_event = compare.click(
        lambda: (gr.Column(visible=True), COMPARING, COMPARING), None, [comparison, compared, compared_baseline],
        **quick).then(gpu(handlers.compare_replies), [message, conversation, *identity_inputs, *settings, baseline],
                      [compared, compared_baseline, last_comparison], api_name="compare", **model_queue)
    sender.wire(compare_event, last_comparison)
    # An old comparison would be read as the new settings' answer: it goes when the visitor changes them.
    # `input`, not `change`: values the server writes back (the strengths text a box's click recomputes) can
    # land after the next Compare began on a busy server, and would hide that new comparison.
    gr.on([panel.traits.input, panel.profession.input, *[s.input for s in panel.sliders], conditioning.input,
           baseline.input, clear.click], lambda: gr.Column(visible=False), None, comparison, **quick)
    running = [chat_event, api_chat_event, regenerate_event, compare_event]
    stop.click(handlers.stop_reply, [conversation], [chatbot, conversation], cancels=running, queue=False,
               api_name="stop")
    clear.click(handlers.clear_chat, None, [chatbot, conversation], cancels=running, queue=False, api_name="clear")
    return {"panel": panel, "chatbot": chatbot, "message": message, "conversation": conversation,
            "conditioning": conditioning}


def standalone_app(engine=None, data_dir=None) -> BuiltApp:
    """The Chat tab alone, around `engine` (default: the tiny random model)."""
    slot = model_slot(engine)

    def build(demo: gr.Blocks) -> None:
        sender = CompareToStudy(data_dir, AdminSession())  # no admin tab here: with admin access set, none sends
        build_chat_tab(slot, StopSignals(), MODEL_QUEUE, reply_serving(MODEL_QUEUE), sender)

    return tab_app("Chat", build, css=MODEL_TAB_CSS)


if __name__ == "__main__":
    main(standalone_app)
