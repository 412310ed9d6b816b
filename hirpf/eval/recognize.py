"""Identity recognition by likelihood: does the model prefer a dialogue's true identity set over its near misses?

    python -m hirpf.eval recognize --data FILE [--modes experts+prompt,experts,prompt] [--on_invalid skip]

For each dialogue (the training record format) and each conditioning mode, the assistant turns are scored
(sum of token log-probabilities) under the true identity set and under each single-edit neighbour: a pole
flipped, a pole removed, the profession changed or removed. A hit when the true set scores highest.

No generation: every (dialogue, candidate, mode) is one row of a teacher-forced forward pass, each row routed
through its own candidate's experts (`use_identities`), rows of similar length batched together. All
candidates of a dialogue are scored on the same assistant tokens: when `--max_length` cuts a dialogue, the
cut falls at the last assistant turn that fits under every candidate's system message (a longer identity
message must not earn a shorter, likelier dialogue).
"""
from __future__ import annotations

import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from ..dialogues import IGNORE, Collator, Dialogue, holdout_split, load_dialogues, tokenize
from ..export import as_bias_gate_exports
from ..identities import IdentityError, IdentitySet, check_strength_setting, single_edit_neighbours
from ..paths import his_file
from ..prompts import Conditioning, expert_identities
from ..routing import use_identities
from .common import EvalError, check_positive, load_engine, log, output_dir, progress, run_config, write_json

ALL_MODES = tuple(Conditioning)
# Padded tokens per forward pass. On a CPU, passes of a few thousand tokens run fastest: larger ones outgrow the
# CPU's caches with their activations (the figures: docs/benchmarks.md); raise it on a GPU.
DEFAULT_BATCH_TOKENS = 2048


@dataclass(frozen=True)
class Trial:
    """One dialogue under one conditioning mode: the candidate identity sets to score it under."""

    dialogue: Dialogue
    candidates: tuple[IdentitySet, ...]  # the true set first
    conditioning: Conditioning


def candidates_for(identities: IdentitySet, remove_poles: bool = True) -> tuple[IdentitySet, ...]:
    """The true set followed by its single-edit neighbours."""
    return (identities,) + tuple(single_edit_neighbours(identities, remove_poles=remove_poles))


def score_trials(model, tokenizer, trials: Sequence[Trial], max_length: int | None = 384, batch_size: int = 16,
                 batch_tokens: int = DEFAULT_BATCH_TOKENS,
                 on_batch: Callable[[int, int], None] | None = None) -> list[list[float]]:
    """For each trial, the assistant-token log-likelihood of its dialogue under each candidate (in order).

    Rows from all trials are pooled, identical rows (same tokens, same experts) scored once, and batched by
    length: at most `batch_size` rows and `batch_tokens` padded tokens per forward pass. `on_batch(rows done,
    rows in all)` is called after each pass (progress)."""
    rows: dict[tuple, dict] = {}  # (token ids, expert names) -> the row, scored once
    keys_per_trial = []
    for trial in trials:
        items = [tokenize(Dialogue(trial.dialogue.turns, c), tokenizer, trial.conditioning, max_length)
                 for c in trial.candidates]
        if any(item is None for item in items):
            raise ValueError(f"{trial.dialogue.source} record {trial.dialogue.index}: not even the first "
                             f"assistant turn fits in max_length={max_length}")
        scored = _common_scored_tokens(items, trial.dialogue)
        keys = []
        for candidate, item in zip(trial.candidates, items):
            last = int((item["labels"] != IGNORE).nonzero()[scored - 1]) + 1  # later tokens cannot change these
            experts = expert_identities(candidate, trial.conditioning)
            key = (tuple(item["input_ids"][:last].tolist()), experts)
            rows.setdefault(key, {"input_ids": item["input_ids"][:last], "labels": item["labels"][:last],
                                  "identity_pairs": experts.index_pairs(), "experts": experts})
            keys.append(key)
        keys_per_trial.append(keys)

    order = sorted(rows, key=lambda k: len(k[0]), reverse=True)  # similar lengths share a batch: little padding
    collate = Collator(tokenizer.pad_token_id)
    score = {}
    for chunk in _batches(order, batch_size, batch_tokens):
        batch = [rows[k] for k in chunk]
        for key, value in zip(chunk, _log_likelihoods(model, collate(batch), [r["experts"] for r in batch])):
            score[key] = value
        if on_batch is not None:
            on_batch(len(chunk), len(order))
    return [[score[k] for k in keys] for keys in keys_per_trial]


