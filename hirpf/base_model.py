"""Load a base causal LM: the embedded model, or any local or hub Hugging Face model.

8-bit (bitsandbytes LLM.int8, the paper's setting) is the default when CUDA is available; `load_in_8bit`
forces it on or off. On CPU the 8-bit path works from the converted cache too, slowly.
"""
from __future__ import annotations

import logging

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from . import embedded

EMBEDDED = "embedded"
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
log = logging.getLogger(__name__)


def resolve_dtype(dtype: str, cuda: bool) -> torch.dtype:
    """'auto' is float32 on CPU (bf16 is slower there when batched) and bf16/fp16 on a GPU."""
    if dtype == "auto":
        if not cuda:
            return torch.float32
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose auto or one of {', '.join(DTYPES)}")
    return DTYPES[dtype]


def base_model_name(name: str) -> str:
    """The id recorded in expert checkpoints: the hub id for the embedded model, else what was given."""
    return embedded.MODEL_ID if name == EMBEDDED else name


def load_base_model(name: str = EMBEDDED, *, load_in_8bit: bool | None = None, dtype: str = "auto"):
    """(model, tokenizer) ready for batched generation: eval mode, left padding, a pad token."""
    cuda = torch.cuda.is_available()
    eight_bit = cuda if load_in_8bit is None else load_in_8bit
    path = str(embedded.ensure_embedded_model()) if name == EMBEDDED else name
    kwargs: dict = {"dtype": resolve_dtype(dtype, cuda)}
    if eight_bit:
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(load_in_8bit=True)
        kwargs["device_map"] = {"": 0} if cuda else {"": "cpu"}
    elif cuda:
        kwargs["device_map"] = {"": 0}
    log.info("loading base model %s (8-bit: %s, dtype: %s)", path, eight_bit, kwargs["dtype"])
    model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.padding_side = "left"  # decoder-only batches pad on the left so every row ends at its prompt
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.hirpf_base_model = base_model_name(name)
    model.eval()
    return model, tokenizer
