"""An identity-conditioned chat model: base model + experts + tokenizer, and how to generate with them.

Every call takes its identity sets as arguments (one per row for batches) and runs inside its own
`use_identities` context, so the identities of one request never reach another and nothing has to be
reset between calls. Seeded sampling reseeds torch's global generator: reproducible for calls made one at
a time; concurrent seeded calls in one process share that generator.
"""
from __future__ import annotations

import logging
import random
import threading
from functools import partial
from pathlib import Path
from typing import Callable, Iterator, Sequence

import torch
from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

from . import environment
from .base_model import EMBEDDED, load_base_model
from .checkpoint import load_experts
from .context_limit import FittedHistory, context_limit, fit_history
from .fast_inference import apply_decode_dtype, calibrate_fold_reach
from .identities import IdentitySet
from .inject import expert_config
from .prompts import Conditioning, expert_identities, system_message
from .routing import use_identities
from .sampling import Message, Sampling
from .scheduler import Scheduler
from .serving_threads import releasing_thread_team

log = logging.getLogger(__name__)
SHIPPED_EXPERTS = Path(__file__).resolve().parent.parent / "models" / "smollm2-135m-experts"


class StopOnEvent(StoppingCriteria):
    """Ends generation at the next token once `event` is set (the UI's Stop button)."""

    def __init__(self, event: threading.Event):
        self.event = event

    def __call__(self, input_ids, scores, **kwargs) -> torch.BoolTensor:
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


def seed_everything(seed: int) -> None:
    """Seed Python's and torch's generators (all devices), as transformers' `set_seed` does; that one is not
    imported because its module pulls in peft and bitsandbytes, seconds of app start-up."""
    random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


def default_experts(base_model: str) -> Path | None:
    """The shipped experts for the embedded model, when present."""
    if base_model == EMBEDDED and (SHIPPED_EXPERTS / "adapter_config.json").is_file():
        return SHIPPED_EXPERTS
    return None


