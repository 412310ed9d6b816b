"""Train the identity experts: `python training/train.py --data FILE ...` or `python -m training.train ...`.

Wraps the Hugging Face `Trainer`. Only expert and router parameters train. Multi-process data parallel
works through `torchrun` / `accelerate` (LOCAL_RANK; gloo on CPU, NCCL on GPUs). Every checkpoint, and the
final result in `--output_dir`, is an expert checkpoint (`adapter_config.json` + `adapter_model.safetensors`)
that `python -m hirpf chat --lora_weights DIR` loads.
"""
from __future__ import annotations

import json
import logging
import os
import random
import sys
import time
from contextlib import contextmanager
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the project importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch
import torch.nn.functional as F
from transformers import Trainer, TrainerCallback, TrainingArguments

from hirpf.base_model import load_base_model
from hirpf.checkpoint import load_experts, save_experts
from hirpf.dialogues import IGNORE, Collator, holdout_split, load_dialogues, tokenize
from hirpf.experts import ExpertConfig
from hirpf.identities import GROUPS, IdentitySet, single_edit_neighbours
from hirpf.inject import add_experts, expert_layers, trainable_parameter_count
from hirpf.model_options import model_options
from hirpf.prompts import Conditioning
from hirpf.routing import use_identities
from training.train_options import DEV_EVAL, DEV_TRAIN, NEIGHBOUR_EDITS, build_parser, extra_data_files

log = logging.getLogger("hirpf.train")


