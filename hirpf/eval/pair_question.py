"""The pair-study judge's question: an LLM on an OpenAI-compatible endpoint (`hirpf.llm_client`) reads one
message and two replies to it and answers which reply a question picks, as JSON. The pair studies
(`annotation.pair_judge`) and the discrimination evaluation (`hirpf.eval.discriminate`) both ask it, each
pair in both orders (a judge that prefers whatever is shown first must not look like a signal).
"""
from __future__ import annotations

import json
from dataclasses import dataclass

from ..llm_client import ChatClient

JUDGE_SYSTEM = ("You compare two replies to the same message for a study of how replies come across. "
                "Reply with JSON only.")
JUDGE_PROMPT = ("Message:\n{prompt}\n\nReply A:\n{first}\n\nReply B:\n{second}\n\nQuestion: {question}\n\n"
                "Reply with a JSON object of the form {{\"answer\": X}}, where X is {choices}.")


@dataclass
class PairJudge:
    client: ChatClient
    name: str
    workers: int = 4

    def ask(self, prompt: str, question: str, first: str, second: str, ties_allowed: bool) -> tuple[str, str]:
        """("A" | "B" | "tie", the raw JSON answer) for the replies in the order shown."""
        allowed = ("A", "B", "tie") if ties_allowed else ("A", "B")
        choices = '"A", "B" or "tie" (about the same)' if ties_allowed else '"A" or "B"'
        messages = [{"role": "system", "content": JUDGE_SYSTEM},
                    {"role": "user", "content": JUDGE_PROMPT.format(prompt=prompt, first=first, second=second,
                                                                    question=question, choices=choices)}]

        def parse(reply: dict) -> tuple[str, str]:
            answer = reply.get("answer")
            if answer not in allowed:
                raise ValueError(f"answer must be one of {allowed}, got {answer!r:.40}")
            return answer, json.dumps(reply, ensure_ascii=False)

        return self.client.complete_json(messages, parse, temperature=0.0, max_tokens=20)