class Engine:
    def __init__(self, model, tokenizer, load_again: Callable[[], "Engine"] | None = None):
        """`load_again`: a picklable callable that loads this same engine again (`Engine.load` records its
        arguments), which lets `scheduler()` run the running batch in a process of its own."""
        self.model, self.tokenizer, self.load_again = model, tokenizer, load_again
        self.engine_process = False  # whether `scheduler()` runs the batch in a process of its own
        self._scheduler = None
        self._scheduler_lock = threading.Lock()
        # Schedulers whose loop thread died and were replaced, and the last one's error (for /model_status).
        self.scheduler_restarts = 0
        self.scheduler_failure: BaseException | None = None

    def scheduler(self):
        """This engine's one `hirpf.scheduler.Scheduler` (started on first use): callers that share it share
        its running batch, so concurrent requests decode together. After `serve_in_a_process()` the running
        batch lives in a process of its own (`hirpf.engine_process.EngineProcess`, the same signatures). A
        closed one is replaced, and so is one whose loop thread or process died (counted in
        `scheduler_restarts`): a dead one is never handed out."""
        with self._scheduler_lock:
            if self._scheduler is None or self._scheduler.closed:
                if self._scheduler is not None and self._scheduler.failure is not None:
                    self.scheduler_restarts += 1
                    self.scheduler_failure = self._scheduler.failure
                if self.engine_process:
                    from .engine_process import EngineProcess

                    self._scheduler = EngineProcess(self, self.load_again)
                else:
                    self._scheduler = Scheduler(self)
            return self._scheduler

    @classmethod
    def load(cls, base_model: str = EMBEDDED, lora_weights: str | Path | None = "default",
             load_in_8bit: bool | None = None, dtype: str = "auto") -> "Engine":
        """`lora_weights`: a checkpoint directory, "default" (the shipped experts if any), or None. The
        experts' decoding copies follow `HIRPF_DECODE_DTYPE` (`hirpf.fast_inference.apply_decode_dtype`), and
        fold as far as it pays on this CPU (`calibrate_fold_reach`)."""
        decode_dtype = environment.HIRPF_DECODE_DTYPE  # a bad value fails before minutes of loading
        model, tokenizer = load_base_model(base_model, load_in_8bit=load_in_8bit, dtype=dtype)
        experts = default_experts(base_model) if lora_weights == "default" else lora_weights
        if experts:
            load_experts(model, experts)
        apply_decode_dtype(model, decode_dtype)
        calibrate_fold_reach(model)
        return cls(model, tokenizer, partial(cls.load, base_model, lora_weights, load_in_8bit, dtype))

    def serve_in_a_process(self, wanted: bool = True) -> bool:
        """From the next scheduler on, run the running batch in a process of its own (`hirpf.engine_process`:
        the web server's Python then no longer holds up its decode steps) where `wanted` and possible: the
        engine can load itself again (`load_again`) and its model is on the CPU. On a GPU the second copy
        would double the GPU memory the model takes. Returns whether it will."""
        self.engine_process = bool(wanted and self.load_again is not None and self.model.device.type == "cpu")
        log.info("the scheduler's running batch: %s", "in a process of its own" if self.engine_process
                 else "in this process")
        return self.engine_process

    @property
    def has_experts(self) -> bool:
        return expert_config(self.model) is not None

    def effective_conditioning(self, conditioning: Conditioning) -> Conditioning:
        """Without experts the identities can only act through the prompt."""
        return conditioning if self.has_experts else Conditioning.PROMPT

    # --- prompts ------------------------------------------------------------------------------
    def chat_messages(self, history: Sequence[Message], identities: IdentitySet,
                      conditioning: Conditioning) -> list[Message]:
        """Our system message followed by the conversation (any system turns in it are replaced)."""
        turns = [{"role": m["role"], "content": m["content"]} for m in history if m["role"] != "system"]
        return [{"role": "system", "content": system_message(identities, conditioning)}] + turns

    @property
    def context_limit(self) -> int:
        """Tokens one request may span, prompt and reply (`hirpf.context_limit`)."""
        return context_limit(self.model.config)

    def fit_history(self, history: Sequence[Message], identities: IdentitySet, conditioning: Conditioning,
                    max_new_tokens: int) -> FittedHistory:
        """The newest turns of `history` that fit the context with our system message and `max_new_tokens`
        (ContextLimitError if the newest alone cannot)."""
        system, *turns = self.chat_messages(history, identities, conditioning)
        return self.fit_turns([system], turns, max_new_tokens)

    def fit_turns(self, system: Sequence[Message], turns: Sequence[Message], max_new_tokens: int) -> FittedHistory:
        """The newest of `turns` that fit the context after the `system` messages (always kept)."""
        def prompt_tokens(kept):
            text = self.tokenizer.apply_chat_template(list(system) + list(kept), tokenize=False,
                                                      add_generation_prompt=True)
            return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

        return fit_history(turns, prompt_tokens, self.context_limit, max_new_tokens)

    def encode(self, conversations: Sequence[Sequence[Message]]) -> dict:
        texts = [self.tokenizer.apply_chat_template(list(c), tokenize=False, add_generation_prompt=True)
                 for c in conversations]
        batch = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        return {k: v.to(self.model.device) for k, v in batch.items()}

    # --- generation ---------------------------------------------------------------------------
    def generate(self, histories: Sequence[Sequence[Message]], identities: Sequence[IdentitySet],
                 conditioning: "Conditioning | Sequence[Conditioning]" = Conditioning.EXPERTS_AND_PROMPT,
                 sampling: Sampling | None = None, num_return_sequences: int = 1,
                 stop_event: threading.Event | None = None) -> list[list[str]]:
        """One batch, each row with its own identity set (and conditioning, when a list is given); returns
        `num_return_sequences` replies per row."""
        if len(histories) != len(identities):
            raise ValueError(f"{len(histories)} conversations but {len(identities)} identity sets")
        prompt_length, out = self._generate(histories, identities, conditioning, sampling, stop_event,
                                            num_return_sequences=num_return_sequences)
        replies = [r.strip() for r in self.tokenizer.batch_decode(out[:, prompt_length:], skip_special_tokens=True)]
        n = num_return_sequences
        return [replies[i * n:(i + 1) * n] for i in range(len(histories))]

    def reply(self, history: Sequence[Message], identities: IdentitySet,
              conditioning: Conditioning = Conditioning.EXPERTS_AND_PROMPT, sampling: Sampling | None = None) -> str:
        return self.generate([history], [identities], conditioning, sampling)[0][0]

    def compare(self, history: Sequence[Message], identities: IdentitySet,
                conditioning: Conditioning = Conditioning.EXPERTS_AND_PROMPT,
                baseline: Conditioning | None = Conditioning.PROMPT, sampling: Sampling | None = None,
                stop_event: threading.Event | None = None) -> tuple[str, str]:
        """The same message answered twice in one batched call with one seed: under `conditioning`, and under
        `baseline` (the prompt alone by default; None: the plain base model, no identity at all), so what the
        experts add can be seen side by side."""
        rows = [identities, identities if baseline is not None else IdentitySet()]
        modes = [conditioning, baseline if baseline is not None else Conditioning.PROMPT]
        (with_identity,), (without,) = self.generate([history, history], rows, modes, sampling, stop_event=stop_event)
        return with_identity, without

    def stream(self, history: Sequence[Message], identities: IdentitySet,
               conditioning: Conditioning = Conditioning.EXPERTS_AND_PROMPT, sampling: Sampling | None = None,
               stop_event: threading.Event | None = None) -> Iterator[str]:
        """Yield the reply as it grows (the whole text so far each time). Setting `stop_event`, or closing
        the iterator, stops generation at the next token."""
        stop_event = stop_event or threading.Event()
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        failure: list[BaseException] = []

        def run():
            try:
                self._generate([history], [identities], conditioning, sampling, stop_event, streamer=streamer)
            except BaseException as err:  # surfaced to the consumer below
                failure.append(err)
                streamer.end()

        worker = threading.Thread(target=run, daemon=True)
        worker.start()
        text = ""
        try:
            for piece in streamer:
                text += piece
                yield text.strip()
        finally:
            stop_event.set()
            worker.join()
        if failure:
            raise failure[0]

    def _generate(self, histories, identities, conditioning, sampling, stop_event, streamer=None,
                  num_return_sequences=1):
        """Run `generate` on a batch; returns (prompt length, output ids). The routing context is entered
        here, in the thread that runs the model (contexts are per thread, see routing.py)."""
        sampling = sampling or Sampling()
        identities = [IdentitySet.parse(s) for s in identities]
        modes = ([Conditioning.parse(conditioning)] * len(identities) if isinstance(conditioning, (str, Conditioning))
                 else [Conditioning.parse(c) for c in conditioning])
        if len(modes) != len(identities):
            raise ValueError(f"{len(identities)} identity sets but {len(modes)} conditionings")
        # Each row keeps the newest turns that fit the context (hirpf.context_limit).
        fitted = [self.fit_history(h, s, c, sampling.max_new_tokens) for h, s, c in zip(histories, identities, modes)]
        for row, fit in enumerate(fitted):
            if fit.left_out:
                log.info("row %d: %d earlier turns left out to fit the context of %d tokens", row, fit.left_out,
                         self.context_limit)
        histories = [fit.history for fit in fitted]
        batch = self.encode([self.chat_messages(h, s, c) for h, s, c in zip(histories, identities, modes)])
        kwargs = sampling.generate_kwargs()
        if stop_event is not None:
            kwargs["stopping_criteria"] = StoppingCriteriaList([StopOnEvent(stop_event)])
        if sampling.seed is not None:
            seed_everything(sampling.seed)
        rows = [expert_identities(s, c) for s, c in zip(identities, modes)]
        # The calling thread may be a web-server worker that lives on (serving_threads.py: why it lets go).
        with releasing_thread_team(), torch.no_grad(), use_identities(rows):
            out = self.model.generate(**batch, num_return_sequences=num_return_sequences, streamer=streamer, **kwargs)
        return batch["input_ids"].shape[1], out
