"""The interview judge (`--judge interview`), the paper's questionnaire protocol:

1. the agent is asked the item and answers in its own words (our model, batched across rows);
2. an interviewer model asks `follow_ups` follow-up questions, one at a time, and the agent answers each. The
   interviewer sees the transcript reversed (its own questions as the assistant's turns, the agent's answers
   as the user's), so it simply continues the conversation as itself;
3. a referee model reads the anonymized transcript (speakers X and Y, no system prompt) and picks one of the
   five options from very inaccurate to very accurate, as JSON. `samples` independent samples, majority
   vote; a sample that stays malformed after the client's retries is a failure, never a guess. An item
   whose samples all fail has no answer (counted and reported).

Interviewer and referee are any OpenAI-compatible endpoint (`hirpf.llm_client.ChatClient`: retries, timeout,
on-disk cache, so a rerun is reproducible and free). Wording of all prompts is ours.
"""
from __future__ import annotations

import argparse
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from statistics import median
from typing import Sequence

from .. import environment
from ..environment import SETTINGS
from ..identities import IdentitySet
from ..labels import SCALE_OPTIONS
from ..llm_client import ChatClient, EndpointError, LLMError, MalformedReply
from ..prompts import Conditioning
from ..sampling import Sampling
from ..scales import Scale
from ..transcripts import anonymize, as_text, reverse, speaker_of
from .answers import Answer
from .common import EvalError, batches, check_positive

DEFAULT_BASE_URL = "https://api.openai.com/v1"
DEFAULT_MODEL = SETTINGS["HIRPF_JUDGE_MODEL"].default  # the app's interview judge shares these two
DEFAULT_CACHE = SETTINGS["HIRPF_JUDGE_CACHE_DIR"].default

INTERVIEWER_SYSTEM = (
    "You are a friendly interviewer getting to know the person you are talking with. You want to find out how "
    "well this statement fits them: \"{statement}\". Ask one short, open follow-up question about what they "
    "just said, aimed at concrete examples from their life. Do not quote the statement, do not judge, and "
    "reply with the question only."
)
NEUTRAL_FOLLOW_UP = "Could you tell me a bit more about that?"
REFEREE_SYSTEM = ("You rate how well a statement describes a person, from an interview transcript. "
                  "Reply with JSON only.")
REFEREE_PROMPT = (
    "Statement: \"{statement}\"\n\nInterview transcript (speaker {agent} is the person interviewed):\n{transcript}"
    "\n\nHow accurately does the statement describe speaker {agent}? Choose one option:\n{options}\n\n"
    "Reply with a JSON object of the form {{\"answer\": N}}, where N is the number of the option."
)


def opening_question(statement: str) -> str:
    return f"Tell me honestly, in your own words: is this true of you? \"{statement}\""


def parse_option(reply: dict) -> int:
    """The referee's option, 1-5; anything else is malformed (ValueError)."""
    value = reply.get("answer")
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= len(SCALE_OPTIONS):
        raise ValueError(f"'answer' must be an integer from 1 to {len(SCALE_OPTIONS)}, got {value!r}")
    return value


def majority(votes: Sequence[int]) -> int | None:
    """The most frequent vote; a tie goes to the tied option nearest the median vote (then the lower)."""
    if not votes:
        return None
    counts = Counter(votes)
    top = max(counts.values())
    tied = [v for v, c in counts.items() if c == top]
    middle = median(votes)
    return min(tied, key=lambda v: (abs(v - middle), v))


