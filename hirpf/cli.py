"""`python -m hirpf chat|prepare|export|settings`: talk to an identity-composed agent from the terminal;
export one identity set as a plain PEFT LoRA adapter; print the settings (`hirpf.environment`)."""
from __future__ import annotations

import argparse
import os
import sys

from .environment import SettingError
from .model_options import add_model_arguments, model_options


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m hirpf", description="HIRPF identity-driven role-playing agents")
    sub = parser.add_subparsers(dest="command", required=True)

    chat = sub.add_parser("chat", help="chat with an agent composed from identities")
    chat.add_argument("--mode", choices=["single", "multi"], default="single",
                      help="single: one reply to --user_prompt; multi: read user turns from stdin")
    chat.add_argument("--max_turns", type=int, default=5, help="multi mode: number of exchanges")
    chat.add_argument("--user_prompt", help="the user message (single mode; first turn in multi mode)")
    chat.add_argument("--active_adapter_names", default="",
                      help='identities, as a JSON list or a comma list: \'["Doctor","AGR_high"]\' or Doctor,AGR_high')
    chat.add_argument("--strength", default=None,
                      help="strength of chosen identities, 0 to 2 (1 = as trained, 0 = the prompt alone): "
                           "AGR_low=1.6,Doctor=0.5, or one number for all")
    add_model_arguments(chat)
    chat.add_argument("--cuda_devices", default=None, help="CUDA_VISIBLE_DEVICES for this run, e.g. 0 or 0,1")
    chat.add_argument("--conditioning", default="experts+prompt", choices=["experts+prompt", "experts", "prompt"],
                      help="how identities reach the model")
    sampling = chat.add_argument_group("sampling")
    sampling.add_argument("--max_new_tokens", type=int, default=128)
    sampling.add_argument("--do_sample", action=argparse.BooleanOptionalAction, default=True,
                          help="sample (default) or decode greedily (--no-do_sample)")
    sampling.add_argument("--temperature", type=float, default=0.7)
    sampling.add_argument("--top_p", type=float, default=0.9)
    sampling.add_argument("--top_k", type=int, default=50)
    sampling.add_argument("--repetition_penalty", type=float, default=1.1)
    sampling.add_argument("--num_beams", type=int, default=1)
    sampling.add_argument("--seed", type=int, default=None, help="seed for reproducible sampling")

    sub.add_parser("prepare", help="install and convert the embedded model now; print where it lives")

    export = sub.add_parser("export", help="write one fixed identity set as a standard PEFT LoRA adapter")
    export.add_argument("--identities", required=True, help="the identity set, strict: AGR_low,Doctor")
    export.add_argument("--strength", default=None,
                        help="strengths of its identities: AGR_low=1.6,Doctor=0.5 or one number")
    export.add_argument("--output", required=True,
                        help="directory for adapter_config.json and adapter_model.safetensors")
    export.add_argument("--gate", choices=["mean", "bias"], default="mean",
                        help="the fixed gate replacing each router: mean over the assistant tokens of held-out "
                             "dialogues (default), or the router at its bias alone")
    export.add_argument("--data", default=None,
                        help="calibration dialogues for --gate mean "
                             "(training format; default: the HIS identity dialogues)")
    export.add_argument("--held_out_fraction", type=float, default=0.1,
                        help="calibrate on the trainer's held-out split of --data (0: all of it)")
    export.add_argument("--split_seed", type=int, default=42, help="the trainer's split seed")
    export.add_argument("--limit", type=int, default=32, help="calibrate on at most this many dialogues")
    add_model_arguments(export, ("base_model", "lora_weights"))  # exported in float32, never 8-bit

    settings = sub.add_parser("settings", help="print every setting with its value now and where it came from")
    settings.add_argument("--markdown", action="store_true",
                          help="print the table of docs/configuration.md instead (the page is generated from it)")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    commands = {"prepare": lambda _: prepare(), "export": export, "settings": settings, "chat": chat}
    try:
        return commands[args.command](args)
    except SettingError as err:  # a bad environment variable, named
        print(f"error: {err}", file=sys.stderr)
        return 2


def prepare() -> int:
    from .embedded import ensure_embedded_model, find_gguf

    path = ensure_embedded_model()
    print(f"embedded model: {path}")
    print(f"source GGUF: {find_gguf()}")
    return 0


def settings(args) -> int:
    from .settings_table import bad_settings, markdown, text_table

    print(markdown() if args.markdown else text_table())
    return 2 if bad_settings() and not args.markdown else 0  # a deployment can check its settings with it


