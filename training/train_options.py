"""The trainer's command line (`training/train.py`), apart from the trainer: `model_card.py` rebuilds a run's
command from it without importing the Hugging Face `Trainer` (seconds of imports for each card)."""
from __future__ import annotations

import argparse

from hirpf.experts import GATES, LAYOUTS, ExpertConfig
from hirpf.identities import GROUPS
from hirpf.model_options import add_model_arguments

DEV_TRAIN, DEV_EVAL = 10, 2
NEIGHBOUR_EDITS = ("all", "profession", "traits")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description="Train HIRPF identity experts")
    ap.add_argument("--data", required=True,
                    help="training data: JSON list, JSONL, or a <name>/{train,test}.json tree")
    ap.add_argument("--eval_data", default=None, help="evaluation data (default: the tree's test files, else "
                                                       "--eval_fraction of --data)")
    ap.add_argument("--extra_data", nargs="+", default=None, metavar="FILE",
                    help="more training dialogues (e.g. synthesized ones; one or more files), added to the training "
                         "split only: never held out or evaluated on, and the held-out split of --data stays the same")
    ap.add_argument("--eval_fraction", type=float, default=0.1, help="held-out share of --data when no eval data")
    ap.add_argument("--on_invalid", choices=["error", "skip"], default="error",
                    help="a record that breaks the rules: stop (default) or skip it and report counts")
    add_model_arguments(ap, ("base_model",))
    # Not the shared --load_in_8bit: training keeps a full-precision base unless asked, on CUDA too.
    ap.add_argument("--load_in_8bit", action="store_true", help="8-bit base model (bitsandbytes)")
    ap.add_argument("--output_dir", required=True)
    ap.add_argument("--num_epochs", type=float, default=1.0)
    ap.add_argument("--batch_size", type=int, default=64, help="effective batch size across processes")
    ap.add_argument("--micro_batch_size", type=int, default=2, help="per process and step; the rest is accumulation")
    ap.add_argument("--learning_rate", type=float, default=1e-4)
    ap.add_argument("--router_learning_rate", type=float, default=None,
                    help="the routers' own learning rate (default: --learning_rate)")
    ap.add_argument("--warmup_steps", type=int, default=100)
    ap.add_argument("--max_length", type=int, default=1024, help="tokens per dialogue; whole turns are cut beyond")
    # The expert settings: defaults and help texts from ExpertConfig, their one home.
    expert = ExpertConfig.help()
    ap.add_argument("--rank", type=int, default=expert["rank"][0], help=expert["rank"][1])
    ap.add_argument("--alpha", type=float, default=expert["alpha"][0], help=expert["alpha"][1])
    ap.add_argument("--dropout", type=float, default=expert["dropout"][0], help=expert["dropout"][1])
    ap.add_argument("--insert_mode", choices=LAYOUTS, default=expert["layout"][0], help=expert["layout"][1])
    ap.add_argument("--gate", choices=GATES, default=expert["gate"][0], help=expert["gate"][1])
    ap.add_argument("--target_modules", default=",".join(expert["target_modules"][0]),
                    help=expert["target_modules"][1] + " (comma list)")
    add_switch(ap, "train_router", "train the routers with the experts; --no_train_router: " + expert["router"][1])
    add_switch(ap, "hard_mask", expert["hard_mask"][1] + " (--no_hard_mask)")
    add_switch(ap, "shared_expert", expert["shared_expert"][1], default=expert["shared_expert"][0])
    ap.add_argument("--conditioning", choices=["experts+prompt", "experts"], default="experts+prompt")
    ap.add_argument("--experts_only_share", type=float, default=0.0,
                    help="share of training dialogues (drawn per dialogue, seeded by --seed) trained with a neutral "
                         "system message instead of --conditioning, so that the experts alone must carry their "
                         "identity (a profession the prompt would otherwise name); the held-out dialogues keep "
                         "--conditioning. 0 (default): none")
    ap.add_argument("--limit_train_samples", type=int, default=None)
    ap.add_argument("--limit_eval_samples", type=int, default=None)
    ap.add_argument("--eval_steps", type=int, default=100)
    ap.add_argument("--save_steps", type=int, default=200)
    ap.add_argument("--logging_steps", type=int, default=10)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--resume_from_checkpoint", default=None, help="a checkpoint-N directory of an earlier run")
    ap.add_argument("--init_experts", default=None,
                    help="start from the experts in this directory (e.g. a finished run) instead of from zero; "
                         "the expert flags must describe the same experts")
    ap.add_argument("--neighbour_weight", type=float, default=0.0,
                    help="weight of the neighbour contrast: each training dialogue is scored again under one "
                         "random single-edit neighbour of its identity set (a pole flipped or removed, the "
                         "profession changed or removed), and -log sigmoid(beta × (log p under the true set - "
                         "log p under the neighbour)) is added to the loss; 0 (default): language modelling only")
    ap.add_argument("--neighbour_edits", choices=NEIGHBOUR_EDITS, default="all",
                    help="the neighbour contrast's edits: all (a pole flipped or removed, the profession changed or "
                         "removed), profession (the profession changed or removed only: the contrast asks the "
                         "profession experts alone to tell the fields apart; a set without one contributes nothing) "
                         "or traits (a pole flipped or removed only, the profession kept: for a trait phase, "
                         "--train_groups traits, whose experts an edit of the profession would not reach)")
    ap.add_argument("--neighbour_beta", type=float, default=0.1,
                    help="the neighbour contrast's scale beta, per nat of the dialogue's summed log-likelihood")
    ap.add_argument("--loss_per_record", action="store_true",
                    help="language modelling loss as the mean over records of each record's mean over its reply "
                         "tokens, so that a record with a one-word reply (a self-report answer) weighs as much as a "
                         "long dialogue; default: the mean over all reply tokens of the batch. The held-out loss "
                         "stays per token, so runs compare")
    ap.add_argument("--train_groups", choices=("all",) + tuple(GROUPS), default="all",
                    help="which experts learn: all (default), or one group (e.g. professions), the others kept as "
                         "loaded (--init_experts); needs a layout whose layers each hold one group (alternate)")
    ap.add_argument("--train_records", choices=("all", "with_profession"), default="all",
                    help="train on every record (default), or only on those whose identity set holds a profession; "
                         "the held-out split is drawn before, so it stays the same")
    ap.add_argument("--dev", action="store_true", help=f"a quick run: {DEV_TRAIN} train and {DEV_EVAL} eval samples")
    ap.add_argument("--log_samples", action="store_true",
                    help="write the sample ids each process trained on, and each process's experts (rank<N>/)")
    return ap


def add_switch(ap: argparse.ArgumentParser, name: str, help_text: str, default: bool = True) -> None:
    """`--name` / `--no_name` (the spelling of the other flags; `--no-name`, argparse's, is accepted too)."""
    ap.add_argument(f"--{name}", dest=name, action="store_true", default=default, help=help_text)
    ap.add_argument(f"--no_{name}", f"--no-{name}", dest=name, action="store_false", default=default,
                    help=argparse.SUPPRESS)  # the same default: a command rebuilt from the args omits both


def extra_data_files(extra_data: str | list | None) -> list[str]:
    """A run's --extra_data as a list (a summary written before it took several files holds one path)."""
    return [extra_data] if isinstance(extra_data, str) else list(extra_data or [])