def _batches(order: list[tuple], batch_size: int, batch_tokens: int) -> list[list[tuple]]:
    """Consecutive rows (longest first), as many as fit both limits; a row longer than the token budget
    goes alone."""
    out, chunk = [], []
    for key in order:
        if chunk and (len(chunk) >= batch_size or (len(chunk) + 1) * len(chunk[0][0]) > batch_tokens):
            out.append(chunk)
            chunk = []
        chunk.append(key)
    return out + ([chunk] if chunk else [])


def _common_scored_tokens(items: list[dict], dialogue: Dialogue) -> int:
    """How many assistant tokens every candidate keeps after truncation. The assistant text is the same under
    every candidate, so a shorter row's labels are a prefix of a longer row's; checked, not assumed."""
    labels = [item["labels"][item["labels"] != IGNORE] for item in items]
    shortest = min(labels, key=len)
    for other in labels:
        if not torch.equal(other[:len(shortest)], shortest):
            raise ValueError(f"{dialogue.source} record {dialogue.index}: the assistant tokens differ between "
                             "identity sets; the tokenizer's chat template mixes the system message into them")
    return len(shortest)


def _log_likelihoods(model, batch: dict, experts: list[IdentitySet]) -> list[float]:
    """Sum of log-probabilities of the labelled tokens, one value per row; each row under its own experts."""
    device = model.device
    labels = batch["labels"][:, 1:].to(device)
    scored = labels != IGNORE
    with torch.no_grad(), use_identities(experts):
        hidden = model.get_decoder()(input_ids=batch["input_ids"].to(device),
                                     attention_mask=batch["attention_mask"].to(device)).last_hidden_state
        # The output layer only where a label is scored: most positions are prompt and user turns.
        logits = model.get_output_embeddings()(hidden[:, :-1][scored]).float()
    picked = F.log_softmax(logits, dim=-1).gather(-1, labels[scored].unsqueeze(-1)).squeeze(-1)
    rows_of = scored.nonzero()[:, 0]
    return torch.zeros(len(experts), device=picked.device).index_add_(0, rows_of, picked).tolist()


# --- the evaluation ----------------------------------------------------------------------------------
def recognize(model, tokenizer, dialogues: Sequence[Dialogue], modes: Sequence[Conditioning] = ALL_MODES,
              remove_poles: bool = True, max_length: int | None = 384, batch_size: int = 16,
              batch_tokens: int = DEFAULT_BATCH_TOKENS, on_batch: Callable[[int, int], None] | None = None,
              strength: "str | float | dict | None" = None) -> dict:
    """Hits and margins per dialogue and mode, and accuracies per mode, per identity and per number of
    identities. Dialogues whose true set is empty have no neighbours and are left out (counted). `strength`
    (`IdentitySet.with_strengths`) applies to the true set and every neighbour that holds the identity."""
    usable = [d for d in dialogues if len(d.identities)]

    def candidates(identities: IdentitySet) -> tuple[IdentitySet, ...]:
        return tuple(c.with_strengths(strength, ignore_absent=True) for c in candidates_for(identities, remove_poles))

    trials = [Trial(d, candidates(d.identities), Conditioning.parse(m)) for d in usable for m in modes]
    scores = iter(score_trials(model, tokenizer, trials, max_length, batch_size, batch_tokens, on_batch))
    details = []
    for dialogue in usable:
        candidates = candidates_for(dialogue.identities, remove_poles)  # names only: the details say the strength once
        row = {"source": dialogue.source, "index": dialogue.index, "identities": str(dialogue.identities),
               "neighbours": [str(c) for c in candidates[1:]]}
        for mode in modes:
            values = next(scores)
            margin = values[0] - max(values[1:])
            row[Conditioning.parse(mode).value] = {"hit": margin > 0, "margin": margin, "scores": values}
        details.append(row)
    return summarize_details(details, [Conditioning.parse(m).value for m in modes]) | {
        "dialogues": len(usable), "left_out_empty_sets": len(dialogues) - len(usable), "strength": strength,
        "remove_poles": remove_poles, "max_length": max_length, "details": details}


