"""The likelihood judge of `discriminate`: the base model *without experts* reads a reply under short
descriptions of our own and says which description the reply fits better.

For a reply x to a message m and a description D (a system message describing a pole's behaviour or a
profession's working life; several paraphrases per label):

    s(label) = mean over the label's paraphrases D of   log p(x | D, m) / |x|       (per reply token)
    pole margin  d(x) = s(high pole) − s(low pole)       profession = argmax over the three s(profession)

The reply's own likelihood (how fluent or long it is) is common to every description and cancels in the
differences. A pair of replies to the same message is judged by their margins: the reply with the larger
d(x) is the high pole. Several paraphrases per label, averaged, so one wording does not decide.

The judge never runs the experts under evaluation: every row is scored with the empty identity set, which
switches all experts off (the plain base model). Its descriptions are worded unlike the identity system
message (`hirpf.prompts`), but it *is* the model that wrote the prompt-alone replies, so those replies may
read likelier under a description near their own system message: figures of the `prompt` condition can be
inflated by that, never deflated. `discriminate` validates the judge on dialogues no model of ours wrote.

Rows that share a description share its beginning (the system message): it is encoded once and serves as
the cache for their rows (`choices._encode_prefixes`), so each row runs only its message and reply.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

from ..context_limit import check_fits
from ..identities import PROFESSIONS, TRAITS, IdentitySet
from .choices import _encode_prefixes, _shared_prefix_length
from .common import batches, check_positive
from .option_likelihood import _continuation_log_likelihoods

# Our wording, three paraphrases per label: what a person at that pole does and says, not the trait's name.
POLE_DESCRIPTIONS = {
    "AGR_high": (
        "You are warm and considerate. You assume the best of people, give way easily and try to keep everyone "
        "happy.",
        "You are a kind, trusting person who is quick to help, slow to criticise and happiest when everyone gets "
        "along.",
        "You are gentle and cooperative: you thank people, forgive easily and look for the friendly way through "
        "any disagreement."),
    "AGR_low": (
        "You are blunt and sceptical. You put yourself first, argue readily and do not mind upsetting people.",
        "You are a hard, critical person who distrusts other people's motives, says what you think and rarely "
        "gives way.",
        "You are quarrelsome and impatient with people: you complain, find fault and care little whether others "
        "like it."),
    "CON_high": (
        "You are organised and dependable. You plan ahead, keep lists, finish what you start and mind the "
        "details.",
        "You are a disciplined, careful person who works through things step by step and keeps every promise.",
        "You are thorough and responsible: you prepare well, stick to schedules and like things done properly."),
    "CON_low": (
        "You are disorganised and casual about duties. You improvise, put things off and forget details.",
        "You are a careless, spontaneous person who skips plans, leaves things unfinished and does the minimum.",
        "You are messy and unreliable: you procrastinate, lose track of things and would rather wing it than "
        "prepare."),
    "EXT_high": (
        "You are outgoing and energetic. You love company, talk a lot and get excited about meeting people and "
        "going out.",
        "You are a lively, sociable person who seeks out parties, crowds and adventure and speaks with "
        "enthusiasm.",
        "You are talkative and upbeat: you make friends easily, enjoy being the centre of attention and hate "
        "sitting still."),
    "EXT_low": (
        "You are quiet and reserved. You prefer being alone or with one close friend, speak briefly and avoid "
        "crowds.",
        "You are a solitary, low-key person who keeps to yourself, recharges at home and finds socialising "
        "tiring.",
        "You are withdrawn and private: you say little, dislike attention and would rather stay in than go to a "
        "party."),
    "NEU_high": (
        "You are anxious and easily upset. You worry about what could go wrong, feel stressed and your mood "
        "swings.",
        "You are a tense, insecure person who frets over small things, expects the worst and is often "
        "overwhelmed.",
        "You are nervous and emotional: you panic under pressure, dwell on problems and get irritated or sad "
        "quickly."),
    "NEU_low": (
        "You are calm and emotionally steady. You rarely worry, stay relaxed under pressure and recover quickly "
        "from setbacks.",
        "You are a secure, even-tempered person who takes problems in stride and feels at ease with yourself.",
        "You are composed and unflappable: stress rolls off you and you keep a level head when things go "
        "wrong."),
    "OPE_high": (
        "You are curious and imaginative. You love new ideas, art and unusual experiences, and enjoy abstract "
        "questions.",
        "You are an inventive, open-minded person who seeks variety, questions tradition and likes to explore.",
        "You are adventurous in thought: you try new things, read widely and enjoy original, unconventional "
        "ideas."),
    "OPE_low": (
        "You are conventional and down-to-earth. You prefer routine and familiar things and have little interest "
        "in abstract ideas or art.",
        "You are a practical, traditional person who sticks to what you know and distrusts new-fangled ideas.",
        "You are set in your ways: you like the usual, avoid change and find theories and art a waste of time."),
}
PROFESSION_DESCRIPTIONS = {
    "Doctor": (
        "You are a doctor. Your days are patients, diagnoses, treatments and long shifts at the hospital.",
        "You work in medicine as a physician: you examine patients, prescribe medication and think about "
        "people's health.",
        "You are a medical doctor at a clinic, used to symptoms, test results, night shifts and caring for the "
        "sick."),
    "Artist": (
        "You are an artist. Your days are spent in the studio painting, sketching and preparing exhibitions.",
        "You make art for a living: you work with colour, form and materials and look for inspiration "
        "everywhere.",
        "You are a painter and sculptor who sells work at galleries, takes commissions and thinks in images."),
    "Programmer": (
        "You are a programmer. Your days are code, bugs, reviews and shipping software on deadline.",
        "You write software for a living: you design programs, debug them and think in systems and data.",
        "You are a software developer at a tech company, used to computers, deployments, tickets and "
        "late-night fixes."),
}
EMPTY_SET = IdentitySet()  # every expert off: the base model judges


@dataclass(frozen=True)
class Evidence:
    """What the judge reads about one speaker: replies, each after the turns before it (`history`, the
    user's message last). A generated reply is one piece; a dialogue's first assistant turns are several."""

    pieces: tuple[tuple[tuple[dict, ...], str], ...]  # (history, reply)

    @classmethod
    def reply(cls, message: str, reply: str) -> "Evidence":
        return cls(((({"role": "user", "content": message},), reply),))

    @classmethod
    def from_dialogue(cls, dialogue, tokenizer, reply_tokens: int) -> "Evidence":
        """A dialogue's first assistant turns, each after the message it answers, until they hold at least
        `reply_tokens` tokens (about as much as one generated reply)."""
        pieces, tokens = [], 0
        turns = dialogue.turns
        for before, turn in zip(turns, turns[1:]):
            if turn["role"] == "assistant" and before["role"] == "user" and turn["content"].strip():
                pieces.append(((dict(before),), turn["content"]))
                tokens += len(tokenizer.encode(turn["content"], add_special_tokens=False))
                if tokens >= reply_tokens:
                    break
        return cls(tuple(pieces))

    @property
    def replies(self) -> str:
        """The replies' text, joined (what a reader of words reads)."""
        return " ".join(reply for _, reply in self.pieces)


def label_scores(engine, evidence: Sequence[Evidence], labels: Sequence[Sequence[str]],
                 descriptions: Mapping[str, Sequence[str]], batch_size: int = 16, bar=None) -> list[dict[str, float]]:
    """For each evidence, `{label: s(label)}` for its `labels` (see the module docstring): the mean over the
    label's descriptions of the evidence's log-likelihood per reply token, under the base model."""
    check_positive("--batch_size", batch_size)
    # one row per (evidence, description, piece); a piece's sums add up per (evidence, description)
    rows = [(e, text, piece) for e, (item, names) in enumerate(zip(evidence, labels))
            for name in names for text in descriptions[name] for piece in item.pieces]
    totals = _log_likelihood_sums(engine, [(text, *piece) for _, text, piece in rows], batch_size, bar)
    sums: dict[tuple[int, str], list[float]] = {}
    for (e, text, _), (log_likelihood, tokens) in zip(rows, totals):
        total = sums.setdefault((e, text), [0.0, 0])
        total[0] += log_likelihood
        total[1] += tokens
    return [{name: sum(sums[e, text][0] / sums[e, text][1] for text in descriptions[name]) / len(descriptions[name])
             for name in names} for e, names in enumerate(labels)]


def _log_likelihood_sums(engine, rows: Sequence[tuple[str, tuple[dict, ...], str]], batch_size: int,
                         bar=None) -> list[tuple[float, int]]:
    """For each (system message, history, reply): (sum of log p of the reply's tokens, their number), the
    base model reading the reply as the assistant's answer to the history."""
    tokenizer = engine.tokenizer
    prompts, replies = [], []
    for system, history, reply in rows:
        text = tokenizer.apply_chat_template([{"role": "system", "content": system}, *history], tokenize=False,
                                             add_generation_prompt=True)
        prompt = tokenizer.encode(text, add_special_tokens=False)
        reply_ids = tokenizer.encode(reply, add_special_tokens=False) or [tokenizer.eos_token_id]
        check_fits(len(prompt), len(reply_ids), engine.context_limit, what="the judged reply with its message")
        prompts.append(prompt)
        replies.append(reply_ids)
    groups: dict[str, list[int]] = {}
    for i, (system, _, _) in enumerate(rows):
        groups.setdefault(system, []).append(i)
    out: list[tuple[float, int] | None] = [None] * len(rows)
    for chunk in batches(list(groups.values()), batch_size):
        prefix_length = [_shared_prefix_length([prompts[i] for i in members]) for members in chunk]
        prefixes = _encode_prefixes(engine, [prompts[members[0]][:n] for members, n in zip(chunk, prefix_length)],
                                    [EMPTY_SET] * len(chunk))
        members = sorted(((i, c) for c, group in enumerate(chunk) for i in group),
                         key=lambda ic: len(prompts[ic[0]]) - prefix_length[ic[1]] + len(replies[ic[0]]))
        for part in batches(members, batch_size):
            means = _continuation_log_likelihoods(
                engine, prefixes, [c for _, c in part], [prompts[i][prefix_length[c]:] for i, c in part],
                [replies[i] for i, _ in part], [EMPTY_SET] * len(part))
            for (i, _), mean in zip(part, means):
                out[i] = (mean * len(replies[i]), len(replies[i]))
            if bar is not None:
                bar.update(len(part))
    return out


def pole_margins(engine, evidence: Sequence[Evidence], traits: Sequence[str], batch_size: int = 16,
                 bar=None) -> list[float]:
    """d(x) = s(high pole) − s(low pole) of each evidence's trait (`AGR` …)."""
    unknown = sorted(set(traits) - set(TRAITS))
    if unknown:
        raise ValueError(f"unknown traits {unknown}")
    scores = label_scores(engine, evidence, [(f"{t}_high", f"{t}_low") for t in traits], POLE_DESCRIPTIONS,
                          batch_size, bar)
    return [s[f"{t}_high"] - s[f"{t}_low"] for s, t in zip(scores, traits)]


def profession_scores(engine, evidence: Sequence[Evidence], batch_size: int = 16, bar=None) -> list[dict[str, float]]:
    """s(profession) of each evidence for the three professions; the judge names the largest."""
    return label_scores(engine, evidence, [PROFESSIONS] * len(evidence), PROFESSION_DESCRIPTIONS, batch_size, bar)
