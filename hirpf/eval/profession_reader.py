"""A reader that names the profession of a reply from its words: multinomial naive Bayes over the assistant
turns of dialogues whose profession is known, with equal priors (the dialogues' mix of professions says
nothing about a reply's) and add-one smoothing; words it never read count for nothing.

Why not the base model's likelihoods of our profession descriptions (`reply_judge`): on the 15 held-out HIS
dialogues with a profession, that judge named 0.33 of them right, chance. This reader named 0.80 of the 187
HIS dialogues with a profession right (150), each read by a reader learnt from the others, on their first
assistant turns up to 48 tokens (as much as a generated reply):

    python -m hirpf.eval.profession_reader --folds 10      # stratified 10-fold cross-validation
    python -m hirpf.eval.profession_reader --read A.jsonl B.jsonl   # how often it names the profession of
                                                                   # dialogues we synthesized

`--read` learns it from the trainer's training split of `--data` (as `discriminate --judge reader` does) and
names the profession of each dialogue of each file (trainer-format records) that has one: whether a
synthesis (e.g. at one γ against another) puts its profession where a reader finds it.

`discriminate --judge reader` learns it from the trainer's training split, so the held-out split it is
validated on stays unseen; `tests/test_discriminate.py` checks it on dialogues of our own.
"""
from __future__ import annotations

import argparse
import math
import re
from collections import Counter, defaultdict
from typing import Callable, Sequence

from ..identities import PROFESSIONS
from .common import EvalError

WORD = re.compile(r"[a-z]+(?:'[a-z]+)?")


def words(text: str) -> list[str]:
    return WORD.findall(text.lower())


class ProfessionReader:
    def __init__(self, counts: dict[str, Counter]):
        self.vocabulary = set().union(*counts.values())
        totals = {p: sum(c.values()) + len(self.vocabulary) for p, c in counts.items()}
        # log P(word | profession), add-one smoothed over the vocabulary read
        self.log_p = {p: {w: math.log((c[w] + 1) / totals[p]) for w in self.vocabulary} for p, c in counts.items()}

    @classmethod
    def learn_training_split(cls, dialogues: Sequence, fraction: float, seed: int) -> "ProfessionReader":
        """From the trainer's training split of `dialogues` (its `--eval_fraction` and `--seed`): the held-out
        split, on which the reader is validated, stays unread."""
        from ..dialogues import holdout_split

        return cls.learn(holdout_split(dialogues, fraction, seed)[0])

    @classmethod
    def learn(cls, dialogues: Sequence) -> "ProfessionReader":
        """From `hirpf.dialogues.Dialogue`s: every assistant turn of each dialogue that holds a profession."""
        counts = {p: Counter() for p in PROFESSIONS}
        for dialogue in dialogues:
            profession = dialogue.identities.profession
            if profession:
                for turn in dialogue.turns:
                    if turn["role"] == "assistant":
                        counts[profession].update(words(turn["content"]))
        unread = [p for p, c in counts.items() if not c]
        if unread:
            raise EvalError(f"the profession reader needs dialogues of every profession; none for {', '.join(unread)}")
        return cls(counts)

    def scores(self, text: str) -> dict[str, float]:
        """Log-likelihood of `text`'s known words under each profession."""
        known = [w for w in words(text) if w in self.vocabulary]
        return {p: sum(log_p[w] for w in known) for p, log_p in self.log_p.items()}

    def name(self, text: str) -> str | None:
        """The most likely profession; None where the best are tied (a text of no word the reader knows)."""
        scores = self.scores(text)
        best = max(scores.values())
        named = [p for p in PROFESSIONS if scores[p] == best]
        return named[0] if len(named) == 1 else None


