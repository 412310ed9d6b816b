"""The likelihood judge (`--judge likelihood`): answers read from how likely the model finds each option's
words as its reply, so a small model that will not answer with a digit is still measured.

For one item the agent is asked how accurately the statement describes it, with the five options named in
words; each option text (`SCALE_OPTIONS`, capitalised) is then scored as the assistant's whole answer
after the question, teacher-forced:

    s_k = mean over the option's tokens of log p(token | prompt, option so far)      (length-normalised)
    p_k = softmax_k(s_k)          answer = Σ k · p_k   (1 = very inaccurate … 5 = very accurate)

Rows of one batch carry different identity sets, each routed through its own experts with
`use_identities`; as in `choices.py`, the prompt beginning that all items of one identity set share is
encoded once per set and serves as the cache for that set's rows (one row per item and option). Rows are
padded on the left with positions counted from each row's first real token, so a row's scores do not depend
on its batch (tests compare batched, one-by-one and plain forwards).
"""
from __future__ import annotations

from typing import Sequence

import torch

from ..identities import IdentitySet
from ..labels import SCALE_OPTIONS
from ..prompts import Conditioning, expert_identities
from ..scales import Scale
from .answers import Answer
from .choices import _encode_prefixes, _prompt_ids, _shared_prefix_length, logits_after_prefixes
from .common import EvalError, batches, check_positive


def likelihood_question(statement: str) -> str:
    """The question before the scored reply. The options come before the statement so that every item of
    one identity set shares its prompt up to the statement (encoded once)."""
    options = "; ".join(SCALE_OPTIONS)
    return ("Here is a statement a person might make about themselves. How accurately does it describe you? "
            f"Answer with one of: {options}.\n\nStatement: \"{statement}\"")


def option_replies(options: Sequence[str] = SCALE_OPTIONS) -> list[str]:
    """The replies scored: each option as an answer would start ("Very accurate")."""
    return [o[:1].upper() + o[1:] for o in options]


def option_distribution(engine, conversations: Sequence[Sequence[dict]], identities: Sequence[IdentitySet],
                        conditioning: Conditioning, replies: Sequence[str], batch_size: int = 16,
                        bar=None) -> tuple[torch.Tensor, torch.Tensor]:
    """For each conversation (its own identity set), `(probabilities [rows, options] summing to 1,
    mean log-likelihood per option token [rows, options])` of each reply as the assistant's answer.
    `batch_size` bounds both the identity sets encoded together and the rows of one forward pass."""
    if len(conversations) != len(identities):
        raise ValueError(f"{len(conversations)} conversations but {len(identities)} identity sets")
    check_positive("--batch_size", batch_size)
    conditioning = Conditioning.parse(conditioning)
    identities = [IdentitySet.parse(s) for s in identities]
    reply_ids = [engine.tokenizer.encode(r, add_special_tokens=False) for r in replies]
    if not all(reply_ids):
        raise EvalError(f"every option needs at least one token, got {list(replies)}")
    longest = max(map(len, reply_ids))  # every option is read after the prompt: the longest must fit too
    prompts = [_prompt_ids(engine, c, s, conditioning, longest) for c, s in zip(conversations, identities)]
    groups: dict[IdentitySet, list[int]] = {}
    for i, s in enumerate(identities):
        groups.setdefault(s, []).append(i)
    scores = torch.zeros(len(prompts), len(replies), dtype=torch.float64)
    for chunk in batches(list(groups.items()), batch_size):
        prefix_length = {s: _shared_prefix_length([prompts[i] for i in members]) for s, members in chunk}
        prefixes = _encode_prefixes(engine, [prompts[members[0]][:prefix_length[s]] for s, members in chunk],
                                    [expert_identities(s, conditioning) for s, _ in chunk])
        # one row per (prompt, option): (prompt index, option index, position of its set in the chunk)
        rows = [(i, k, c) for c, (_, members) in enumerate(chunk) for i in members for k in range(len(replies))]
        rows.sort(key=lambda r: len(prompts[r[0]]) - prefix_length[chunk[r[2]][0]] + len(reply_ids[r[1]]))
        for part in batches(rows, batch_size):
            tails = [prompts[i][prefix_length[chunk[c][0]]:] for i, _, c in part]
            log_likelihoods = _continuation_log_likelihoods(
                engine, prefixes, [c for _, _, c in part], tails, [reply_ids[k] for _, k, _ in part],
                [expert_identities(identities[i], conditioning) for i, _, _ in part])
            for (i, k, _), value in zip(part, log_likelihoods):
                scores[i, k] = value
            if bar is not None:
                bar.update(len(part) / len(replies))
    return torch.softmax(scores, dim=-1), scores


def _continuation_log_likelihoods(engine, prefixes: dict, prefix_rows: list[int], tails: list[list[int]],
                                  continuations: list[list[int]], expert_rows: list[IdentitySet]) -> list[float]:
    """Per row, the mean log-probability of `continuation` after prefix + tail: one forward pass over
    tail + continuation, with each row's prefix keys and values as the cache."""
    longest = max(map(len, continuations))
    # the last `longest` + 1 positions predict every continuation token (a tail is never empty)
    logits = logits_after_prefixes(engine, prefixes, prefix_rows, [t + c for t, c in zip(tails, continuations)],
                                   expert_rows, keep=longest + 1)
    log_probs = torch.log_softmax(logits.float(), dim=-1).cpu()
    values = []
    for j, continuation in enumerate(continuations):
        n = len(continuation)
        predicted = log_probs[j, -n - 1:-1]  # position t predicts token t + 1
        values.append(float(predicted.gather(-1, torch.tensor(continuation)[:, None]).mean()))
    return values


def answer_by_likelihood(engine, scale: Scale, identity_sets: Sequence[IdentitySet], conditioning: Conditioning,
                         batch_size: int = 16, bar=None) -> list[Answer]:
    """Every identity set answers every item; one batched pass over all (set, item, option) rows."""
    pairs = [(s, i) for s in identity_sets for i in range(len(scale.items))]
    conversations = [[{"role": "user", "content": likelihood_question(scale.items[i].text)}] for _, i in pairs]
    probabilities, scores = option_distribution(engine, conversations, [s for s, _ in pairs], conditioning,
                                                option_replies(), batch_size, bar)
    answers = []
    for (s, i), p, ll in zip(pairs, probabilities.tolist(), scores.tolist()):
        expected = sum(k * pk for k, pk in enumerate(p, 1))
        detail = {f"p{k}": round(pk, 6) for k, pk in enumerate(p, 1)}
        detail |= {f"loglik{k}": round(v, 6) for k, v in enumerate(ll, 1)}
        answers.append(Answer(s, i, scale.items[i], expected, detail))
    return answers
