"""The slot judge: a model reads an anonymized dialogue and labels one speaker on the six annotation slots
(AGR, CON, EXT, NEU, OPE: high/low/none; Profession: Doctor/Artist/Programmer/none), exactly what human
annotators are asked (`hirpf.labels`).

The judge sees speakers X and Y only (system turns removed, system names redacted) and must answer with one
JSON object holding the six slots. A reply that is not that object, or names an unknown slot or label, is
resampled a few times; then the dialogue is counted as failed with the reason, never guessed. Calls go
through `hirpf.llm_client.ChatClient` (retries on 429/5xx and timeouts, on-disk cache).
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Sequence

from .. import environment
from ..labels import NONE, SLOTS, normalize_slots
from ..llm_client import ChatClient, EndpointError, LLMError, MalformedReply
from ..transcripts import anonymize, as_text, speaker_of
from .interview import DEFAULT_CACHE, DEFAULT_MODEL  # one response cache and default model for every judge

JUDGE_SYSTEM = """You are a careful observer of personality and occupation in conversation. You will read a \
conversation between two people, X and Y, and describe one of them.

For each Big Five trait, answer "high" if the person clearly shows the high pole, "low" if they clearly show the \
low pole, and "none" if the conversation gives no clear sign either way:
- AGR (agreeableness): high = warm, trusting, forgiving, cooperative; low = cold, critical, suspicious, self-serving.
- CON (conscientiousness): high = organised, careful, dutiful, plans ahead; low = careless, disorganised, improvising.
- EXT (extraversion): high = outgoing, talkative, energetic, seeks company; low = reserved, quiet, prefers solitude.
- NEU (neuroticism): high = anxious, easily upset, moody, worried; low = calm, even-tempered, composed.
- OPE (openness): high = curious, imaginative, open to the new; low = conventional, practical, prefers the familiar.
For Profession, answer "Doctor", "Artist" or "Programmer" if the person's words show that they work in that \
field, otherwise "none".

Judge only from what the person says. Answer with one JSON object and nothing else, exactly these keys:
{"AGR": "high|low|none", "CON": "high|low|none", "EXT": "high|low|none", "NEU": "high|low|none", \
"OPE": "high|low|none", "Profession": "Doctor|Artist|Programmer|none"}"""


def slot_judge_messages(dialog: Sequence[dict], judged_role: str = "assistant",
                        redact: Sequence[str] = ()) -> list[dict]:
    """The judge's request for a dialogue (`{"role", "content"}` turns): the anonymized transcript and which
    anonymous speaker to label (the one that played `judged_role`)."""
    speaker = speaker_of(dialog, judged_role)
    transcript = as_text(anonymize(dialog, redact))
    return [{"role": "system", "content": JUDGE_SYSTEM},
            {"role": "user", "content": f"Conversation:\n\n{transcript}\n\nDescribe speaker {speaker}. "
                                        "Answer with the JSON object only."}]


def parse_slots(value: dict) -> dict[str, str]:
    """The six slots of a judge's JSON object, canonical; ValueError (`LabelError`) names what is wrong."""
    return normalize_slots(value)


@dataclass
class SlotJudgment:
    """A judge's labels for one dialogue, or why there are none."""

    slots: dict[str, str] | None
    error: str | None = None
    raw_replies: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.slots is not None


class JudgeUnavailable(RuntimeError):
    """The judge endpoint refuses every request (a bad key, model or URL): the run stops."""


