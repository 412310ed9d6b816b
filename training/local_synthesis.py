"""The local synthesis backend (`training/synthesize.py --backend local-contrastive`): the base model itself
writes identity dialogues, no network, with the identity exaggerated by contrastive amplification.

Both speakers are the base model (no experts: they are what the data will train). The other speaker opens
under a brief of ours that places it in the job's scene (and, for an outside-profession job, has it ask the
outside question); the character answers under our identity system message. At every step of a character
turn the batch holds two rows per dialogue, the identity prompt and the neutral prompt with the same
conversation so far, and the next token is drawn from

    l = l_identity + γ · (l_identity − l_neutral)

with the usual settings (repetition penalty, temperature, top-k, top-p, as `generate` applies them) and one
seeded generator per dialogue. The same token is appended to both rows. γ = 0 is plain identity-prompt
generation; larger γ pushes away from what the model would say without the identity. Many dialogues run in
one batch; a turn that comes out empty, or where the character names its own identity, is resampled up to
`attempts` times, then the dialogue fails with that reason.

The batch and its decode step are the scheduler's (`hirpf.batch_cache.PaddedBatchCache`: one prefill of the
left-padded rows, then `decode` once per token). The token choice is not the scheduler's `RowSampler`: that
one draws among the top-k candidates, this one over the whole vocabulary with the others masked (as
`generate` does), and the two draw different tokens from one seed; this backend keeps its draws so that a
run's seed still gives the dialogues it gave before.

Records have the trainer's format plus `synthesis` (job id, backend, base model, γ, seeds, sampling, prompt
version, creation time, scene, outside topic).
"""
from __future__ import annotations

import hashlib
import logging
import re
import time
import zlib
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

