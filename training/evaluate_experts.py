"""Do the trained experts carry identity? A likelihood test on held-out dialogues (the model card's figure).

    python training/evaluate_experts.py --experts DIR [--data FILE] [--json OUT]

For each held-out dialogue, the assistant-token log-likelihood under its true identity set is compared with
each single-edit neighbour (a pole flipped, the profession changed or removed). A hit when the true set is
the most likely. Two conditionings on the same base model: the experts with the identity prompt, and the
identity prompt alone. The split is the trainer's (same data, --eval_fraction and --seed).

The scoring is `hirpf.eval.recognize` (`python -m hirpf.eval recognize` runs the wider test: pole removal
among the neighbours, the experts-only mode, any data file); this script fixes the model card's settings.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hirpf.base_model import EMBEDDED
from hirpf.engine import Engine
from hirpf.eval.recognize import DEFAULT_BATCH_TOKENS, recognize
from hirpf.paths import his_file
from hirpf.prompts import Conditioning
from hirpf.dialogues import holdout_split, load_dialogues

DEFAULT_DATA = his_file("identity_dialogues.json")
MODES = (Conditioning.EXPERTS_AND_PROMPT, Conditioning.PROMPT)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--experts", required=True, help="expert checkpoint directory")
    ap.add_argument("--base_model", default=EMBEDDED)
    ap.add_argument("--data", default=str(DEFAULT_DATA))
    ap.add_argument("--eval_fraction", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--max_length", type=int, default=384)
    ap.add_argument("--batch_size", type=int, default=16, help="rows per forward pass")
    ap.add_argument("--batch_tokens", type=int, default=DEFAULT_BATCH_TOKENS, help="padded tokens per forward pass")
    ap.add_argument("--limit", type=int, default=None, help="evaluate only the first N held-out dialogues")
    ap.add_argument("--json", default=None, help="write the full result here")
    args = ap.parse_args(argv)

    engine = Engine.load(args.base_model, lora_weights=args.experts, load_in_8bit=False, dtype="float32")
    dialogues, _ = load_dialogues(args.data, on_invalid="skip")
    _, held_out = holdout_split(dialogues, args.eval_fraction, args.seed)
    held_out = held_out[:args.limit]
    start = time.perf_counter()
    scored = recognize(engine.model, engine.tokenizer, held_out, MODES, remove_poles=False,
                       max_length=args.max_length, batch_size=args.batch_size,
                       batch_tokens=args.batch_tokens)
    modes = [m.value for m in MODES]
    details = [{"identities": d["identities"], "neighbours": d["neighbours"]}
               | {m: {"hit": d[m]["hit"], "margin": d[m]["margin"]} for m in modes} for d in scored["details"]]
    for i, row in enumerate(details):
        print(f"[{i + 1}/{len(details)}] {row['identities']}: " + ", ".join(
            f"{m} {'hit' if row[m]['hit'] else 'miss'}" for m in modes), file=sys.stderr)
    result = {
        "dialogues": scored["dialogues"], "experts": args.experts, "seconds": round(time.perf_counter() - start, 1),
        "accuracy_by_mode": scored["accuracy_by_mode"], "mean_margin_by_mode": scored["mean_margin_by_mode"],
        "details": details,
    }
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    print(json.dumps({k: v for k, v in result.items() if k != "details"}, indent=2))
    return result


if __name__ == "__main__":
    main()