def export(args) -> int:
    from .dialogues import holdout_split, load_dialogues
    from .identities import IdentityError, IdentitySet
    from .paths import his_file

    try:
        identities = IdentitySet.parse(args.identities).with_strengths(args.strength)
    except IdentityError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    dialogues = None
    if args.gate == "mean":
        data = args.data or str(his_file("identity_dialogues.json"))
        try:
            dialogues, _ = load_dialogues(data, on_invalid="skip")
        except (OSError, ValueError) as err:
            print(f"error: cannot read calibration dialogues {data}: {err} (give --data, or --gate bias)",
                  file=sys.stderr)
            return 2
        if 0 < args.held_out_fraction < 1:
            _, dialogues = holdout_split(dialogues, args.held_out_fraction, args.split_seed)
        dialogues = dialogues[:args.limit]
    model = model_options(args)
    from .engine import Engine  # seconds of imports (torch, transformers): only once the input is known good
    from .export import export_identity_set

    try:
        engine = Engine.load(model.base_model, lora_weights=model.lora_weights, load_in_8bit=False, dtype="float32")
        path = export_identity_set(engine.model, engine.tokenizer, identities, args.output, args.gate, dialogues)
    except (OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"exported {identities} ({args.gate} gate{f', {len(dialogues)} dialogues' if dialogues else ''}) to {path}",
          file=sys.stderr)
    return 0


def chat(args) -> int:
    if args.cuda_devices is not None:  # must happen before torch initialises CUDA
        os.environ["CUDA_VISIBLE_DEVICES"] = args.cuda_devices
    from .context_limit import ContextLimitError
    from .identities import IdentitySet
    from .prompts import Conditioning
    from .sampling import Sampling

    if args.mode == "single" and not args.user_prompt:
        print("error: --user_prompt is required in single mode (or use --mode multi)", file=sys.stderr)
        return 2
    if args.max_turns < 1:
        print(f"error: --max_turns must be at least 1, got {args.max_turns}", file=sys.stderr)
        return 2
    try:
        report = IdentitySet.sanitize(args.active_adapter_names)
        identities = report.identities.with_strengths(args.strength)
        sampling = Sampling(max_new_tokens=args.max_new_tokens, do_sample=args.do_sample,
                            temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
                            repetition_penalty=args.repetition_penalty, num_beams=args.num_beams, seed=args.seed)
    except ValueError as err:  # malformed identities or strengths (unknown names are only dropped), or sampling
        print(f"error: {err}", file=sys.stderr)
        return 2
    model = model_options(args)
    conditioning = Conditioning.parse(args.conditioning)
    print(report.describe() if not identities.strengths else f"{report.describe()}; strengths {identities}",
          file=sys.stderr)

    from .engine import Engine  # seconds of imports (torch, transformers): only once the input is known good

    try:
        engine = Engine.load(model.base_model, lora_weights=model.lora_weights, load_in_8bit=model.load_in_8bit,
                             dtype=model.dtype)
    except (OSError, ValueError) as err:  # a missing or mismatched model or checkpoint (CheckpointError too)
        print(f"error: {err}", file=sys.stderr)
        return 2
    if engine.has_experts:
        print(f"experts: {getattr(engine.model, 'hirpf_expert_dir', '?')} ({conditioning.value})", file=sys.stderr)
    else:
        print("experts: no expert checkpoint given; identities act through the prompt only", file=sys.stderr)
        conditioning = engine.effective_conditioning(conditioning)

    history: list[dict] = []
    turns = 1 if args.mode == "single" else args.max_turns
    first = args.user_prompt
    for _turn in range(turns):
        if first is not None:
            user, first = first, None
        else:
            print("you> ", end="", file=sys.stderr, flush=True)
            line = sys.stdin.readline()
            if not line:
                break  # end of input
            user = line.strip()
            if not user:
                continue
        history.append({"role": "user", "content": user})
        try:  # the newest turns that fit the model's context
            fitted = engine.fit_history(history, identities, conditioning, sampling.max_new_tokens)
        except ContextLimitError as err:
            print(f"error: {err}", file=sys.stderr)
            history.pop()
            if args.mode == "single":
                return 2
            continue
        if fitted.left_out:
            print(f"({fitted.left_out} earlier turns left out: the model's context is {engine.context_limit} tokens)",
                  file=sys.stderr)
        reply = _print_streamed(_reply_stream(engine, fitted.history, identities, conditioning, sampling),
                                prefix="agent> " if args.mode == "multi" else "")
        history.append({"role": "assistant", "content": reply})
    return 0


def _reply_stream(engine, history, identities, conditioning, sampling):
    """The reply as it grows, served by the engine's scheduler (the path the app's visitors share); beam
    search, one sequence kept from several, is not a scheduler row, so it goes through `Engine.stream`."""
    if sampling.num_beams > 1:
        return engine.stream(history, identities, conditioning, sampling)
    return engine.scheduler().stream(history, identities, conditioning, sampling)


def _print_streamed(chunks, prefix: str) -> str:
    shown = ""
    print(prefix, end="", flush=True)
    for text in chunks:
        if text.startswith(shown):
            print(text[len(shown):], end="", flush=True)
        shown = text
    print(flush=True)
    return shown