class ExpertTrainer(Trainer):
    """Runs every forward inside the batch's identity routing and saves expert checkpoints only."""

    def __init__(self, *args, sample_log: list | None = None, neighbour_weight: float = 0.0,
                 neighbour_beta: float = 0.1, neighbour_edits: str = "all", loss_per_record: bool = False,
                 **kwargs):
        with experts_declared_as_adapters(kwargs["model"]):
            super().__init__(*args, **kwargs)
        if self.args.n_gpu > 1:
            # The Trainer would wrap the model in nn.DataParallel, whose replicas run in threads that do not
            # see the identity rows set by use_identities (a ContextVar): every row would run the bare base
            # model and the experts would get no gradient, silently.
            raise SystemExit(
                f"{self.args.n_gpu} GPUs in one process: the Trainer would use torch.nn.DataParallel, which runs "
                "the experts switched off. Start one process per GPU with torchrun: `torchrun --nproc_per_node "
                f"{self.args.n_gpu} training/train.py ...`, or pick one GPU with CUDA_VISIBLE_DEVICES=0")
        self.sample_log = sample_log
        self.tokens_seen = 0
        self.neighbours = (NeighbourContrast(neighbour_weight, neighbour_beta, self.args.seed, neighbour_edits)
                           if neighbour_weight else None)
        self.loss_per_record = loss_per_record

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss = self.loss_of(model, inputs, return_outputs, num_items_in_batch)
        if model.training and not loss.requires_grad:
            # No record of this micro-batch reaches a trained expert (`--train_groups traits` and sets of a
            # profession alone): its loss counts, its gradient is zero, and backward still needs a graph.
            loss = loss + 0.0 * sum(p.sum() for p in model.parameters() if p.requires_grad)
        return loss

    def loss_of(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        # Training and evaluation (prediction_step calls this too) both go through here.
        pairs = inputs.pop("identity_pairs")
        ids = inputs.pop("sample_id")
        if model.training:
            self.tokens_seen += int(inputs["attention_mask"].sum())
            if self.sample_log is not None:
                self.sample_log.extend(ids.tolist())
        accumulation = self.args.gradient_accumulation_steps
        if model.training and self.neighbours is not None:
            return self.neighbours.loss(model, inputs, pairs, num_items_in_batch, accumulation, self.loss_per_record)
        if model.training and self.loss_per_record:
            with use_identities(pairs):
                logits = model(**{k: v for k, v in inputs.items() if k != "labels"}).logits
            nll, tokens = reply_nll(logits, inputs["labels"])
            return language_modelling_loss(nll, tokens, num_items_in_batch, accumulation, per_record=True)
        with use_identities(pairs):
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

    def _save(self, output_dir=None, state_dict=None):
        save_experts(self.accelerator.unwrap_model(self.model), output_dir or self.args.output_dir)

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        load_experts(self.accelerator.unwrap_model(model or self.model), resume_from_checkpoint)


class NeighbourContrast:
    """Language modelling plus a contrast with one single-edit neighbour per dialogue.

    Recognition asks whether a dialogue is likelier under its own identity set than under each set one edit
    away; language modelling alone never asks that, and the experts of a set of two or three learnt to make
    their dialogues likely without making them *more* likely than under a subset (most misses were a
    removed identity winning). So each dialogue also runs under a random neighbour, in the same forward (the
    batch doubled, the neighbour rows routed to the neighbour set, the prompt unchanged), and the loss adds
    `weight × -log sigmoid(beta × (log p(replies | set) - log p(replies | neighbour)))`, a logistic ranking
    loss on the summed log-likelihood of the replies, as recognition scores them.
    """

    def __init__(self, weight: float, beta: float, seed: int, edits: str = "all"):
        if weight < 0 or beta <= 0:
            raise SystemExit(f"--neighbour_weight must be >= 0 and --neighbour_beta > 0 "
                             f"(got {weight} and {beta})")
        if edits not in NEIGHBOUR_EDITS:
            raise SystemExit(f"--neighbour_edits must be one of {', '.join(NEIGHBOUR_EDITS)}, got {edits!r}")
        self.weight, self.beta, self.edits = weight, beta, edits
        self.random = random.Random(seed)
        self.last: dict = {}  # the last micro-batch's terms, for logging and tests

    def neighbour(self, identities: IdentitySet) -> IdentitySet:
        options = single_edit_neighbours(identities, remove_poles=True)
        if self.edits == "profession":  # the edits that keep every pole: the profession changed or removed
            options = [s for s in options if s.traits == identities.traits]
        elif self.edits == "traits":  # the edits that keep the profession: a pole flipped or removed
            options = [s for s in options if s.profession == identities.profession]
        return self.random.choice(options) if options else identities

    def loss(self, model, inputs: dict, pairs: torch.Tensor, num_items_in_batch, accumulation: int,
             per_record: bool = False) -> torch.Tensor:
        sets = [IdentitySet.from_index_pairs(row) for row in pairs]
        rows = len(sets)
        doubled = {k: torch.cat([v, v]) for k, v in inputs.items() if k != "labels"}
        with use_identities(sets + [self.neighbour(s) for s in sets]):
            logits = model(**doubled).logits
        nll, tokens = reply_nll(logits, torch.cat([inputs["labels"], inputs["labels"]]))
        own, other, tokens = nll[:rows], nll[rows:], tokens[:rows]
        # A neighbour equal to the set (an empty set has none) contributes log 2, and no gradient.
        ranking = -F.logsigmoid(self.beta * (other - own))
        with torch.no_grad():
            self.last = {"language_modelling": float(own.sum() / tokens.sum()), "contrast": float(ranking.mean()),
                         "margin": float((other - own).mean())}
        contrast = ranking.mean() if num_items_in_batch is None else ranking.sum() / (rows * accumulation)
        return (language_modelling_loss(own, tokens, num_items_in_batch, accumulation, per_record)
                + self.weight * contrast)


def reply_nll(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row, the summed negative log-likelihood of its reply tokens and how many there are."""
    labels = labels[:, 1:]
    scored = labels != IGNORE
    logits = logits[:, :-1].flatten(0, 1).to(torch.promote_types(logits.dtype, torch.float32))
    nll = F.cross_entropy(logits, labels.flatten().clamp(min=0), reduction="none").view(labels.shape) * scored
    return nll.sum(dim=1), scored.sum(dim=1)


def language_modelling_loss(nll: torch.Tensor, tokens: torch.Tensor, num_items_in_batch, accumulation: int,
                            per_record: bool) -> torch.Tensor:
    """This micro-batch's share of the accumulated batch's loss. Per token (as the Trainer's own loss): the
    summed NLL over the whole accumulated batch's reply tokens. Per record: each row's mean over its tokens,
    averaged over the accumulated batch's rows. Without `num_items_in_batch` the Trainer divides by the
    accumulation steps itself."""
    if per_record:
        means = nll / tokens.clamp(min=1)
        return means.mean() if num_items_in_batch is None else means.sum() / (len(nll) * accumulation)
    return nll.sum() / (tokens.sum() if num_items_in_batch is None else num_items_in_batch)


@contextmanager
def experts_declared_as_adapters(model):
    """Lets the Trainer accept a quantized (8-bit) base that carries our experts.

    transformers refuses to fine-tune a quantized model unless it sees trainable adapters on it, and it
    recognises only PEFT's: a `PeftModel`, or the flag `_hf_peft_config_loaded` that its own PEFT
    integration sets (other adapter libraries, such as ms-swift, set it for theirs). The experts are such
    adapters: the quantized weights stay frozen and only experts and routers train. The flag also switches
    `save_pretrained` and activation checkpointing to PEFT's handling, which our experts do not have, so it
    is set only while the Trainer validates the model in `__init__` and removed straight after.
    """
    if not getattr(model, "is_quantized", False) or getattr(model, "_hf_peft_config_loaded", False):
        yield
        return
    if not expert_layers(model) or not trainable_parameter_count(model):
        raise SystemExit("a quantized base model trains only through its experts, and this one has none")
    model._hf_peft_config_loaded = True
    try:
        yield
    finally:
        del model._hf_peft_config_loaded  # back to the class default (False)


RUN_SO_FAR = "run_so_far.json"  # in each checkpoint: the seconds and log lines before it, for a resumed run


class Throughput(TrainerCallback):
    """Adds tokens/s (and, with the neighbour contrast, its terms) to every log line, and keeps in each
    checkpoint the run's seconds and log lines so far: a run resumed from it reports the whole run."""

    def __init__(self, resumed_from: str | None = None):
        self.trainer, self.start = None, time.perf_counter()
        self.earlier_seconds, self.history, self.earlier_seconds_known = run_so_far(resumed_from)

    def seconds(self) -> float:
        return self.earlier_seconds + time.perf_counter() - self.start

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            checkpoint = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            (checkpoint / RUN_SO_FAR).write_text(json.dumps({
                "seconds": self.seconds(), "seconds_known": self.earlier_seconds_known, "history": self.history}))

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs is not None and self.trainer is not None:
            logs["tokens_per_s"] = round(self.trainer.tokens_seen / max(time.perf_counter() - self.start, 1e-9), 1)
            if self.trainer.neighbours is not None and self.trainer.neighbours.last:  # the last micro-batch's terms
                logs.update({f"neighbour_{k}": round(v, 4) for k, v in self.trainer.neighbours.last.items()})
            self.history.append({"step": state.global_step, **logs})


def run_so_far(checkpoint: str | None) -> tuple[float, list[dict], bool]:
    """(seconds, log lines, whether the seconds are known) of the run up to `checkpoint`; a checkpoint saved
    before `RUN_SO_FAR` existed gives the Trainer's own log lines and unknown seconds."""
    if checkpoint is None:
        return 0.0, [], True
    path = Path(checkpoint)
    if (path / RUN_SO_FAR).exists():
        so_far = json.loads((path / RUN_SO_FAR).read_text())
        return so_far["seconds"], so_far["history"], so_far["seconds_known"]
    state = json.loads((path / "trainer_state.json").read_text())
    return 0.0, state["log_history"], False


def tokenized(dialogues, tokenizer, conditioning, max_length, first_id=0, experts_only_share=0.0, seed=0):
    """Each dialogue's training item under `conditioning`, or, for a seeded `experts_only_share` of them,
    under the experts alone (a neutral system message)."""
    items, dropped = [], 0
    draw = random.Random(seed)
    for i, d in enumerate(dialogues):
        experts_only = draw.random() < experts_only_share
        item = tokenize(d, tokenizer, Conditioning.EXPERTS if experts_only else conditioning, max_length)
        if item is None:
            dropped += 1
            continue
        item["sample_id"] = torch.tensor(first_id + i)
        items.append(item)
    if dropped:
        log.warning("%d dialogues dropped: not even their first reply fits in --max_length", dropped)
    return items


def split_data(args):
    """(train dialogues, eval dialogues, load report text)."""
    data = Path(args.data)
    if args.eval_data:
        train, report = load_dialogues(data, args.on_invalid)
        evaluation, eval_report = load_dialogues(args.eval_data, args.on_invalid)
        return train, evaluation, f"train: {report.describe()}; eval: {eval_report.describe()}"
    if data.is_dir():
        train, report = load_dialogues(data, args.on_invalid, split="train")
        evaluation, eval_report = load_dialogues(data, args.on_invalid, split="test")
        return train, evaluation, f"train: {report.describe()}; eval: {eval_report.describe()}"
    dialogues, report = load_dialogues(data, args.on_invalid)
    train, held_out = holdout_split(dialogues, args.eval_fraction, args.seed)
    return train, held_out, f"{report.describe()}; {len(held_out)} held out for evaluation (seed {args.seed})"


def add_extra_data(args, train: list) -> tuple[list, str]:
    """`train` followed by the --extra_data dialogues (after the split, so the held-out split is unchanged)."""
    described = []
    for path in extra_data_files(args.extra_data):
        extra, report = load_dialogues(Path(path), args.on_invalid)
        train, described = train + extra, described + [f"{Path(path).name}: {report.describe()}"]
    return train, f"; extra training data: {'; '.join(described)}" if described else ""


def main(argv=None) -> dict:
    args = build_parser().parse_args(argv)
    args.base_model = model_options(args).base_model  # resolved, as the run's record keeps it
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if args.dev:
        args.limit_train_samples, args.limit_eval_samples = DEV_TRAIN, DEV_EVAL
    per_step = args.micro_batch_size * world
    if args.batch_size % per_step:
        raise SystemExit(f"--batch_size {args.batch_size} must be a multiple of "
                         f"--micro_batch_size × processes ({per_step})")
    accumulation = args.batch_size // per_step

    model, tokenizer = load_base_model(args.base_model, load_in_8bit=args.load_in_8bit)
    config = ExpertConfig(layout=args.insert_mode, rank=args.rank, alpha=args.alpha, dropout=args.dropout,
                          target_modules=tuple(t.strip() for t in args.target_modules.split(",") if t.strip()),
                          hard_mask=args.hard_mask, gate=args.gate, shared_expert=args.shared_expert,
                          base_model=model.hirpf_base_model)
    add_experts(model, config)
    if args.init_experts:
        load_experts(model, args.init_experts)  # refuses experts of another shape than the flags describe
    if not args.train_router:
        for layer in expert_layers(model).values():
            layer.router.requires_grad_(False)
    train_only_group(model, args.train_groups)
    trainable = trainable_parameter_count(model)
    log.info("trainable parameters: %d (experts and routers only; %s layout, r=%d)",
             trainable, args.insert_mode, args.rank)

    train, evaluation, described = split_data(args)
    train, extra_described = add_extra_data(args, train)
    if args.train_records == "with_profession":
        train = [d for d in train if d.identities.profession]
        extra_described += f"; {len(train)} of them hold a profession and train"
    log.info("data: %s%s", described, extra_described)
    train, evaluation = train[:args.limit_train_samples], evaluation[:args.limit_eval_samples]
    conditioning = Conditioning.parse(args.conditioning)
    if not 0.0 <= args.experts_only_share <= 1.0:
        raise SystemExit(f"--experts_only_share must be between 0 and 1, got {args.experts_only_share}")
    train_items = tokenized(train, tokenizer, conditioning, args.max_length,
                            experts_only_share=args.experts_only_share, seed=args.seed)
    eval_items = tokenized(evaluation, tokenizer, conditioning, args.max_length, first_id=len(train))
    if not train_items:
        raise SystemExit("no training samples left")

    sample_log = [] if args.log_samples else None
    throughput = Throughput(args.resume_from_checkpoint)
    training_args = TrainingArguments(
        output_dir=args.output_dir, num_train_epochs=args.num_epochs,
        per_device_train_batch_size=args.micro_batch_size,
        per_device_eval_batch_size=args.micro_batch_size, gradient_accumulation_steps=accumulation,
        learning_rate=args.learning_rate, warmup_steps=args.warmup_steps, logging_steps=args.logging_steps,
        eval_strategy="steps" if eval_items else "no", eval_steps=args.eval_steps, save_strategy="steps",
        save_steps=args.save_steps, seed=args.seed, data_seed=args.seed, remove_unused_columns=False,
        report_to=[], use_cpu=not torch.cuda.is_available(), ddp_find_unused_parameters=True,
        ddp_backend="gloo" if not torch.cuda.is_available() and world > 1 else None,
        dataloader_num_workers=0,
    )
    trainer = ExpertTrainer(model=model, args=training_args, train_dataset=train_items,
                            eval_dataset=eval_items or None, data_collator=DialogueCollator(tokenizer.pad_token_id),
                            callbacks=[throughput], sample_log=sample_log, optimizers=(optimizer(model, args), None),
                            neighbour_weight=args.neighbour_weight, neighbour_beta=args.neighbour_beta,
                            neighbour_edits=args.neighbour_edits,
                            loss_per_record=args.loss_per_record)
    throughput.trainer = trainer
    start = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=args.resume_from_checkpoint)
    elapsed = time.perf_counter() - start
    final_eval = trainer.evaluate() if eval_items else {}
    summary = {
        "steps": trainer.state.global_step, "epochs": args.num_epochs,
        # the whole run's, resumes included (where an old checkpoint did not keep its seconds, after it only)
        "seconds": round(throughput.earlier_seconds + elapsed, 1), "seconds_known": throughput.earlier_seconds_known,
        "resumed_from": args.resume_from_checkpoint,
        "processes": world, "train_samples": len(train_items), "eval_samples": len(eval_items),
        "trainable_parameters": trainable, "tokens_per_s": round(trainer.tokens_seen * world / elapsed, 1),
        "mean_train_loss": result.training_loss,
        "final_train_loss": next((e["loss"] for e in reversed(throughput.history) if "loss" in e), None),
        "final_eval_loss": final_eval.get("eval_loss"),
        "args": vars(args), "log_history": throughput.history,
    }
    if sample_log is not None:  # per-process record, for checking shards and weight agreement across processes
        save_experts(model, Path(args.output_dir) / f"rank{rank}")
        (Path(args.output_dir) / f"samples_rank{rank}.json").write_text(json.dumps(sample_log))
    if trainer.is_world_process_zero():
        save_experts(model, args.output_dir)
        (Path(args.output_dir) / "training_summary.json").write_text(json.dumps(summary, indent=2, default=str))
        log.info("saved experts to %s (%d steps, %.0f s, %.0f tokens/s)", args.output_dir, summary["steps"],
                 elapsed, summary["tokens_per_s"])
    return summary


def train_only_group(model, group: str) -> None:
    """Freeze every expert layer (experts and router) outside `group` ("all": none). A layer that holds this
    group's experts and others cannot be split, so such a layout is refused."""
    if group == "all":
        return
    wanted = set(GROUPS[group])
    for name, layer in expert_layers(model).items():
        held = set(layer.expert_names)
        if held & wanted and held - wanted:
            raise SystemExit(f"--train_groups {group}: layer {name} holds {group} experts and others "
                             f"({', '.join(sorted(held - wanted))}); use a layout whose layers each hold one "
                             "group (--insert_mode alternate, without --shared_expert)")
        if not held & wanted:
            layer.requires_grad_(False)


def optimizer(model, args) -> torch.optim.AdamW:
    """AdamW (the Trainer's default settings) with the routers in their own group, for their own rate."""
    experts, routers = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (routers if ".router." in name else experts).append(p)
    groups = [{"params": experts, "lr": args.learning_rate}]
    if routers:
        groups.append({"params": routers, "lr": args.router_learning_rate or args.learning_rate})
    return torch.optim.AdamW(groups, lr=args.learning_rate, weight_decay=0.0)


class DialogueCollator(Collator):
    """The data collator plus each sample's id (for --log_samples and shard checks)."""

    def __call__(self, features):
        batch = super().__call__(features)
        batch["sample_id"] = torch.stack([f["sample_id"] for f in features])
        return batch


if __name__ == "__main__":
    main()
