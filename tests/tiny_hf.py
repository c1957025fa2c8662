"""Tiny random Hugging Face decoders (Qwen3, Qwen2, Llama 3.1) saved as sharded safetensors, and their logits.

Shapes follow the issue: hidden 64, 4 heads, 2 KV heads, vocab 512; fp32 so comparisons are tight. Shards are
forced small so every checkpoint has several (exercising the index).
"""

from __future__ import annotations

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
    return directory


def hf_logits(directory: Path, tokens: np.ndarray) -> np.ndarray:
    """transformers' fp32 logits ``[b, s, V_hf]`` for ``tokens`` ``[b, s]``."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(torch.from_numpy(tokens)).logits.numpy()


def sample_tokens(batch: int = 2, seq: int = 12, vocab: int = 512, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, vocab, size=(batch, seq), dtype=np.int64)
