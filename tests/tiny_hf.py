"""Tiny random Hugging Face decoders (Qwen3, Qwen2, Llama 3.1) saved as sharded safetensors, and their logits.

Shapes follow the issue: hidden 64, 4 heads, 2 KV heads, vocab 512; fp32 so comparisons are tight. Shards are
forced small so every checkpoint has several (exercising the index).
"""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

LLAMA3_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 8192, "rope_theta": 500000.0}


def tiny_config(family: str, *, tied: bool, num_layers: int = 2):
    """A transformers config for ``family`` ("qwen3", "qwen2", "llama") at test size."""
    from transformers import LlamaConfig, Qwen2Config, Qwen3Config

    common = dict(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=num_layers,
                  intermediate_size=96, vocab_size=512, tie_word_embeddings=tied, rms_norm_eps=1e-6,
                  dtype="float32")
    if family == "qwen3":
        # head_dim 32 ≠ hidden / heads = 16, as in the real Qwen3 models (head_dim 128 everywhere)
        return Qwen3Config(head_dim=32, rope_theta=1e6, **common)
    if family == "qwen2":
        return Qwen2Config(rope_theta=1e6, **common)
    if family == "llama":
        return LlamaConfig(max_position_embeddings=131072, rope_scaling=dict(LLAMA3_ROPE), **common)
    raise ValueError(family)


def save_tiny_model(family: str, directory: Path, *, tied: bool, seed: int = 0, num_layers: int = 2) -> Path:
    """Random-init a tiny model (norm weights randomized too) and save it as ≥ 2 safetensors shards."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(family, tied=tied, num_layers=num_layers),
                                             dtype=torch.float32)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):  # ones by default: randomize so a swapped norm cannot pass
                param.uniform_(0.5, 1.5)
            elif name.endswith(".bias"):
                param.normal_(0.0, 0.1)
    model.save_pretrained(directory, safe_serialization=True, max_shard_size="100KB")
    assert len(list(directory.glob("*.safetensors"))) >= 2, "tiny checkpoints must be sharded"
    return directory


def hf_logits(directory: Path, tokens: np.ndarray) -> np.ndarray:
    """transformers' fp32 logits ``[b, s, V_hf]`` for ``tokens`` ``[b, s]``."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(torch.from_numpy(tokens)).logits.numpy()


def sample_tokens(batch: int = 2, seq: int = 12, vocab: int = 512, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, vocab, size=(batch, seq), dtype=np.int64)


TINY_MODELS = {  # name → (family, tied): both tie settings, Qwen3 QK-norm, Llama-3 RoPE scaling, Qwen2 qkv bias
    "qwen3": ("qwen3", False),
    "qwen3_tied": ("qwen3", True),
    "llama31": ("llama", False),
    "qwen2_tied": ("qwen2", True),
}


@functools.cache
def tiny_checkpoints() -> dict[str, tuple[Path, Path]]:
    """name → (HF dir, converted megatron checkpoint dir), built once per pytest process and shared by modules.

    Conversion runs in a forked world of one rank: the pytest process itself must never initialize
    torch.distributed (later forks would inherit it).
    """
    from gloo_ranks import run_gloo_ranks
    from mcore_jobs import convert_all

    root = Path(tempfile.mkdtemp(prefix="tiny_hf_"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    dirs = {}
    for seed, (name, (family, tied)) in enumerate(TINY_MODELS.items()):
        dirs[name] = (save_tiny_model(family, root / name, tied=tied, seed=seed), root / f"{name}.mcore")
    run_gloo_ranks(convert_all, 1, [(str(h), str(c)) for h, c in dirs.values()], timeout=120)
    return dirs


@functools.cache
def reference_logits(name: str) -> np.ndarray:
    return hf_logits(tiny_checkpoints()[name][0], sample_tokens())
