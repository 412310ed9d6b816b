"""The derived views of a dialogue (`hirpf.transcripts`): anonymized for annotators and referees, reversed
for the interviewer; what the anonymized view redacts and what it keeps."""
import re

import pytest

from hirpf.identities import ALIASES, ALL_IDENTITIES
from hirpf.transcripts import REDACTED, anonymize, as_text, reverse, speaker_of

CODES = list(ALL_IDENTITIES) + list(ALIASES)


def shown(text: str, redact=()) -> str:
    return anonymize([{"role": "assistant", "content": text}], redact)[0]["text"]


def test_speakers_follow_who_spoke_first_and_system_turns_go():
    turns = [{"role": "system", "content": "You are AGR_high."}, {"role": "assistant", "content": "Hi."},
             {"role": "user", "content": "Hello."}]
    assert anonymize(turns) == [{"speaker": "X", "text": "Hi."}, {"speaker": "Y", "text": "Hello."}]
    assert speaker_of(turns, "assistant") == "X" and speaker_of(turns, "user") == "Y"
    assert reverse(turns) == [{"role": "user", "content": "Hi."}, {"role": "assistant", "content": "Hello."}]
    assert as_text(anonymize(turns)) == "X: Hi.\nY: Hello."


@pytest.mark.parametrize("text", ["loaded lora_AGR_high today", "flag -EXT_high set", "the experts-OPE_low run",
                                  "AGR_high-expert", "EMS_low_lora.safetensors", "see runs/NEU_high/ok",
                                  "(Doctor_AGR_high)", "agr_HIGH_v2"])
def test_identity_codes_joined_to_other_names_are_redacted(text):
    """Issue 12 item 9: a code glued to `_` or `-` reached the annotator."""
    out = shown(text)
    assert REDACTED in out
    assert not [code for code in CODES if "_" in code and re.search(re.escape(code), out, re.IGNORECASE)]


@pytest.mark.parametrize("model_id", ["HuggingFaceTB/SmolLM2-135M-Instruct", "meta-llama/Llama-2-7b-chat-hf",
                                      "Qwen/Qwen2.5-0.5B-Instruct", "/models/Llama-2-7b-chat/checkpoint-500",
                                      "https://huggingface.co/HuggingFaceTB/SmolLM2-135M-Instruct",
                                      "SmolLM2-135M-Instruct", "gpt-4o-mini-2024-07-18"])
def test_whole_model_ids_and_paths_are_redacted(model_id):
    """Issue 12 item 9: "HuggingFaceTB/[redacted]-135M-Instruct" kept the organisation and the size."""
    assert shown(f"I run on {model_id}, honestly.") == f"I run on {REDACTED}, honestly."
    assert shown(f"({model_id})") == f"({REDACTED})"
    assert shown(f"It is {model_id}.") == f"It is {REDACTED}."


def test_extra_names_are_redacted_whole_too():
    assert shown("I am acme-chat-7b-v2/step-9 here", ["acme-chat-7b-v2"]) == f"I am {REDACTED} here"


def test_words_a_persona_may_say_stay():
    text = ("I'm a doctor and an artist at heart: high energy, low patience, well-known for my art. "
            "Open-minded? Yes - and agreeable, mostly (high-spirited, even).")
    assert shown(text) == text