def judge_dialogues(client, dialogs: Sequence[Sequence[dict]], *, redact: Sequence[str] = (), attempts: int = 3,
                    max_tokens: int = 200, seed: int | None = None, workers: int = 4,
                    on_done: Callable[[int], None] | None = None) -> list[SlotJudgment]:
    """One judgment per dialogue (the assistant side is judged), `workers` requests at a time. Malformed
    answers after `attempts` tries, and endpoints that give up after their retries, are failures counted per
    dialogue; a refusal (HTTP 4xx such as a wrong key or model) stops the run with `JudgeUnavailable`."""
    def judge(dialog) -> SlotJudgment:
        messages = slot_judge_messages(dialog, redact=redact)
        try:
            slots = client.complete_json(messages, parse_slots, temperature=0.0, max_tokens=max_tokens,
                                         attempts=attempts, seed=seed)
            result = SlotJudgment(slots)
        except MalformedReply as err:
            result = SlotJudgment(None, f"malformed: {err.errors[-1]}", err.raw_replies)
        except EndpointError as err:
            if err.status is not None:  # refused outright: retrying other dialogues cannot help
                raise JudgeUnavailable(str(err)) from None
            result = SlotJudgment(None, f"endpoint: {err}")
        except LLMError as err:
            result = SlotJudgment(None, f"{type(err).__name__}: {err}")
        if on_done is not None:
            on_done(1)
        return result

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        return list(pool.map(judge, dialogs))


def slot_accuracy(pairs: Sequence[tuple[dict, dict]]) -> dict:
    """(target, prediction) slot pairs -> recall of the target's identities (the slots that are not none),
    accuracy per slot, the mean over slots, the chance line of that mean, and exact match.

    Most target slots are none (a set of one identity leaves five of the six at none), so a judge that
    answers none everywhere already scores 5/6 on single identities and 4/6 on pairs. `accuracy_always_none`
    is that judge's score on the same targets: the accuracy means something only above it. Identity recall
    has no such floor, so it comes first."""
    if not pairs:
        return {"identity_recall": None, "accuracy": None, "accuracy_always_none": None,
                "accuracy_by_slot": {s: None for s in SLOTS}, "exact_match": None, "dialogues": 0}
    by_slot = {s: sum(t[s] == p[s] for t, p in pairs) / len(pairs) for s in SLOTS}
    named = [(t[s], p[s]) for t, p in pairs for s in SLOTS if t[s] != NONE]
    return {"identity_recall": sum(a == b for a, b in named) / len(named) if named else None,
            "accuracy": sum(by_slot.values()) / len(SLOTS),
            "accuracy_always_none": sum(t[s] == NONE for t, _ in pairs for s in SLOTS) / (len(pairs) * len(SLOTS)),
            "accuracy_by_slot": by_slot, "exact_match": sum(t == p for t, p in pairs) / len(pairs),
            "dialogues": len(pairs)}


# --- options ---------------------------------------------------------------------------------------
def add_judge_arguments(parser) -> None:
    """The judge's endpoint options (named as the interview judge's, `interview.py`)."""
    group = parser.add_argument_group("judge (an OpenAI-compatible endpoint; key from $OPENAI_API_KEY)")
    group.add_argument("--judge_base_url", default=environment.OPENAI_BASE_URL,
                       help="e.g. https://api.openai.com/v1 or a local server (default: $OPENAI_BASE_URL; "
                            "neither: the dialogues are written but not judged)")
    group.add_argument("--judge_model", default=DEFAULT_MODEL,
                       help=f"model at that endpoint (default {DEFAULT_MODEL})")
    group.add_argument("--judge_attempts", type=int, default=3,
                       help="tries per dialogue while the answer is not the six-slot JSON, then it counts as failed")
    group.add_argument("--judge_timeout", type=float, default=60.0, help="seconds per request")
    group.add_argument("--judge_workers", type=int, default=4, help="requests in flight at once")
    group.add_argument("--judge_cache_dir", default=str(DEFAULT_CACHE),
                       help="response cache ('none' to switch off); reruns are answered from it")


def chat_client(args, base_url: str, model: str) -> ChatClient:
    """A `ChatClient` for one endpoint with the run's timeout and cache."""
    cache = environment.read_as("HIRPF_JUDGE_CACHE_DIR", str(args.judge_cache_dir))  # 'none': no cache
    return ChatClient(base_url, model, timeout=args.judge_timeout, cache_dir=cache)
