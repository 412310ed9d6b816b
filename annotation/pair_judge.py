"""An LLM judge on a pair study's pairs, through any OpenAI-compatible endpoint (`hirpf.llm_client`).

Each pair is asked twice (`hirpf.eval.pair_question.PairJudge`, which `python -m hirpf.eval discriminate`
shares), with the replies in both orders (as MT-Bench does): a judge that prefers whatever is shown first
would otherwise look like a signal. When the two answers disagree, the vote is a
tie. Its answers are stored as the judge's (`pair_judge_votes`: the combined choice and what it said in
each order, with the raw replies) and compared with the human majority in `annotation.pair_report`.

The endpoint settings are the interview judge's (`--judge_base_url`, else `$OPENAI_BASE_URL`; key from
`$OPENAI_API_KEY`; `--judge_model`; `--judge_timeout`; `--judge_cache_dir`, so a rerun is answered from
disk). A pair judged before by the same judge is not asked again. A reply that is not the JSON asked for
(after the client's resampling) leaves the pair unjudged and is counted as failed; an endpoint that refuses
(a wrong key or model) stops the run.
"""
from __future__ import annotations

import argparse
from concurrent.futures import ThreadPoolExecutor

from sqlalchemy import select
from sqlalchemy.orm import aliased

from annotation.pair_studies import study_row
from annotation.store import MAX_NAME_CHARS, checked_text
from db import Database
from db.models import PairJudgeVote, PairReply, PairStudy, StudyPair
from hirpf.eval.interview import add_endpoint_arguments, endpoint_client
from hirpf.eval.pair_question import PairJudge
from hirpf.llm_client import MalformedReply

__all__ = ["PairJudge", "add_judge_arguments", "judge_from_args", "judge_study"]


def _stored(shown_first: str, shown: str) -> str:
    if shown == "tie":
        return "tie"
    return shown_first if shown == "A" else {"a": "b", "b": "a"}[shown_first]


def judge_study(db: Database, study: str, judge: PairJudge) -> dict:
    """Judge every pair of the study this judge has not judged; returns counts judged, known, failed."""
    name = checked_text(judge.name, "judge name", MAX_NAME_CHARS, required=True)
    with db.read() as session:
        found = study_row(session, study)
        ties = session.get(PairStudy, found.id).ties_allowed
        reply_a, reply_b = aliased(PairReply), aliased(PairReply)
        rows = session.execute(
            select(StudyPair.id, StudyPair.question, reply_a.prompt, reply_a.text, reply_b.text)
            .join(reply_a, reply_a.id == StudyPair.reply_a_id).join(reply_b, reply_b.id == StudyPair.reply_b_id)
            .where(StudyPair.study_id == found.id, reply_a.text.is_not(None), reply_b.text.is_not(None))
            .order_by(StudyPair.position)).all()
        known = set(session.scalars(select(PairJudgeVote.pair_id).join(StudyPair).where(
            StudyPair.study_id == found.id, PairJudgeVote.judge == name)))
    todo = [row for row in rows if row[0] not in known]

    def one(row) -> bool:
        pair_id, question, prompt, a, b = row
        try:
            a_first, raw_a = judge.ask(prompt, question, a, b, ties)
            b_first, raw_b = judge.ask(prompt, question, b, a, ties)
        except MalformedReply:
            return False
        said_a, said_b = _stored("a", a_first), _stored("b", b_first)
        choice = said_a if said_a == said_b else "tie"
        db.write(lambda session: session.add(PairJudgeVote(
            pair_id=pair_id, judge=name, choice=choice, choice_a_first=said_a, choice_b_first=said_b,
            raw_replies=[raw_a, raw_b])))
        return True

    with ThreadPoolExecutor(max_workers=max(1, judge.workers)) as pool:
        results = list(pool.map(one, todo))
    return {"judged": sum(results), "known": len(rows) - len(todo), "failed": results.count(False)}


def add_judge_arguments(parser: argparse.ArgumentParser) -> None:
    add_endpoint_arguments(parser)
    parser.add_argument("--judge_name", default=None, help="how the report names it (default: llm:<model>)")
    parser.add_argument("--judge_workers", type=int, default=4, help="pairs in flight at once")


def judge_from_args(args) -> PairJudge:
    if args.judge_workers < 1:
        raise ValueError(f"--judge_workers must be at least 1, got {args.judge_workers}")
    return PairJudge(endpoint_client(args, args.judge_model), args.judge_name or f"llm:{args.judge_model}",
                     args.judge_workers)
