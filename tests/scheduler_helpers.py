"""What the scheduler tests share: eight identity sets and questions, the reply a request gives alone, and a
sampler that holds the decode loop at a chosen token."""
from __future__ import annotations

import threading
from contextlib import contextmanager

import hirpf.scheduler as scheduler_module
from hirpf.engine import Engine, Sampling
from hirpf.identities import IdentitySet
from hirpf.prompts import Conditioning
from hirpf.row_sampling import RowSampler

GREEDY = Sampling(max_new_tokens=12, do_sample=False)  # repetition penalty 1.1: per-row state is used
EIGHT_SETS = ["Doctor,AGR_high", "", "EXT_low,NEU_high,OPE_low,Artist", "Programmer", "CON_high,OPE_high",
              "AGR_low,Doctor", "NEU_low,EXT_high,Programmer", "OPE_low"]
EIGHT_SETS = [IdentitySet.parse(s) for s in EIGHT_SETS]
EIGHT_SETS[5] = EIGHT_SETS[5].with_strengths("AGR_low=1.6,Doctor=0.5")
QUESTIONS = ["Hi!", "What do you do at work?", "Describe your ideal weekend in a few words.", "Why?",
             "Tell me about your family and the town where you grew up.", "Ok", "Do you like music?",
             "What would you change about your job if you could change one thing?"]
HISTORIES = [[{"role": "user", "content": q}] for q in QUESTIONS]


def alone(engine: Engine, history, identities, sampling=GREEDY, conditioning=Conditioning.EXPERTS_AND_PROMPT):
    """The token ids `Engine.generate` gives for this request on its own (up to, not including, EOS)."""
    length, out = engine._generate([history], [identities], conditioning, sampling, None)
    ids = out[0, length:].tolist()
    eos = engine.model.generation_config.eos_token_id
    return ids[:ids.index(eos)] if eos in ids else ids


class PausingSampler(RowSampler):
    """Holds the decode loop at its `pause_at`-th token until released, so a test can act mid-batch."""

    reached = threading.Event()
    resume = threading.Event()
    pause_at = 5

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.calls = 0

    def next_token(self, ids, logits):
        self.calls += 1
        if self.calls == self.pause_at:
            self.reached.set()
            assert self.resume.wait(120), "the test never resumed the loop"
        return super().next_token(ids, logits)


def held_sampler():
    """A PausingSampler class with its own events (the loop holds at the row's fifth token until resumed)."""
    return type("Held", (PausingSampler,), {"reached": threading.Event(), "resume": threading.Event()})


def submit_with(sampler_class, monkeypatch, scheduler, *args, **kwargs):
    with monkeypatch.context() as patch:
        patch.setattr(scheduler_module, "RowSampler", sampler_class)  # the sampler is built inside submit
        return scheduler.submit(*args, **kwargs)


@contextmanager
def arriving_during_a_step(scheduler, history, identities, sampling=GREEDY, layer: int = -1):
    """Submits one request from inside the first decode step that runs while rows run, just before its decoder
    layer `layer` (the last by default: the tiny models have two), as a visitor's request arrives while the
    loop is busy. Yields a record: `step`, the steps run before that one; `stream`, the request's;
    `first_token_after`, the steps run when its first token came."""
    runner, record = scheduler.runner, {}

    def arrive(module, args):
        if "stream" in record or not runner.rows or args[0].shape[1] > len(runner.rows):
            return  # a prefill's forward, or a step that already carries prompt tokens
        record["step"] = runner.steps
        stream = scheduler.submit(history, identities, sampling=sampling)
        push = stream._push

        def first_push(token):
            record.setdefault("first_token_after", runner.steps)
            push(token)
        stream._push = first_push
        record["stream"] = stream

    # Before the scheduler's own hook on that layer, which takes in the requests that wait.
    hook = scheduler.engine.model.model.layers[layer].register_forward_pre_hook(arrive, prepend=True)
    try:
        yield record
    finally:
        hook.remove()