import torch
from transformers import (
    LogitsProcessorList,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from hirpf.batch_cache import PaddedBatchCache
from hirpf.dialogues import validate
from hirpf.engine import Sampling
from hirpf.identities import IdentitySet
from hirpf.padding import left_padded
from hirpf.prompts import NEUTRAL_SYSTEM_MESSAGE, identity_system_message
from training.synthesis_records import Job, append_record, finished_jobs, named_identity

log = logging.getLogger("hirpf.synthesize")
BACKEND = "local-contrastive"
# What the other speaker is told; the character never sees it.
OTHER_SPEAKER_BRIEF = ("You are a person in this situation: {scene}. You have just started talking with someone "
                       "there. Speak naturally, one to three sentences at a time, react to what they say and keep "
                       "the conversation going.")
OUTSIDE_QUESTION = " Early on, ask them {topic}."
OPENING_CUE = "(You speak first. Say your opening line to them.)"
SENTENCE_END = re.compile(r"[.!?…][\"')\]]*(?=\s|$)")


def amplified_logits(identity: torch.Tensor, neutral: torch.Tensor, gamma: float) -> torch.Tensor:
    """The contrastive next-token logits. Adding a constant to either row adds one to the result, which
    softmax ignores, so raw logits and log-probabilities give the same distribution."""
    return identity + gamma * (identity - neutral)


def prompt_version(identities: IdentitySet) -> str:
    """A short digest of every prompt text this backend used for `identities`: changes whenever the wording
    (ours or the identity message) does, without a number to remember to bump."""
    texts = [identity_system_message(identities), NEUTRAL_SYSTEM_MESSAGE, OTHER_SPEAKER_BRIEF, OUTSIDE_QUESTION,
             OPENING_CUE]
    return "sha256:" + hashlib.sha256("\n\x00".join(texts).encode()).hexdigest()[:12]


# --- decoding ---------------------------------------------------------------------------------------
def processors(sampling: Sampling) -> LogitsProcessorList:
    """What `generate` applies to the next-token logits, in its order; greedy keeps only the penalty."""
    steps = LogitsProcessorList()
    if sampling.repetition_penalty != 1.0:
        steps.append(RepetitionPenaltyLogitsProcessor(sampling.repetition_penalty))
    if sampling.do_sample:
        if sampling.temperature != 1.0:
            steps.append(TemperatureLogitsWarper(sampling.temperature))
        if sampling.top_k:
            steps.append(TopKLogitsWarper(sampling.top_k))
        if sampling.top_p < 1.0:
            steps.append(TopPLogitsWarper(sampling.top_p))
    return steps


def _penalty_history(rows: Sequence[list[int]]) -> torch.Tensor:
    """The rows' tokens for the repetition penalty, left-filled with each row's first token instead of the
    pad token: the penalty counts a token once however often it occurs, so the filler changes nothing,
    whereas a pad token (here the end-of-turn token) would be penalised in padded rows only."""
    width = max(map(len, rows))
    return torch.tensor([[row[0]] * (width - len(row)) + row for row in rows], dtype=torch.long)


def end_token_ids(model, tokenizer) -> set[int]:
    configured = model.generation_config.eos_token_id
    ids = set(configured if isinstance(configured, list) else [configured] if configured is not None else [])
    return ids | ({tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set())


def sample_replies(model, tokenizer, prompts: Sequence[list[int]], sampling: Sampling,
                   generators: Sequence[torch.Generator], neutral: Sequence[list[int]] | None = None,
                   gamma: float = 0.0, trace: list | None = None) -> list[tuple[list[int], bool]]:
    """One reply per prompt (token ids of a chat prompt ending in the assistant cue): `(token ids, ended)`,
    `ended` False when `max_new_tokens` cut it. With `neutral` (one neutral prompt per prompt, same
    conversation), the batch holds both and every token is drawn from the amplified logits of its pair.
    `trace`, when given, receives each step's amplified logits before the processors (for tests)."""
    n = len(prompts)
    if len(generators) != n or (neutral is not None and len(neutral) != n):
        raise ValueError(f"{n} prompts need {n} generators and {n} neutral prompts")
    rows = list(prompts) + list(neutral or [])
    device = model.device
    ids, mask = left_padded(rows, tokenizer.pad_token_id)
    history = _penalty_history(prompts).to(device)
    steps, ends = processors(sampling), end_token_ids(model, tokenizer)
    replies: list[list[int]] = [[] for _ in range(n)]
    ended = torch.zeros(n, dtype=torch.bool)
    with torch.no_grad():
        # The scheduler's decode step (`PaddedBatchCache.decode`) over the identity and neutral rows; the
        # token choice is this backend's own (see the module docstring).
        batch, logits = PaddedBatchCache.prefilled(model, ids.to(device), mask.to(device))
        for step in range(sampling.max_new_tokens):
            logits = logits.float()
            scores = logits[:n] if neutral is None else amplified_logits(logits[:n], logits[n:], gamma)
            if trace is not None:
                trace.append(scores.clone())
            scores = steps(history, scores)
            if sampling.do_sample:
                probs = torch.softmax(scores, dim=-1).cpu()
                chosen = torch.cat([torch.multinomial(probs[i], 1, generator=generators[i]) for i in range(n)])
            else:
                chosen = scores.argmax(-1).cpu()
            for i in range(n):
                if not ended[i]:
                    if int(chosen[i]) in ends:
                        ended[i] = True
                    else:
                        replies[i].append(int(chosen[i]))
            if bool(ended.all()) or step + 1 == sampling.max_new_tokens:
                break
            chosen = chosen.to(device)
            history = torch.cat([history, chosen[:, None]], dim=1)
            newest = torch.cat([chosen, chosen]) if neutral is not None else chosen  # a pair's rows take one token
            logits = batch.decode(model, newest[:, None])
    return [(reply, bool(done)) for reply, done in zip(replies, ended)]


# --- dialogues --------------------------------------------------------------------------------------
@dataclass
class LocalSettings:
    """The local backend's knobs: γ, decoding (`Sampling`; its seed is the run's seed), and retries."""

    gamma: float = 1.0
    sampling: Sampling = field(default_factory=lambda: Sampling(max_new_tokens=96, temperature=0.9))
    attempts: int = 3
    batch_size: int = 8  # dialogues per batch; character turns run two rows each

    def check(self) -> None:
        if not self.gamma >= 0:
            raise ValueError(f"--gamma must be 0 or more (0: no amplification), got {self.gamma}")
        if self.sampling.num_beams != 1:
            raise ValueError("the local backend samples token by token: num_beams must be 1")
        for name, value in (("--attempts", self.attempts), ("--batch_size", self.batch_size),
                            ("--max_new_tokens", self.sampling.max_new_tokens)):
            if value < 1:
                raise ValueError(f"{name} must be positive, got {value}")


@dataclass
class DialogueState:
    job: Job
    generator: torch.Generator
    dialog: list = field(default_factory=list)
    failure: str | None = None
    resampled: int = 0

    @property
    def done(self) -> bool:
        return self.failure is not None or len(self.dialog) == 2 * self.job.exchanges


def job_seed(job: Job) -> int:
    """Each dialogue draws from its own generator, seeded from the job id (which carries the run's seed)."""
    return zlib.crc32(job.id.encode())


def chat_ids(tokenizer, messages: list[dict]) -> list[int]:
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def other_speaker_view(job: Job, dialog: list[dict]) -> list[dict]:
    """The conversation as the other speaker sees it: its own lines are the assistant's."""
    brief = OTHER_SPEAKER_BRIEF.format(scene=job.scene)
    if job.outside_topic:
        brief += OUTSIDE_QUESTION.format(topic=job.outside_topic)
    flipped = [{"role": "assistant" if t["role"] == "user" else "user", "content": t["content"]} for t in dialog]
    return [{"role": "system", "content": brief}, {"role": "user", "content": OPENING_CUE}] + flipped


def character_views(job: Job, dialog: list[dict]) -> tuple[list[dict], list[dict]]:
    """(identity-prompt view, neutral view) of the same conversation."""
    return ([{"role": "system", "content": identity_system_message(job.identities)}] + dialog,
            [{"role": "system", "content": NEUTRAL_SYSTEM_MESSAGE}] + dialog)


def finished_turn(text: str, ended: bool) -> str:
    """A reply cut by the token limit ends at its last full sentence (whole when it has none)."""
    text = text.strip()
    if not ended:
        ends = list(SENTENCE_END.finditer(text))
        if ends:
            text = text[:ends[-1].end()]
    return text


def turn_problem(text: str, job: Job, character: bool) -> str | None:
    if not text:
        return "empty turn"
    if character and named_identity(text, job.identities):
        return "identity named"
    return None


def write_dialogues(jobs: Sequence[Job], model, tokenizer, settings: LocalSettings) -> list[DialogueState]:
    """Run a batch of jobs turn by turn to the end; every state holds a dialogue or a failure reason."""
    states = [DialogueState(job, torch.Generator().manual_seed(job_seed(job))) for job in jobs]
    while not all(state.done for state in states):
        turn = min(len(s.dialog) for s in states if not s.done)
        pending = [s for s in states if not s.done and len(s.dialog) == turn]
        character = turn % 2 == 1  # the other speaker opens
        for attempt in range(settings.attempts):
            replies = _next_turns(pending, model, tokenizer, settings, character)
            retry = []
            for state, (ids, ended) in zip(pending, replies):
                text = finished_turn(tokenizer.decode(ids, skip_special_tokens=True), ended)
                problem = turn_problem(text, state.job, character)
                if problem is None:
                    state.dialog.append({"role": "assistant" if character else "user", "content": text})
                elif attempt + 1 < settings.attempts:
                    state.resampled += 1
                    retry.append(state)
                else:
                    state.failure = problem
            pending = retry
            if not pending:
                break
    return states


def _next_turns(states: list[DialogueState], model, tokenizer, settings: LocalSettings, character: bool):
    generators = [s.generator for s in states]
    if not character:
        prompts = [chat_ids(tokenizer, other_speaker_view(s.job, s.dialog)) for s in states]
        return sample_replies(model, tokenizer, prompts, settings.sampling, generators)
    views = [character_views(s.job, s.dialog) for s in states]
    return sample_replies(model, tokenizer, [chat_ids(tokenizer, v[0]) for v in views], settings.sampling,
                          generators, neutral=[chat_ids(tokenizer, v[1]) for v in views], gamma=settings.gamma)


def record_of(state: DialogueState, model, settings: LocalSettings, run_seed: int) -> dict:
    sampling = {k: v for k, v in asdict(settings.sampling).items() if k not in ("seed", "num_beams")}
    record = {"dialog": state.dialog, "active_adapters": list(state.job.identities), "synthesis": {
        "job": state.job.id, "backend": BACKEND, "base_model": getattr(model, "hirpf_base_model", None),
        "gamma": settings.gamma, "seed": run_seed, "job_seed": job_seed(state.job), "sampling": sampling,
        "prompt_version": prompt_version(state.job.identities),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "scene": state.job.scene, "outside_topic": state.job.outside_topic, "resampled_turns": state.resampled}}
    validate(record, "synthesized", 0)  # the loader's own check: what we write is what training reads
    return record


def run_local(jobs: Sequence[Job], model, tokenizer, output: Path, settings: LocalSettings, run_seed: int) -> dict:
    """Write every job not yet in `output` (batches of `settings.batch_size`), each batch's records as soon
    as it ends. Returns the summary."""
    started = time.time()
    output.parent.mkdir(parents=True, exist_ok=True)
    done = finished_jobs(output)
    todo = [job for job in jobs if job.id not in done]
    written, failed, failures = 0, Counter(), []
    with open(output, "a", encoding="utf-8") as out:
        for start in range(0, len(todo), settings.batch_size):
            for state in write_dialogues(todo[start:start + settings.batch_size], model, tokenizer, settings):
                if state.failure:
                    failed[state.failure] += 1
                    failures.append({"job": state.job.id, "reason": state.failure, "dialog_so_far": state.dialog})
                    continue
                append_record(out, record_of(state, model, settings, run_seed))
                written += 1
            log.info("[%d/%d] dialogues done", min(start + settings.batch_size, len(todo)), len(todo))
    return {"output": str(output), "backend": BACKEND, "base_model": getattr(model, "hirpf_base_model", None),
            "gamma": settings.gamma, "jobs": len(jobs), "skipped": len(jobs) - len(todo), "written": written,
            "failed": sum(failed.values()), "failed_by_reason": dict(failed), "not_started": 0, "stopped": None,
            "seconds": round(time.time() - started, 1), "failures": failures}
