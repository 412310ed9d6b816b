"""Blind pairwise studies: what a study asks, which replies it needs, and storing them (`db.models.PairStudy`).

    conditions = [parse_condition("experts+prompt@1.0"), parse_condition("prompt")]
    plan = plan_pairs("discrimination", poles(), conditions, prompts)   # no model needed
    study = save_study(db, "poles", plan)      # once; again with the same plan adds only what is missing
    # replies: annotation.pair_generation fills the NULL ones; pairs made elsewhere: import_pairs(db, ...)

Two designs (`PAIR_DESIGNS`):

- *discrimination*: one condition, two opposite identities (a trait's two poles; two professions), "which
  reply shows more <trait>?" / "which speaker sounds like <profession>?", with a right answer per pair;
  scored as accuracy per condition against chance (0.5).
- *preference*: one identity set under two conditions, "which reply sounds more like <identity>?", ties
  allowed by default; scored with Bradley-Terry per condition.

A pair stores its two replies in a fixed order (a, b); annotators see them in an order of their own
(`annotation.pair_tasks`). Conditions, identities and models never reach an annotator.
"""
from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import dataclass, field, replace
from typing import Sequence

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from annotation.store import StoreError, checked_text
from annotation.study_settings import read_setting, write_setting
from db import Database
from db.models import PAIR_DESIGNS, PairCondition, PairReply, PairStudy, StudyPair
from hirpf.identities import PROFESSIONS, TRAIT_WORDS, TRAITS, IdentityError, IdentitySet, label
from hirpf.prompts import Conditioning

MAX_LABEL_CHARS = PairCondition.__table__.c.label.type.length
MAX_MODEL_CHARS = PairCondition.__table__.c.base_model.type.length
MAX_STUDY_NAME_CHARS = PairStudy.__table__.c.name.type.length
# A pair's question is part of a unique index; PostgreSQL refuses index rows over about 2700 bytes, so the
# question is kept well below that (500 characters are at most 2000 bytes of UTF-8).
MAX_QUESTION_CHARS = 500
DEFAULT_QUESTIONS = {
    "poles": "Which reply shows more {target}?",
    "professions": "Which speaker sounds more like {target}?",
    "preference": "Which reply sounds more like {target}?",
}


class PairStudyError(StoreError):
    """A study, condition or pair that cannot be stored as given; nothing was changed."""


@dataclass(frozen=True)
class Condition:
    """How replies are made: `experts+prompt@1.5` is conditioning experts+prompt with every identity at
    strength 1.5. `base_model`/`checkpoint`/`seed` complete the provenance (for imported pairs: whatever the
    file says)."""

    label: str
    conditioning: str | None = None
    strength: float | None = None
    base_model: str | None = None
    checkpoint: str | None = None
    seed: int | None = None

    def identities(self, names: Sequence[str]) -> IdentitySet:
        identities = IdentitySet.parse(list(names))
        return identities if self.strength is None else identities.with_strengths(self.strength)

    def provenance(self) -> dict:
        return {"conditioning": self.conditioning, "strength": self.strength, "base_model": self.base_model,
                "checkpoint": self.checkpoint, "seed": self.seed}


def parse_condition(text: str, **provenance) -> Condition:
    """`conditioning[@strength]`, e.g. `experts+prompt@1.0`, `prompt`; ValueError naming what is wrong."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError("condition: expected text like experts+prompt@1.0 or prompt")
    conditioning, _, strength_text = text.strip().partition("@")
    mode = Conditioning.parse(conditioning.strip())
    strength = None
    if strength_text:
        try:
            strength = float(strength_text)
            IdentitySet.parse("AGR_high").with_strengths(strength)  # the one range check there is
        except (ValueError, IdentityError) as error:
            raise ValueError(f"condition {text!r}: strength {strength_text!r}: {error}") from None
        if not mode.uses_experts:
            raise ValueError(f"condition {text!r}: a strength scales the experts, which {mode.value!r} "
                             "does not use")
    return Condition(label=text.strip(), conditioning=mode.value, strength=strength, **provenance)


@dataclass(frozen=True)
class PlannedReply:
    condition: Condition
    identities: tuple[str, ...]  # canonical names; strengths come from the condition
    prompt: str
    text: str | None = None      # known for imported pairs, generated otherwise
    source_ref: str | None = None

    @property
    def key(self) -> str:
        return hashlib.sha256(json.dumps([list(self.identities), self.prompt], ensure_ascii=False)
                              .encode()).hexdigest()


@dataclass(frozen=True)
class PlannedPair:
    a: PlannedReply
    b: PlannedReply
    question: str
    expected: str | None  # "a"/"b" for discrimination


@dataclass(frozen=True)
class StudyPlan:
    design: str
    question: str  # the template, `{target}` where the pair's target goes
    ties_allowed: bool
    conditions: tuple[Condition, ...]
    pairs: tuple[PlannedPair, ...] = field(default=())


def poles() -> list[tuple[str, str]]:
    """Each trait's (high, low) poles: the discrimination pairs of `--poles`."""
    return [(f"{trait}_high", f"{trait}_low") for trait in TRAITS]


