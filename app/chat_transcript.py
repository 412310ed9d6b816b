"""A chat session's record, and how the chatbot shows it.

The record (kept in a per-session `gr.State`) is a list of turns. Assistant turns carry the identity set,
the conditioning mode and the seed they were generated with, so changing the panel mid-conversation leaves
earlier turns as they were. The chatbot shows each assistant turn as a small collapsed caption (a Gradio
"thought" message: `metadata.title` says the identity in words) followed by the reply.
"""
from __future__ import annotations

from hirpf.identities import IdentitySet
from hirpf.prompts import Conditioning

CONDITIONING_LABELS = {
    Conditioning.EXPERTS_AND_PROMPT: "experts + prompt",
    Conditioning.EXPERTS: "experts only",
    Conditioning.PROMPT: "prompt only",
}
STREAMING, DONE, STOPPED = "streaming", "done", "stopped"


def user_turn(text: str) -> dict:
    return {"role": "user", "content": text}


def assistant_turn(identities: IdentitySet, conditioning: Conditioning, seed: int | None) -> dict:
    """An empty reply about to stream, stamped with what generates it."""
    return {"role": "assistant", "content": "", "identities": list(identities), "described": identities.describe(),
            "conditioning": conditioning.value, "seed": seed, "status": STREAMING, "seconds": 0.0}


def model_history(conversation: list[dict]) -> list[dict]:
    """What the model sees: roles and texts only."""
    return [{"role": t["role"], "content": t["content"]} for t in conversation]


def mark_stopped(conversation: list[dict]) -> list[dict]:
    """The record with any reply still streaming marked as stopped."""
    return [dict(t, status=STOPPED) if t.get("status") == STREAMING else t for t in conversation]


def caption(turn: dict) -> dict:
    """The collapsed line above a reply: identity in words as the title, the exact set inside."""
    names = ", ".join(turn["identities"]) or "none"
    details = f"identities: {names} · conditioning: {turn['conditioning']}"
    if turn.get("seed") is not None:
        details += f" · seed {turn['seed']}"
    if turn.get("left_out"):
        details += f" · {turn['left_out']} earlier turns left out (context {turn['context']} tokens)"
    return {
        "role": "assistant",
        "content": details,
        "metadata": {
            "title": f"Identity: {turn['described']}",
            "log": CONDITIONING_LABELS[Conditioning(turn["conditioning"])],
            "status": "pending" if turn["status"] == STREAMING else "done",
            "duration": round(turn["seconds"], 1),
        },
    }


def render(conversation: list[dict]) -> list[dict]:
    """Chatbot messages for a record."""
    messages: list[dict] = []
    for turn in conversation:
        if turn["role"] == "user":
            messages.append(user_turn(turn["content"]))
            continue
        messages.append(caption(turn))
        text = turn["content"]
        if turn["status"] == STOPPED:
            text = f"{text} *(stopped)*".strip()
        messages.append({"role": "assistant", "content": text})
    return messages
