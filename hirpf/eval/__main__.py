"""`python -m hirpf.eval <command> ...`: questionnaires, recognition, discrimination, situations, debates, surveys.

Commands are registered by module name and imported only when chosen, so one command's heavy or missing
dependencies never break another. A command module exposes `add_arguments(parser)` (its own options; the
shared ones come from `common.add_common_arguments`) and `run(args) -> dict` (the JSON document); a module
serving several commands reads `args.command`. Optional: `summarize(document) -> str`, the text printed
without `--json` (default: the document's top-level figures).
"""
from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys

from ..context_limit import ContextLimitError
from ..environment import SettingError
from .common import EvalError, add_common_arguments

# command -> (module, one-line help). Modules are imported lazily (see module docstring).
COMMANDS = {
    "scale": ("hirpf.eval.questionnaire", "personality questionnaire: factor scores and direction accuracy"),
    "profession": ("hirpf.eval.questionnaire", "profession questionnaire: own-field versus other-field scores"),
    "survey": ("hirpf.eval.survey", "answer distributions over a survey's options, by identity set"),
    "recognize": ("hirpf.eval.recognize", "identity recognition by likelihood against single-edit neighbours"),
    "discriminate": ("hirpf.eval.discriminate", "poles told apart and professions named in generated replies"),
    "situations": ("hirpf.eval.situations", "open-situation test: dialogues judged on all six identity slots"),
    "debate": ("hirpf.eval.debate", "two identity-composed agents debate a topic"),
}


def load_command(name: str):
    """The module of a command; a clear error when it is not available."""
    module_name = COMMANDS[name][0]
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name != module_name:
            raise  # the module exists but a dependency of it is missing: show the real error
        raise EvalError(f"command {name!r} is not available in this installation (module {module_name} "
                        "not found)") from None


def build_parser(command: str | None) -> argparse.ArgumentParser:
    """The top-level parser; only `command`'s module is imported to add its subparser."""
    parser = argparse.ArgumentParser(prog="python -m hirpf.eval", description="HIRPF evaluation and simulation")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        sub_parser = sub.add_parser(name, help=help_text, description=help_text)
        if name == command:
            module = load_command(name)
            module.add_arguments(sub_parser)
            add_common_arguments(sub_parser)
    return parser


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(message)s")
    try:
        parser = build_parser(command if command in COMMANDS else None)
        args = parser.parse_args(argv)
        document = load_command(args.command).run(args)
    except (EvalError, ContextLimitError, SettingError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.json:
        json.dump(document, sys.stdout, ensure_ascii=False)
        sys.stdout.write("\n")
    else:
        summarize = getattr(load_command(args.command), "summarize", headline)
        print(summarize(document))
    return 0


def headline(document: dict) -> str:
    """The document's top-level figures (numbers and short texts), one per line."""
    lines = [f"{key}: {value}" for key, value in document.items()
             if isinstance(value, (int, float, str)) or value is None]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