def cross_validate(dialogues: Sequence, evidence_text: Callable, folds: int) -> tuple[int, int]:
    """(named right, read) over the `dialogues` with a profession, each read (`evidence_text(dialogue)`) by a
    reader learnt from the other folds; folds stratified by profession (round-robin within each, in order)."""
    fold_of, seen = {}, defaultdict(int)
    for i, dialogue in enumerate(dialogues):
        profession = dialogue.identities.profession
        if profession:
            fold_of[i], seen[profession] = seen[profession] % folds, seen[profession] + 1
    right = 0
    for fold in range(folds):
        reader = ProfessionReader.learn([dialogues[i] for i, f in fold_of.items() if f != fold])
        right += sum(reader.name(evidence_text(dialogues[i])) == dialogues[i].identities.profession
                     for i, f in fold_of.items() if f == fold)
    return right, len(fold_of)


def read_files(reader: ProfessionReader, files: Sequence[str], evidence_text: Callable) -> dict:
    """Per file: of its dialogues with a profession, how many the reader names right, per profession, and
    what it named (a reader that names one profession for everything is read in the last)."""
    from ..dialogues import load_dialogues

    result = {}
    for path in files:
        try:
            dialogues, _ = load_dialogues(path, on_invalid="skip")
        except (OSError, ValueError) as err:
            raise EvalError(f"--read {path}: {err}") from None
        right, read, named = Counter(), Counter(), Counter()
        for dialogue in dialogues:
            profession = dialogue.identities.profession
            if profession:
                guess = reader.name(evidence_text(dialogue))
                read[profession] += 1
                right[profession] += guess == profession
                named[str(guess)] += 1
        if not read:
            raise EvalError(f"--read {path}: no dialogue with a profession")
        result[path] = {"named_right": sum(right.values()), "read": sum(read.values()),
                        "by_profession": {p: f"{right[p]} of {read[p]}" for p in PROFESSIONS if read[p]},
                        "named": dict(named)}
    return result


def main(argv=None) -> int:
    from transformers import AutoTokenizer

    from ..dialogues import load_dialogues
    from ..embedded import ensure_embedded_model
    from ..paths import his_file
    from .reply_judge import Evidence

    parser = argparse.ArgumentParser(description="The profession reader's stratified cross-validation, or how "
                                                 "often it names the profession of other dialogues (--read).")
    parser.add_argument("--data", default=str(his_file("identity_dialogues.json")))
    parser.add_argument("--folds", type=int, default=10)
    parser.add_argument("--reply_tokens", type=int, default=48, help="evidence per dialogue, as discriminate's")
    parser.add_argument("--read", nargs="+", default=None, metavar="JSONL",
                        help="name the professions of these files' dialogues, with a reader learnt from the "
                             "trainer's training split of --data")
    parser.add_argument("--validation_fraction", type=float, default=0.1, help="the trainer's --eval_fraction")
    parser.add_argument("--validation_seed", type=int, default=42, help="the trainer's --seed")
    args = parser.parse_args(argv)
    if args.folds < 2:
        parser.error(f"--folds must be at least 2 (each fold is read by a reader learnt from the others), "
                     f"got {args.folds}")
    tokenizer = AutoTokenizer.from_pretrained(ensure_embedded_model())
    dialogues, _ = load_dialogues(args.data, on_invalid="skip")

    def evidence_text(dialogue) -> str:
        return Evidence.from_dialogue(dialogue, tokenizer, args.reply_tokens).replies

    if args.read:
        reader = ProfessionReader.learn_training_split(dialogues, args.validation_fraction, args.validation_seed)
        try:
            for path, figures in read_files(reader, args.read, evidence_text).items():
                print(f"{path}: {figures['named_right']} of {figures['read']} named right "
                      f"({figures['named_right'] / figures['read']:.3f}; chance 0.333); by profession "
                      f"{figures['by_profession']}; named {figures['named']}")
        except EvalError as err:
            parser.error(str(err))
        return 0
    right, read = cross_validate(dialogues, evidence_text, args.folds)
    print(f"{args.folds}-fold cross-validation: {right} of {read} named right ({right / read:.3f}; chance 0.333)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