def professions() -> list[tuple[str, str]]:
    """Every ordered (asked about, other) pair of professions: each profession is asked about against each
    other one."""
    return list(itertools.permutations(PROFESSIONS, 2))


def plan_pairs(design: str, identities: Sequence, conditions: Sequence[Condition], prompts: Sequence[str],
               question: str | None = None, ties_allowed: bool | None = None) -> StudyPlan:
    """Every pair a study needs. `identities`: for discrimination, (target, other) identity-name pairs
    (`poles()`, `professions()`); for preference, identity sets (each compared under every two conditions)."""
    if design not in PAIR_DESIGNS:
        raise ValueError(f"design: unknown {design!r}; expected one of {', '.join(PAIR_DESIGNS)}")
    if not prompts:
        raise ValueError("prompts: none given")
    if not conditions:
        raise ValueError("conditions: none given")
    labels = [c.label for c in conditions]
    if len(set(labels)) != len(labels):
        raise ValueError(f"conditions: {labels} names one twice")
    pairs = []
    if design == "discrimination":
        if not identities or not all(isinstance(i, tuple) and len(i) == 2 for i in identities):
            raise ValueError("discrimination needs (target, other) pairs of opposite identities: --poles or "
                             "--professions")
        template = question or (DEFAULT_QUESTIONS["professions"] if identities[0][0] in PROFESSIONS
                                else DEFAULT_QUESTIONS["poles"])
        for condition, (target, other), prompt in itertools.product(conditions, identities, prompts):
            pairs.append(PlannedPair(PlannedReply(condition, (target,), prompt),
                                     PlannedReply(condition, (other,), prompt),
                                     fill_question(template, _discrimination_target(target)), "a"))
    else:
        if len(conditions) < 2:
            raise ValueError("preference compares conditions: give at least two --condition")
        template = question or DEFAULT_QUESTIONS["preference"]
        for names, prompt in itertools.product(identities, prompts):
            identity_set = IdentitySet.parse(names)
            for first, second in itertools.combinations(conditions, 2):
                pairs.append(PlannedPair(PlannedReply(first, identity_set.names, prompt),
                                         PlannedReply(second, identity_set.names, prompt),
                                         fill_question(template, identity_set.describe()), None))
    return StudyPlan(design, template, design == "preference" if ties_allowed is None else ties_allowed,
                     tuple(conditions), tuple(pairs))


def compared_pair_plan(identities: Sequence[str], conditions: tuple[Condition, Condition], prompt: str,
                       replies: tuple[str, str], source_refs: tuple[str | None, str | None] = (None, None)
                       ) -> StudyPlan:
    """One preference pair whose replies were made already (the Chat tab's Compare): `identities` answering
    `prompt` under the two conditions, with `replies` (and `source_refs`, each reply's provenance beyond its
    condition) in the conditions' order. The plan `plan_pairs` makes, replies filled in: `save_study` stores
    it as it stores a build's or an import's."""
    if not identities:
        raise ValueError("identities: a preference pair asks which reply sounds more like an identity set; "
                         "choose at least one identity")
    plan = plan_pairs("preference", [list(identities)], list(conditions), [prompt])
    (pair,) = plan.pairs
    a, b = (replace(side, text=text, source_ref=ref)
            for side, text, ref in zip((pair.a, pair.b), replies, source_refs))
    return replace(plan, pairs=(replace(pair, a=a, b=b),))


def _discrimination_target(name: str) -> str:
    """What a discrimination question asks about: the trait ("agreeableness") or the profession ("a doctor")."""
    return label(name) if name in PROFESSIONS else TRAIT_WORDS[name.split("_")[0]]


def fill_question(template: str, target: str) -> str:
    if "{target}" not in template:
        return template
    return template.replace("{target}", target)


