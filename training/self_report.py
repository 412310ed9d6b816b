"""Self-report training records: an identity set answers statements about itself, as its identities would.

    python training/self_report.py --out runs/self_report.jsonl [--records 480] [--seed 0] [--formats ...]

Why: the experts learn from dialogues, and dialogues never ask a character how accurately a statement
describes it, so a questionnaire put to the experts barely moves (shifts under 0.14 on the 1-5 scale). These
records teach each expert to report its own pole or field. The statements are ours
(`training/data/self_report_statements.json`, none of them an evaluation bank item), keyed `+` or `-` for a
trait and filed under a field for a profession; the answer follows from the set:

- a statement keyed toward the set's pole ("+" for `_high`, "-" for `_low`): very or moderately accurate,
  and the other way: very or moderately inaccurate;
- a statement of the set's own field: accurate; of another field: inaccurate.

Only identities in the set are asked about (a trait the set leaves open has no answer to teach). A record
holds one to three questions in one of the questionnaire formats the app asks in (option words, a digit) or
in a conversational one, so nothing teaches one phrasing only. Or, in the `self_description` format, one
open request of ours to describe itself, answered in the character's own words: a statement keyed toward
each of its identities (its pole, or its own field), one to three for a single identity. What a rating
teaches as a number, this teaches as what the character would say. `--formats` picks the formats a file
draws from. Sets have one to `--max_identities` identities, drawn by size (half of them single identities,
which is how the banks are put). Records have the trainer's format plus `synthesis` (backend `self_report`,
job id, seed, format, statements file and version), and go to the trainer as `--extra_data`, never into a
held-out split. Beside the file, `<out>.summary.json` holds the command that remakes it.
"""
from __future__ import annotations

import argparse
import json
import random
import sys
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hirpf.eval.digit_logits import likert_question
from hirpf.eval.option_likelihood import likelihood_question, option_replies
from hirpf.identities import PROFESSIONS, TRAITS, IdentitySet, all_combinations, trait_of
from hirpf.labels import SCALE_OPTIONS

STATEMENTS = Path(__file__).resolve().parent / "data" / "self_report_statements.json"
VERSION = 2  # 2: the self_description format
# Open requests of ours for the self_description format, none of them a request of the statement judge's
# (`hirpf.eval.statement_likelihood.STATEMENT_REQUESTS`; a test checks that none shares more than half its
# content words with one of those).
SELF_DESCRIPTION_REQUESTS = (
    "How would your friends describe you?",
    "Introduce yourself in a few sentences.",
    "If you had to sum yourself up, what would you say?",
    "What should I know about you before we start?",
    "What are you like, honestly?",
    "Say a little about the way you are.",
)
SIZE_WEIGHTS = {1: 0.5, 2: 0.3, 3: 0.2}  # by number of identities; sizes past 3 share the last weight


@dataclass(frozen=True)
class Statement:
    text: str
    subject: str  # a trait (AGR ...) or a profession (Doctor ...)
    keyed: str | None  # "+" or "-" for a trait, None for a profession


def load_statements(path: Path = STATEMENTS) -> list[Statement]:
    """Every statement in the file; a trait or field outside the identity rules is an error naming it."""
    data = json.loads(Path(path).read_text())
    out = []
    for trait, keyed in data["traits"].items():
        if trait not in TRAITS:
            raise ValueError(f"{path}: unknown trait {trait!r}; expected one of {', '.join(TRAITS)}")
        for key, texts in keyed.items():
            if key not in ("+", "-"):
                raise ValueError(f"{path}: trait {trait} keyed {key!r}; expected '+' or '-'")
            out += [Statement(t, trait, key) for t in texts]
    for field, texts in data["professions"].items():
        if field not in PROFESSIONS:
            raise ValueError(f"{path}: unknown profession {field!r}; expected one of {', '.join(PROFESSIONS)}")
        out += [Statement(t, field, None) for t in texts]
    return out


def agrees(identities: IdentitySet, statement: Statement) -> bool:
    """Whether the set would call the statement accurate: keyed toward its pole of that trait, or of its field."""
    if statement.keyed is None:
        return statement.subject == identities.profession
    pole = next(p for p in identities.traits if trait_of(p) == statement.subject)
    return pole.endswith("_high") == (statement.keyed == "+")


def answer_option(identities: IdentitySet, statement: Statement, rng: random.Random) -> int:
    """1..5 (very inaccurate .. very accurate): how the set would rate the statement."""
    strong = rng.random() < 0.6
    return (5 if strong else 4) if agrees(identities, statement) else (1 if strong else 2)


def conversational_question(statement: str) -> str:
    options = "; ".join(SCALE_OPTIONS)
    return (f"Someone who knows you well says this sounds like you: \"{statement}\" "
            f"Is that right? Say how accurate it is ({options}).")