@dataclass
class InterviewJudge:
    interviewer: ChatClient
    referee: ChatClient
    follow_ups: int = 2
    samples: int = 5
    max_new_tokens: int = 96
    seed: int = 0
    workers: int = 4

    def answer(self, engine, scale: Scale, identity_sets: Sequence[IdentitySet], conditioning: Conditioning,
               batch_size: int = 8, bar=None) -> list[Answer]:
        pairs = [(s, i) for s in identity_sets for i in range(len(scale.items))]
        statements = [scale.items[i].text for _, i in pairs]
        transcripts = [[{"role": "user", "content": opening_question(t)}] for t in statements]
        with ThreadPoolExecutor(self.workers) as pool:
            for round_ in range(self.follow_ups + 1):
                self._agent_turns(engine, transcripts, [s for s, _ in pairs], conditioning, batch_size, round_)
                if round_ < self.follow_ups:
                    questions = list(pool.map(self._follow_up, transcripts, statements))
                    for transcript, question in zip(transcripts, questions):
                        transcript.append({"role": "user", "content": question})
            answers = []
            for (s, i), transcript, (option, votes, failures) in zip(
                    pairs, transcripts, pool.map(self._verdict, transcripts, statements)):
                detail = {"votes": votes, "referee_failures": failures, "transcript": transcript}
                answers.append(Answer(s, i, scale.items[i], None if option is None else float(option), detail))
                if bar is not None:
                    bar.update(1)
        return answers

    def _agent_turns(self, engine, transcripts, identity_sets, conditioning, batch_size, round_) -> None:
        """The agent answers the last question of every transcript, in batches (each row its own set)."""
        order = list(range(len(transcripts)))
        for number, chunk in enumerate(batches(order, batch_size)):
            # One seed per (round, batch): the run is reproducible, batches do not replay each other.
            sampling = Sampling(max_new_tokens=self.max_new_tokens, seed=self.seed + 1000 * round_ + number)
            replies = engine.generate([transcripts[i] for i in chunk], [identity_sets[i] for i in chunk],
                                      conditioning, sampling)
            for i, reply in zip(chunk, replies):
                transcripts[i].append({"role": "assistant", "content": reply[0] or "..."})

    def _follow_up(self, transcript: list[dict], statement: str) -> str:
        system = {"role": "system", "content": INTERVIEWER_SYSTEM.format(statement=statement)}
        messages = [system] + reverse(transcript)
        try:
            question = self.interviewer.complete(messages, temperature=0.7, max_tokens=80, seed=self.seed)[0]
        except EndpointError as err:
            raise EvalError(f"interviewer: {err}") from None
        except LLMError:  # an empty reply even after retries: keep the interview going with a neutral prompt
            return NEUTRAL_FOLLOW_UP
        return question.strip()

    def _verdict(self, transcript: list[dict], statement: str) -> tuple[int | None, list[int], int]:
        """(majority option or None, valid votes, failed samples)."""
        agent = speaker_of(transcript, "assistant")
        options = "\n".join(f"{k} = {text}" for k, text in enumerate(SCALE_OPTIONS, 1))
        prompt = REFEREE_PROMPT.format(statement=statement, agent=agent, options=options,
                                       transcript=as_text(anonymize(transcript)))
        messages = [{"role": "system", "content": REFEREE_SYSTEM}, {"role": "user", "content": prompt}]
        votes, failures = [], 0
        for sample in range(self.samples):
            try:
                votes.append(self.referee.complete_json(messages, parse_option, temperature=0.7, max_tokens=30,
                                                        seed=self.seed, sample=sample))
            except MalformedReply:
                failures += 1
            except EndpointError as err:
                raise EvalError(f"referee: {err}") from None
            except LLMError:  # empty replies in every attempt
                failures += 1
        return majority(votes), votes, failures


def add_endpoint_arguments(group) -> None:
    """The judge endpoint's settings, shared by every judge on an OpenAI-compatible endpoint (this one, the
    pair-study judge in `annotation.pair_judge`); `endpoint_client` reads them."""
    group.add_argument("--judge_base_url", default=None,
                       help=f"OpenAI-compatible endpoint (default: $OPENAI_BASE_URL or {DEFAULT_BASE_URL}); "
                            "key from $OPENAI_API_KEY")
    group.add_argument("--judge_model", default=DEFAULT_MODEL, help="referee model")
    group.add_argument("--judge_timeout", type=float, default=60.0, help="seconds per request")
    group.add_argument("--judge_cache_dir", default=str(DEFAULT_CACHE),
                       help="response cache ('none' to switch off); reruns are answered from it")


def endpoint_client(args, model: str) -> ChatClient:
    base_url = args.judge_base_url or environment.OPENAI_BASE_URL or DEFAULT_BASE_URL
    cache = environment.read_as("HIRPF_JUDGE_CACHE_DIR", str(args.judge_cache_dir))  # 'none': no cache
    return ChatClient(base_url, model, timeout=args.judge_timeout, cache_dir=cache)


def add_interview_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("interview judge (--judge interview)")
    add_endpoint_arguments(group)
    group.add_argument("--interviewer_model", default=None, help="interviewer model (default: --judge_model)")
    group.add_argument("--follow_ups", type=int, default=2, help="follow-up questions per item (default 2)")
    group.add_argument("--referee_samples", type=int, default=5, help="referee samples per item, majority vote")
    group.add_argument("--max_new_tokens", type=int, default=96, help="agent tokens per answer")
    group.add_argument("--judge_workers", type=int, default=4, help="requests in flight at once")


def interview_judge_from_args(args) -> InterviewJudge:
    if args.follow_ups < 0:
        raise EvalError(f"--follow_ups must be 0 or more, got {args.follow_ups}")
    check_positive("--referee_samples", args.referee_samples)
    check_positive("--max_new_tokens", args.max_new_tokens)
    check_positive("--judge_workers", args.judge_workers)
    return InterviewJudge(endpoint_client(args, args.interviewer_model or args.judge_model),
                          endpoint_client(args, args.judge_model),
                          follow_ups=args.follow_ups, samples=args.referee_samples,
                          max_new_tokens=args.max_new_tokens, seed=args.seed, workers=args.judge_workers)
