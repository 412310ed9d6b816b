"""Identity dialogue data for the trainer: read, validate against the identity rules, tokenize with
assistant-only labels, pad into batches, split off a held-out set.

The code lives in `hirpf/dialogues.py` (the evaluations score the same dialogues and `hirpf` never imports
`training`); this module is the trainer's name for it. Record format and sources: see there.
"""
from hirpf.dialogues import (  # noqa: F401  (re-exported: the trainer's data API)
    IGNORE,
    ROLES,
    Collator,
    Dialogue,
    InvalidRecord,
    LoadReport,
    holdout_split,
    load_dialogues,
    raw_records,
    tokenize,
    validate,
)
