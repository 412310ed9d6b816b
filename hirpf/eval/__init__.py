"""Evaluation and simulation of identity-composed agents (`python -m hirpf.eval <command>`).

Each command is a module with `add_arguments(parser)` and `run(args) -> dict` (the JSON document); the app's
tabs call the same functions. Shared options and identity-set parsing live in `common.py`.
"""
