"""Models at real shapes with random weights, and a tokenizer made on the spot: what the GPU check
(`scripts/gpu_check.sh`, `tests/test_cuda.py`, `benchmarks/bench_gpu.py`) runs on a machine that has no
model weights and no network.

    SHAPES["embedded"]   SmolLM2-135M (the embedded model): Llama, 30 layers, hidden 576, 9/3 heads
    SHAPES["llama2-7b"]  Llama-2-7B (the paper's base): 32 layers, hidden 4096, 32 heads, MLP 11008

Weights are random, so replies are noise: these check that the code runs on a device and measure speed,
never quality. The tokenizer is character level with the embedded model's chat markers and the shape's
vocabulary size (padded with placeholder tokens), so prompts have realistic lengths (a character a token:
longer than real ones) and every id the model samples decodes.
"""
from __future__ import annotations

import string
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

SHAPES = {
    # config.json of HuggingFaceTB/SmolLM2-135M-Instruct (what hirpf.embedded converts)
    "embedded": dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                     num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192,
                     rope_theta=100000.0, rms_norm_eps=1e-5, tie_word_embeddings=True),
    # config.json of meta-llama/Llama-2-7b-chat-hf
    "llama2-7b": dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                      num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=4096,
                      rope_theta=10000.0, rms_norm_eps=1e-5, tie_word_embeddings=False),
}
SPECIAL = {"pad": "<|pad|>", "bos": "<|im_start|>", "eos": "<|im_end|>", "unk": "<|unk|>"}
CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def config_of(shape: str, layers: int | None = None) -> LlamaConfig:
    """The shape's `LlamaConfig` (optionally cut to `layers` decoder layers), with this module's special ids."""
    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}; choose one of {', '.join(SHAPES)}")
    values = dict(SHAPES[shape])
    if layers is not None:
        values["num_hidden_layers"] = layers
    return LlamaConfig(**values, pad_token_id=0, bos_token_id=1, eos_token_id=2)


def character_tokenizer(vocab_size: int) -> PreTrainedTokenizerFast:
    """One token per printable character, the four special tokens first (ids 0-3, as `config_of` says), and
    placeholder tokens up to `vocab_size`; left padding, as `hirpf.base_model.load_base_model` sets."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

    specials = [SPECIAL[k] for k in ("pad", "bos", "eos", "unk")]
    symbols = specials + sorted(set(string.printable) - set("\x0b\x0c"))
    symbols += [f"<{i}>" for i in range(vocab_size - len(symbols))]
    if len(symbols) != vocab_size:
        raise ValueError(f"vocab_size {vocab_size} is smaller than the {len(symbols)} characters it must hold")
    core = Tokenizer(models.WordLevel({s: i for i, s in enumerate(symbols)}, unk_token=SPECIAL["unk"]))
    core.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    core.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, pad_token=SPECIAL["pad"], bos_token=SPECIAL["bos"],
                                        eos_token=SPECIAL["eos"], unk_token=SPECIAL["unk"],
                                        additional_special_tokens=[SPECIAL["bos"], SPECIAL["eos"]])
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.padding_side = "left"
    return tokenizer


def random_model(shape: str, dtype: torch.dtype = torch.float16, device: str = "cuda", layers: int | None = None,
                 seed: int = 0) -> LlamaForCausalLM:
    """The shape's model with random weights, created directly on `device` in `dtype` (a 7B model is never
    materialised in float32 on the host), in eval mode, ready for `hirpf.engine.Engine`."""
    torch.manual_seed(seed)
    with torch.device(device):
        model = LlamaForCausalLM._from_config(config_of(shape, layers), dtype=dtype)
    model.generation_config.pad_token_id = model.config.pad_token_id
    model.generation_config.eos_token_id = model.config.eos_token_id
    model.hirpf_base_model = f"random {shape}"
    return model.eval()


def save_random_base(shape: str, directory: str | Path, dtype: torch.dtype = torch.float16,
                     layers: int | None = None) -> Path:
    """A base model directory (random weights + the tokenizer) that `load_base_model`, the trainer and
    bitsandbytes' 8-bit loading read like a downloaded one."""
    directory = Path(directory)
    model = random_model(shape, dtype=dtype, device="cpu", layers=layers)
    model.save_pretrained(directory)
    character_tokenizer(model.config.vocab_size).save_pretrained(directory)
    return directory


def random_engine(shape: str, dtype: torch.dtype = torch.float16, device: str = "cuda", layers: int | None = None,
                  rank: int = 8, expert_scale: float = 0.02):
    """An `Engine` on the shape's random model with random rank-`rank` experts on attention and MLP (the
    shipped experts' targets), small enough not to swamp the base model's activations."""
    from app.tiny_model import randomize_experts
    from hirpf.engine import Engine
    from hirpf.experts import ExpertConfig
    from hirpf.inject import add_experts

    model = random_model(shape, dtype=dtype, device=device, layers=layers)
    add_experts(model, ExpertConfig(rank=rank, dropout=0.0, target_modules=EXPERT_TARGETS))
    randomize_experts(model, scale=expert_scale)
    return Engine(model.eval(), character_tokenizer(model.config.vocab_size))


EXPERT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
