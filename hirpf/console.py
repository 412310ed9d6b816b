"""`hirpf COMMAND ...`: the one console script (`pip install -e .`), each command its `python -m` twin.

    hirpf chat | prepare | export ...     python -m hirpf chat | prepare | export ...
    hirpf settings [--markdown]           python -m hirpf settings [--markdown]
    hirpf eval COMMAND ...                python -m hirpf.eval COMMAND ...
    hirpf train ...                       python -m training.train ...
    hirpf synthesize ...                  python -m training.synthesize ...
    hirpf annotation COMMAND ...          python -m annotation COMMAND ...
    hirpf app ...                         python app.py ...

Each command runs its module (or the app's entry file) with `runpy`, exactly as `python -m` does, so the two
forms cannot drift apart; and `hirpf` imports none of the sidecars (the import direction: `training` and
`annotation` import `hirpf`, never the reverse), it only names them.
"""
from __future__ import annotations

import runpy
import sys

from .paths import PROJECT_ROOT

# command -> (what runs: a module name, or the app's entry file; one-line help)
COMMANDS = {
    "chat": ("hirpf", "chat with an agent composed from identities"),
    "prepare": ("hirpf", "install and convert the embedded model now; print where it lives"),
    "export": ("hirpf", "write one identity set as a plain PEFT LoRA adapter"),
    "settings": ("hirpf", "every setting (environment variable) with its value now and where it came from"),
    "eval": ("hirpf.eval", "questionnaires, surveys, recognition, situations, debates"),
    "train": ("training.train", "train the identity experts (the sidecar trainer)"),
    "synthesize": ("training.synthesize", "synthesize identity dialogues for training"),
    "annotation": ("annotation", "the human-evaluation store: import, export, report, backup"),
    "app": ("app.py", "serve the Gradio app"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"  {name:<{width}}  {help_text}" for name, (_, help_text) in COMMANDS.items()]
    return "usage: hirpf COMMAND [ARGS ...]\n\ncommands:\n" + "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"hirpf: unknown command {command!r}\n\n{usage()}", file=sys.stderr)
        return 2
    target = COMMANDS[command][0]
    # The hirpf CLI's own subcommands keep their name; the others get the rest of the line.
    args = argv if target == "hirpf" else rest
    sys.argv = [f"hirpf {command}" if target != "hirpf" else "hirpf", *args]
    # The command's own exit (SystemExit, with its status or message) passes through untouched.
    if target.endswith(".py"):
        runpy.run_path(str(PROJECT_ROOT / target), run_name="__main__")
    else:
        runpy.run_module(target, run_name="__main__", alter_sys=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