# --- storing ---------------------------------------------------------------------------------------------
def save_study(db: Database, name: str, plan: StudyPlan, *, new_only: bool = False) -> str:
    """Store the study and every planned condition, reply and pair it lacks, in one transaction; returns the
    study's public id. A study of that name stored before must agree on design, question, ties and each
    condition's provenance (a rerun of the same build), else nothing is stored; `new_only` refuses any
    existing study of that name (imports)."""
    name = checked_text(name, "study name", MAX_STUDY_NAME_CHARS, required=True)
    question = checked_text(plan.question, "question", MAX_QUESTION_CHARS, required=True)
    for pair in plan.pairs:
        checked_text(pair.question, "question", MAX_QUESTION_CHARS, required=True)
        for reply in (pair.a, pair.b):
            checked_text(reply.prompt, "prompt", required=True, strip=False)
            if reply.text is not None:
                checked_text(reply.text, "reply", strip=False)

    def run(session: Session) -> str:
        study = session.scalar(select(PairStudy).where(PairStudy.name == name))
        if study is None:
            study = PairStudy(name=name, design=plan.design, question=question, ties_allowed=plan.ties_allowed)
            session.add(study)
            session.flush()
        elif new_only:
            raise PairStudyError(f"study {name!r} exists already: choose another name")
        else:
            stored = (study.design, study.question, study.ties_allowed)
            if stored != (plan.design, question, plan.ties_allowed):
                raise PairStudyError(f"study {name!r} exists with design, question and ties {stored}, not "
                                     f"{(plan.design, question, plan.ties_allowed)}: choose another name")
        conditions = {c.label: _condition_row(session, study, c) for c in plan.conditions}
        replies: dict[tuple[int, str], PairReply] = {}
        for reply in (r for pair in plan.pairs for r in (pair.a, pair.b)):
            replies.setdefault((conditions[reply.condition.label].id, reply.key),
                               _reply_row(session, conditions[reply.condition.label], reply))
        session.flush()
        known = set(session.execute(select(StudyPair.reply_a_id, StudyPair.reply_b_id, StudyPair.question)
                                    .where(StudyPair.study_id == study.id)).all())
        position = session.scalar(select(func.max(StudyPair.position)).where(StudyPair.study_id == study.id)) or 0
        for pair in plan.pairs:
            a = replies[conditions[pair.a.condition.label].id, pair.a.key]
            b = replies[conditions[pair.b.condition.label].id, pair.b.key]
            if (a.id, b.id, pair.question) in known:
                continue
            position += 1
            known.add((a.id, b.id, pair.question))
            session.add(StudyPair(study_id=study.id, position=position, reply_a_id=a.id, reply_b_id=b.id,
                                  question=pair.question, expected=pair.expected))
        return study.public_id

    return db.write(run)


def _condition_row(session: Session, study: PairStudy, condition: Condition) -> PairCondition:
    checked_text(condition.label, "condition", MAX_LABEL_CHARS, required=True)
    for what in ("base_model", "checkpoint"):
        value = getattr(condition, what)
        if value is not None:
            checked_text(value, what, MAX_MODEL_CHARS)
    row = session.scalar(select(PairCondition).where(PairCondition.study_id == study.id,
                                                     PairCondition.label == condition.label))
    if row is None:
        row = PairCondition(study_id=study.id, label=condition.label, **condition.provenance())
        session.add(row)
        session.flush()
    elif condition_of(row).provenance() != condition.provenance():
        raise PairStudyError(f"condition {condition.label!r} of study {study.name!r} was stored with "
                             f"{condition_of(row).provenance()}, not {condition.provenance()}")
    return row


def _reply_row(session: Session, condition: PairCondition, reply: PlannedReply) -> PairReply:
    row = session.scalar(select(PairReply).where(PairReply.condition_id == condition.id,
                                                 PairReply.key == reply.key))
    if row is None:
        row = PairReply(condition_id=condition.id, identities=list(reply.identities), prompt=reply.prompt,
                        key=reply.key, text=reply.text, source_ref=reply.source_ref)
        session.add(row)
    elif reply.text is not None and row.text is not None and row.text != reply.text:
        raise PairStudyError(f"condition {condition.label!r} has two different replies to one prompt under "
                             f"{'+'.join(reply.identities) or 'no identity'}")
    return row


def condition_of(row: PairCondition) -> Condition:
    return Condition(row.label, row.conditioning, row.strength, row.base_model, row.checkpoint, row.seed)


def study_row(session: Session, name: str) -> PairStudy:
    """A study by its name or, for what a browser holds, its public id."""
    study = session.scalar(select(PairStudy).where(or_(PairStudy.name == name, PairStudy.public_id == name)))
    if study is None:
        known = list(session.scalars(select(PairStudy.name).order_by(PairStudy.id)))
        raise PairStudyError(f"no study {name!r}; stored: {', '.join(known) or 'none'}")
    return study


def study_names(db: Database, design: str | None = None) -> list[str]:
    """The stored studies' names, oldest first; `design`: of that design only."""
    query = select(PairStudy.name).order_by(PairStudy.id)
    if design is not None:
        query = query.where(PairStudy.design == design)
    with db.read() as session:
        return list(session.scalars(query))



# --- the study annotators are shown -----------------------------------------------------------------------
ACTIVE_STUDY_KEY = "active_pair_study"  # in `study_settings`: the public id of the study being annotated


def activate_study(db: Database, study: str | None) -> None:
    """Show `study` (a name or public id) to annotators from now on; None: no pair study."""
    if study is None:
        write_setting(db, ACTIVE_STUDY_KEY, None)
        return
    with db.read() as session:
        public_id = study_row(session, study).public_id
    write_setting(db, ACTIVE_STUDY_KEY, public_id)


def active_study(db: Database) -> str | None:
    """The public id of the study annotators are shown, None when none is (or it was deleted)."""
    public_id = read_setting(db, ACTIVE_STUDY_KEY)
    if not isinstance(public_id, str):
        return None
    with db.read() as session:
        found = session.scalar(select(PairStudy.public_id).where(PairStudy.public_id == public_id))
    return found
