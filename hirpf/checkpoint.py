"""Expert checkpoints: `adapter_config.json` + `adapter_model.safetensors` (or a legacy `adapter_model.bin`).

adapter_config.json holds the format version, the expert config (layout, rank, alpha, targets, ...), the
identity groups, and the base model's id and shape fingerprint, so loading into the wrong base fails early.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from .experts import ExpertConfig
from .identities import GROUPS
from .inject import add_experts, expert_config, expert_state_dict, load_expert_state_dict

FORMAT = "hirpf-experts"
FORMAT_VERSION = 1
CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
LEGACY_WEIGHTS_FILE = "adapter_model.bin"
_FINGERPRINT_KEYS = ("model_type", "hidden_size", "num_hidden_layers", "num_attention_heads",
                     "num_key_value_heads", "intermediate_size", "vocab_size")
log = logging.getLogger(__name__)


class CheckpointError(ValueError):
    """A checkpoint that cannot be used with this model; the message says why."""


def base_fingerprint(model: nn.Module) -> dict:
    cfg = model.config
    return {k: getattr(cfg, k) for k in _FINGERPRINT_KEYS if getattr(cfg, k, None) is not None}


def save_experts(model: nn.Module, directory: str | Path, dtype: torch.dtype | None = None) -> Path:
    """Write the model's experts; `dtype` (e.g. float16 for a shipped copy) casts the stored tensors, which
    load back into the model's own dtype."""
    config = expert_config(model)
    if config is None:
        raise CheckpointError("the model holds no identity experts to save")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    document = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        **config.to_dict(),
        "base_model": config.base_model or getattr(model, "hirpf_base_model", ""),
        "groups": {g: list(m) for g, m in GROUPS.items()},
        "base_model_fingerprint": base_fingerprint(model),
    }
    (directory / CONFIG_FILE).write_text(json.dumps(document, indent=2) + "\n")
    state = {k: v.detach().to("cpu", dtype or v.dtype).contiguous() for k, v in expert_state_dict(model).items()}
    save_file(state, str(directory / WEIGHTS_FILE), metadata={"format": FORMAT})
    return directory


def read_config(directory: str | Path) -> tuple[ExpertConfig, dict]:
    """The expert config of a checkpoint and the fingerprint of the base model it was made for."""
    directory = Path(directory)
    path = directory / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(f"{directory} is not an expert checkpoint: {CONFIG_FILE} is missing")
    try:
        document = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path} is not valid JSON: {err}") from None
    if document.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a HIRPF expert config (format {document.get('format')!r})")
    if document.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path} has format version {document.get('format_version')}; "
                              f"this code reads version {FORMAT_VERSION}")
    if document.get("groups") != {g: list(m) for g, m in GROUPS.items()}:
        raise CheckpointError(f"{path} was made for other identity groups: {document.get('groups')}")
    fields = {k: v for k, v in document.items()
              if k not in ("format", "format_version", "groups", "base_model_fingerprint")}
    try:
        config = ExpertConfig.from_dict(fields)
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{path}: {err}") from None
    return config, document.get("base_model_fingerprint", {})


def load_experts(model: nn.Module, directory: str | Path) -> nn.Module:
    """Load experts from `directory` into `model`, adding the expert layers first if it has none."""
    directory = Path(directory)
    config, expected = read_config(directory)
    actual = base_fingerprint(model)
    differing = {k: (expected[k], actual.get(k)) for k in expected if actual.get(k) != expected[k]}
    if differing:
        shown = ", ".join(f"{k}: checkpoint {a}, model {b}" for k, (a, b) in differing.items())
        raise CheckpointError(f"{directory} was trained for another base model "
                              f"({config.base_model or 'unnamed'}): {shown}")
    model_name = getattr(model, "hirpf_base_model", "")
    if config.base_model and model_name and config.base_model != model_name:
        log.warning("experts in %s name base model %s; loading into %s of the same shape", directory,
                    config.base_model, model_name)
    state = _read_weights(directory)
    existing = expert_config(model)
    if existing is None:
        add_experts(model, config)
    elif _comparable(existing) != _comparable(config):
        raise CheckpointError(f"the model's experts ({existing.layout}, r={existing.rank}) differ from "
                              f"{directory} ({config.layout}, r={config.rank})")
    try:
        load_expert_state_dict(model, state)
    except ValueError as err:
        raise CheckpointError(f"{directory}: {err}") from None
    model.hirpf_expert_dir = str(directory)
    return model


def _comparable(config: ExpertConfig) -> dict:
    d = config.to_dict()
    d.pop("base_model")
    d.pop("dropout")
    return d


def _read_weights(directory: Path) -> dict[str, torch.Tensor]:
    safetensors_path, bin_path = directory / WEIGHTS_FILE, directory / LEGACY_WEIGHTS_FILE
    if safetensors_path.is_file():
        return load_file(str(safetensors_path))
    if bin_path.is_file():
        # weights_only: a .bin is a pickle; refuse anything but tensors.
        state = torch.load(bin_path, map_location="cpu", weights_only=True)
        if not isinstance(state, dict):
            raise CheckpointError(f"{bin_path} does not hold a state dict")
        return state
    raise CheckpointError(f"{directory} holds neither {WEIGHTS_FILE} nor {LEGACY_WEIGHTS_FILE}")