# (question for a statement, reply for an option 1..5)
RATING_FORMATS = {
    "option_words": (likelihood_question, lambda k: option_replies()[k - 1]),
    "digit": (likert_question, str),
    "conversational": (conversational_question, lambda k: option_replies()[k - 1]),
}
FORMATS = (*RATING_FORMATS, "self_description")


def statements_for(identities: IdentitySet, statements: list[Statement]) -> list[Statement]:
    """The statements the set has an answer to: its traits' and, with a profession, every field's."""
    traits = {trait_of(p) for p in identities.traits}
    return [s for s in statements
            if (s.keyed is not None and s.subject in traits) or (s.keyed is None and identities.profession)]


def draw_set(rng: random.Random, by_size: dict[int, list[IdentitySet]], max_identities: int) -> IdentitySet:
    sizes = [n for n in sorted(by_size) if n <= max_identities]
    weights = [SIZE_WEIGHTS.get(n, SIZE_WEIGHTS[max(SIZE_WEIGHTS)]) for n in sizes]
    return rng.choice(by_size[rng.choices(sizes, weights)[0]])


def about(member: str, identities: IdentitySet, statements: list[Statement]) -> list[Statement]:
    """The statements that ask about one member of the set: its trait's, or every field's for its profession."""
    return [s for s in statements_for(identities, statements)
            if s.subject == trait_of(member) or (s.keyed is None and member == identities.profession)]


def rated_turns(identities: IdentitySet, statements: list[Statement], form: str, rng: random.Random) -> list[dict]:
    """One to three statements put to the set in a rating format, each answered as the set would rate it."""
    question, reply = RATING_FORMATS[form]
    dialog = []
    for _ in range(rng.randint(1, 3)):
        # the member asked about is drawn first, so each identity of the set is asked about equally often
        statement = rng.choice(about(rng.choice(identities.names), identities, statements))
        dialog += [{"role": "user", "content": question(statement.text)},
                   {"role": "assistant", "content": reply(answer_option(identities, statement, rng))}]
    return dialog


def described_turns(identities: IdentitySet, statements: list[Statement], rng: random.Random) -> list[dict]:
    """One open request, answered with a statement the set agrees with for each of its members, in a random
    order (a composed character shows every identity), then more drawn from the members up to one to three."""
    members = rng.sample(identities.names, len(identities.names))
    members += [rng.choice(identities.names) for _ in range(rng.randint(1, 3) - len(members))]
    said = []
    for member in members:
        statement = rng.choice([s for s in about(member, identities, statements) if agrees(identities, s)])
        if statement.text not in said:
            said.append(statement.text)
    return [{"role": "user", "content": rng.choice(SELF_DESCRIPTION_REQUESTS)},
            {"role": "assistant", "content": " ".join(said)}]


def records(count: int, seed: int, max_identities: int = 3, statements: list[Statement] | None = None,
            formats: tuple[str, ...] = FORMATS) -> list[dict]:
    if count < 1 or not 1 <= max_identities <= 6:
        raise ValueError(f"--records must be >= 1 and --max_identities 1-6 (got {count} and {max_identities})")
    if not formats or set(formats) - set(FORMATS):
        raise ValueError(f"--formats must name one or more of {', '.join(FORMATS)} "
                         f"(got {', '.join(formats) or 'none'})")
    statements = statements if statements is not None else load_statements()
    rng = random.Random(seed)
    by_size: dict[int, list[IdentitySet]] = {}
    for s in all_combinations():
        by_size.setdefault(len(s), []).append(s)
    out = []
    for number in range(count):
        identities = draw_set(rng, by_size, max_identities)
        form = rng.choice(sorted(formats))
        dialog = (described_turns(identities, statements, rng) if form == "self_description" else
                  rated_turns(identities, statements, form, rng))
        out.append({"dialog": dialog, "active_adapters": list(identities.names),
                    "synthesis": {"backend": "self_report", "job": f"self_report-{seed}-{number}", "seed": seed,
                                  "format": form, "statements": STATEMENTS.name, "version": VERSION}})
    return out


def main(argv=None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="JSONL file to write (replaced)")
    ap.add_argument("--records", type=int, default=480)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max_identities", type=int, default=3)
    ap.add_argument("--formats", default=",".join(FORMATS), help=f"comma-separated, from {', '.join(FORMATS)}")
    args = ap.parse_args(argv)
    try:
        made = records(args.records, args.seed, args.max_identities,
                       formats=tuple(f.strip() for f in args.formats.split(",") if f.strip()))
    except ValueError as e:
        raise SystemExit(str(e)) from None
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps(r) + "\n" for r in made))
    # the command that remakes the file, every option spelled out (a model card trained on it quotes this)
    command = (f"python training/self_report.py --out {out} --records {args.records} --seed {args.seed} "
               f"--max_identities {args.max_identities} --formats {args.formats}")
    summary = {"backend": "self_report", "records": len(made), "command": command}
    out.with_name(out.name + ".summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"{len(made)} self-report records -> {out}")
    return out


if __name__ == "__main__":
    main()
