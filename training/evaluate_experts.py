"""Do the trained experts carry identity? A likelihood test on held-out dialogues.

    python training/evaluate_experts.py --experts DIR [--data FILE] [--json OUT]

For each held-out dialogue, the assistant-token log-likelihood under its true identity set is compared with
each single-edit neighbour (a pole flipped, the profession changed or removed). A hit when the true set is
the most likely. Two conditionings on the same base model: the experts with the identity prompt, and the
identity prompt alone. The split is the trainer's (same data, --eval_fraction and --seed).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch
import torch.nn.functional as F

from hirpf.base_model import EMBEDDED
from hirpf.engine import Engine
from hirpf.identities import single_edit_neighbours
from hirpf.paths import his_file
from hirpf.prompts import Conditioning, expert_identities
from hirpf.routing import use_identities
from training.data import IGNORE, Collator, Dialogue, holdout_split, load_dialogues, tokenize

DEFAULT_DATA = his_file("identity_dialogues.json")


def assistant_log_likelihoods(model, tokenizer, dialogue, candidates, conditioning, max_length) -> list[float]:
    """Sum of log-probabilities of the assistant tokens, one value per candidate identity set (one batch)."""
    items = [tokenize(Dialogue(dialogue.turns, identities), tokenizer, conditioning, max_length)
             for identities in candidates]
    batch = Collator(tokenizer.pad_token_id)(items)
    rows = [expert_identities(s, conditioning) for s in candidates]
    labels = batch["labels"][:, 1:]
    scored = labels != IGNORE
    with torch.no_grad(), use_identities(rows):
        hidden = model.get_decoder()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        # The output layer only where a label is scored: most positions are prompt and user turns.
        logits = model.get_output_embeddings()(hidden[:, :-1][scored]).float()
    picked = F.log_softmax(logits, dim=-1).gather(-1, labels[scored].unsqueeze(-1)).squeeze(-1)
    rows_of = scored.nonzero()[:, 0]
    return torch.zeros(len(candidates)).index_add_(0, rows_of, picked).tolist()


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--experts", required=True, help="expert checkpoint directory")
    ap.add_argument("--base_model", default=EMBEDDED)
    ap.add_argument("--data", default=str(DEFAULT_DATA))
    ap.add_argument("--eval_fraction", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--max_length", type=int, default=384)
    ap.add_argument("--limit", type=int, default=None, help="evaluate only the first N held-out dialogues")
    ap.add_argument("--json", default=None, help="write the full result here")
    args = ap.parse_args(argv)

    engine = Engine.load(args.base_model, lora_weights=args.experts, load_in_8bit=False, dtype="float32")
    dialogues, _ = load_dialogues(args.data, on_invalid="skip")
    _, held_out = holdout_split(dialogues, args.eval_fraction, args.seed)
    held_out = held_out[:args.limit]
    modes = {"experts+prompt": Conditioning.EXPERTS_AND_PROMPT, "prompt": Conditioning.PROMPT}
    hits = {m: 0 for m in modes}
    details, start = [], time.perf_counter()
    for i, dialogue in enumerate(held_out):
        candidates = [dialogue.identities] + single_edit_neighbours(dialogue.identities)
        row = {"identities": str(dialogue.identities), "neighbours": [str(c) for c in candidates[1:]]}
        for name, mode in modes.items():
            scores = assistant_log_likelihoods(engine.model, engine.tokenizer, dialogue, candidates, mode,
                                               args.max_length)
            hit = scores[0] > max(scores[1:])
            hits[name] += hit
            row[name] = {"hit": hit, "margin": scores[0] - max(scores[1:])}
        details.append(row)
        print(f"[{i + 1}/{len(held_out)}] {row['identities']}: " + ", ".join(
            f"{m} {'hit' if row[m]['hit'] else 'miss'}" for m in modes), file=sys.stderr)
    n = len(held_out)
    result = {
        "dialogues": n, "experts": args.experts, "seconds": round(time.perf_counter() - start, 1),
        "accuracy_by_mode": {m: hits[m] / n for m in modes},
        "mean_margin_by_mode": {m: sum(d[m]["margin"] for d in details) / n for m in modes},
        "details": details,
    }
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    print(json.dumps({k: v for k, v in result.items() if k != "details"}, indent=2))
    return result


if __name__ == "__main__":
    main()