def summarize_details(details: list[dict], modes: Sequence[str]) -> dict:
    def accuracy(rows, mode):
        return {"accuracy": sum(r[mode]["hit"] for r in rows) / len(rows), "dialogues": len(rows)} if rows else None

    by_identity, by_count = defaultdict(list), defaultdict(list)
    for row in details:
        names = IdentitySet.parse(row["identities"]).names
        for name in names:
            by_identity[name].append(row)
        by_count[len(names)].append(row)
    n = len(details)
    return {
        "accuracy_by_mode": {m: (sum(r[m]["hit"] for r in details) / n if n else None) for m in modes},
        "mean_margin_by_mode": {m: (sum(r[m]["margin"] for r in details) / n if n else None) for m in modes},
        "accuracy_by_identity": {m: {name: accuracy(rows, m) for name, rows in sorted(by_identity.items())}
                                 for m in modes},
        "accuracy_by_count": {m: {str(k): accuracy(rows, m) for k, rows in sorted(by_count.items())} for m in modes},
        "misses_by_winner": {m: dict(Counter(miss_kind(r, m) for r in details if not r[m]["hit"])) for m in modes},
    }


def miss_kind(row: dict, mode: str) -> str:
    """What the neighbour that beat the true set did to it: removed an identity (a pole or the profession),
    flipped a pole, or changed the profession (a composition that dilutes its identities loses to removals)."""
    scores = row[mode]["scores"]
    winner, true = (IdentitySet.parse("" if text == str(IdentitySet()) else text)  # the empty set reads "(none)"
                    for text in (row["neighbours"][max(range(1, len(scores)), key=scores.__getitem__) - 1],
                                 row["identities"]))
    if set(winner.names) < set(true.names):
        return "identity removed"
    return "pole flipped" if winner.profession == true.profession else "profession changed"


# --- the command -------------------------------------------------------------------------------------
def add_arguments(parser) -> None:
    parser.add_argument("--data", default=str(his_file("identity_dialogues.json")),
                        help="dialogues in the training record format: JSON list, JSONL or a <name>/{train,test}"
                             ".json tree (default: the HIS identity dialogues)")
    parser.add_argument("--on_invalid", choices=("error", "skip"), default="error",
                        help="a record that breaks the identity rules stops the run (error) or is counted and "
                             "left out (skip)")
    parser.add_argument("--modes", default=None,
                        help="comma list of conditioning modes to compare (default: experts+prompt,experts,prompt; "
                             "prompt only without experts)")
    parser.add_argument("--held_out_fraction", type=float, default=None,
                        help="score only the trainer's held-out share of --data (the same shuffle as "
                             "training/train.py --eval_fraction with --split_seed)")
    parser.add_argument("--split_seed", type=int, default=42, help="the trainer's --seed (default 42)")
    parser.add_argument("--limit", type=int, default=None, help="score only the first N dialogues")
    parser.add_argument("--max_length", type=int, default=384,
                        help="tokens per scored row; longer dialogues lose whole turns from the end (default 384)")
    parser.add_argument("--batch_tokens", type=int, default=DEFAULT_BATCH_TOKENS,
                        help=f"padded tokens per forward pass, besides --batch_size rows "
                             f"(default {DEFAULT_BATCH_TOKENS}; raise it on a GPU)")
    parser.add_argument("--strength", default=None,
                        help="strength of the experts, 0 to 2 (1 = as trained): one number for every identity, or "
                             "AGR_low=1.6,Doctor=0.5 (applied to each candidate set that holds the identity)")
    parser.add_argument("--as_export", choices=("bias",), default=None,
                        help="score every candidate as its plain-LoRA export (`python -m hirpf export --gate bias`: "
                             "the router held at its bias) instead of the live experts: how close exports come")
    parser.add_argument("--no_pole_removal", action="store_true",
                        help="neighbours: flipped poles and profession edits only (the model card's test)")


