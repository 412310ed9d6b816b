"""The trainer as the training tests run it: a small identity data file, and `training/train.py` in a
subprocess (one thread, its stderr shown when it fails)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def write_data(path: Path, n: int = 24) -> Path:
    pool = [(["Doctor"], "Does the clinic open early?", "Yes, we start rounds at seven."),
            (["AGR_high", "Artist"], "Can I see your sketches?", "Of course, take your time with them."),
            (["EXT_low"], "Coming to the party?", "I think I will stay home and read."),
            (["CON_high", "Programmer"], "Is the release ready?", "Almost: the last tests run tonight.")]
    records = []
    for i in range(n):
        adapters, question, answer = pool[i % len(pool)]
        records.append({"dialog": [{"role": "user", "content": f"{question} ({i})"},
                                   {"role": "assistant", "content": answer}], "active_adapters": adapters})
    path.write_text(json.dumps(records))
    return path


def train(*args, env=None, launcher=None):
    command = (launcher or [sys.executable]) + [str(ROOT / "training" / "train.py"), *map(str, args)]
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=900,
                            env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})
    assert result.returncode == 0, result.stderr[-3000:]
    return result
