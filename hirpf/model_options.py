"""The model flags every command shares, defined once: `--base_model`, `--lora_weights`, `--load_in_8bit` and
`--dtype`. A flag given wins; else its environment variable (`hirpf.environment`, where the defaults and help
live); else the default. The chat CLI, the eval commands, the trainer and the app add them with
`add_model_arguments` and read them with `model_options`.
"""
from __future__ import annotations

import argparse
import shlex
from dataclasses import dataclass

from . import environment
from .environment import SETTINGS, Setting

# flag -> the setting behind it (--dtype has none: a run picks its precision, a deployment does not)
BACKED_FLAGS = {"base_model": SETTINGS["HIRPF_BASE_MODEL"], "lora_weights": SETTINGS["HIRPF_LORA_WEIGHTS"],
                "load_in_8bit": SETTINGS["HIRPF_LOAD_IN_8BIT"]}
MODEL_FLAGS = (*BACKED_FLAGS, "dtype")


@dataclass(frozen=True)
class ModelOptions:
    base_model: str  # "embedded", a local path or a hub id
    lora_weights: str | None  # a checkpoint directory, "default" (the shipped experts) or None (no experts)
    load_in_8bit: bool | None  # None: on when CUDA is available
    dtype: str


def flag_help(setting: Setting) -> str:
    """A flag's help: the setting's, with the variable and default behind it."""
    default = "" if setting.default is None else f"; default {environment.shown_default(setting)}"
    return f"{setting.help} (env {setting.name}{default})"


def add_model_arguments(parser: argparse.ArgumentParser | argparse._ArgumentGroup,
                        flags: tuple[str, ...] = MODEL_FLAGS) -> None:
    """Add the model flags named in `flags` (by default all of them). Their argparse defaults are None, so
    that `model_options` can tell a flag given from one left to the environment; the parser remembers which
    it added (`model_flags`), so that a command's own option of the same name (a list of --lora_weights, one
    per condition) is left to the command."""
    parser.set_defaults(model_flags=tuple(flags))
    for name in flags:
        if name == "dtype":
            parser.add_argument("--dtype", default="auto", help="auto, float32, float16 or bfloat16 (checked by "
                                "hirpf.base_model when the model loads; default auto)")
        elif name == "load_in_8bit":
            parser.add_argument("--load_in_8bit", action=argparse.BooleanOptionalAction, default=None,
                                help=flag_help(BACKED_FLAGS[name]))
        else:
            parser.add_argument(f"--{name}", default=None, help=flag_help(BACKED_FLAGS[name]))


def flag_default(parser: argparse.ArgumentParser, dest: str):
    """What `dest` holds when its flag is not given and no variable is set: for a model flag its setting's
    default (its argparse default is None), else argparse's. For commands rebuilt from recorded arguments."""
    if dest in BACKED_FLAGS and dest in (parser.get_default("model_flags") or ()):
        return BACKED_FLAGS[dest].default
    return parser.get_default(dest)


def command_line(script: str, parser: argparse.ArgumentParser, values: dict) -> str:
    """The command that runs `script` with the recorded `values` (its parsed arguments): every option that
    differs from the parser's default, and every required one, so that the command remakes what they made."""
    parts = ["python", script]
    for action in parser._actions:
        if not action.option_strings or action.dest == "help" or action.dest not in values:
            continue
        value = values[action.dest]
        if action.required or value != flag_default(parser, action.dest):
            if isinstance(value, bool):
                if action.const is value:  # the store_true / store_false spelling that gives this value
                    parts.append(action.option_strings[0])
            elif isinstance(value, (list, tuple)):
                parts += [action.option_strings[0], *map(str, value)]
            elif value is not None:
                parts += [action.option_strings[0], f"{value:g}" if isinstance(value, float) else str(value)]
    return shlex.join(parts)


def model_options(args: argparse.Namespace) -> ModelOptions:
    """The model that a command's model flags (those `add_model_arguments` added) and the environment describe."""
    flags = getattr(args, "model_flags", ())
    values = {}
    for name, setting in BACKED_FLAGS.items():
        given = getattr(args, name, None) if name in flags else None
        if given is None or given == "":
            values[name] = setting.value()
        else:  # a flag is read as its variable is ('none' for no experts)
            values[name] = given if isinstance(given, bool) else environment.read_as(setting.name, given)
    return ModelOptions(**values, dtype=getattr(args, "dtype", "auto") if "dtype" in flags else "auto")