def parse_modes(text: str | None) -> list[Conditioning] | None:
    """The `--modes` list (None: the default, which depends on whether experts are loaded)."""
    if text is None:
        return None
    try:
        modes = list(dict.fromkeys(Conditioning.parse(m.strip()) for m in text.split(",") if m.strip()))
    except ValueError as err:
        raise EvalError(f"--modes: {err}") from None
    if not modes:
        raise EvalError("--modes: no mode given")
    return modes


def modes_for(engine, modes: list[Conditioning] | None) -> list[Conditioning]:
    if modes is None:
        return list(ALL_MODES) if engine.has_experts else [Conditioning.PROMPT]
    needing = [m.value for m in modes if m.uses_experts]
    if needing and not engine.has_experts:
        raise EvalError(f"--modes {','.join(needing)} need experts, but none are loaded (--lora_weights)")
    return modes


def load_data(args) -> tuple[list[Dialogue], str]:
    """The dialogues the options choose, and a line saying what was loaded."""
    try:
        dialogues, report = load_dialogues(args.data, on_invalid=args.on_invalid)
    except (OSError, ValueError) as err:  # InvalidRecord is a ValueError naming file, record and reason
        raise EvalError(str(err)) from None
    described = f"{args.data}: {report.describe()}"
    if args.held_out_fraction is not None:
        if not 0 < args.held_out_fraction < 1:
            raise EvalError(f"--held_out_fraction must be between 0 and 1, got {args.held_out_fraction}")
        _, dialogues = holdout_split(dialogues, args.held_out_fraction, args.split_seed)
        described += f"; {len(dialogues)} held out (fraction {args.held_out_fraction}, seed {args.split_seed})"
    if args.limit is not None:
        dialogues = dialogues[:check_positive("--limit", args.limit)]
    if not dialogues:
        raise EvalError(f"{args.data}: no dialogues to score")
    return dialogues, described


def run(args) -> dict:
    check_positive("--max_length", args.max_length)
    check_positive("--batch_tokens", args.batch_tokens)
    asked = parse_modes(args.modes)
    try:
        check_strength_setting(args.strength)
    except IdentityError as err:
        raise EvalError(f"--strength: {err}") from None
    dialogues, described = load_data(args)
    engine = load_engine(args)
    modes = modes_for(engine, asked)
    if args.as_export:
        if not engine.has_experts:
            raise EvalError("--as_export needs experts (--lora_weights)")
        as_bias_gate_exports(engine.model)
    log.info("%s; modes: %s", described, ", ".join(m.value for m in modes))
    remove_poles = not args.no_pole_removal
    start = time.perf_counter()
    with progress(None, "recognize (rows)") as bar:

        def advance(done: int, total: int):
            bar.total = total
            bar.update(done)

        try:
            result = recognize(engine.model, engine.tokenizer, dialogues, modes, remove_poles, args.max_length,
                               args.batch_size, args.batch_tokens, on_batch=advance, strength=args.strength)
        except ValueError as err:
            raise EvalError(str(err)) from None
    seconds = time.perf_counter() - start
    config = run_config(args, engine)
    config.pop("conditioning")  # --modes, not --conditioning, decides here
    document = {"command": "recognize", "accuracy_by_mode": result.pop("accuracy_by_mode"), "config": config,
                "data": described, "modes": [m.value for m in modes], "as_export": args.as_export,
                "seconds": round(seconds, 1)} | result
    document["files"] = {"result": str(output_dir(args, "recognize") / "recognize.json")}
    write_json(Path(document["files"]["result"]), document)
    return document


def summarize(document: dict) -> str:
    lines = [f"{document['dialogues']} dialogues in {document['seconds']} s"]
    for mode, accuracy in document["accuracy_by_mode"].items():
        by_count = ", ".join(f"{k} identities {v['accuracy']:.3f}"
                             for k, v in document["accuracy_by_count"][mode].items())
        lines.append(f"{mode}: accuracy {accuracy:.3f}, mean margin {document['mean_margin_by_mode'][mode]:.2f} "
                     f"({by_count})")
    lines.append(f"details: {document['files']['result']}")
    return "\n".join(lines)
