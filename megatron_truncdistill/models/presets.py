"""Published Qwen3 architectures as HF config dicts, for planning and random-weight benchmarks.

Shapes as in each model's config.json on the Hugging Face Hub (Qwen/Qwen3-*). Training from real weights reads
the checkpoint's own config.json instead; these exist so that tools and benchmarks need no download.
"""

from __future__ import annotations

_QWEN3_COMMON = {"model_type": "qwen3", "architectures": ["Qwen3ForCausalLM"], "head_dim": 128,
                 "num_key_value_heads": 8, "vocab_size": 151936, "max_position_embeddings": 40960,
                 "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "initializer_range": 0.02,
                 "attention_bias": False, "torch_dtype": "bfloat16"}


def _qwen3(layers: int, hidden: int, heads: int, ffn: int, tied: bool) -> dict:
    return dict(_QWEN3_COMMON, num_hidden_layers=layers, hidden_size=hidden, num_attention_heads=heads,
                intermediate_size=ffn, tie_word_embeddings=tied)


PRESETS = {
    "qwen3-0.6b": _qwen3(28, 1024, 16, 3072, True),
    "qwen3-1.7b": _qwen3(28, 2048, 16, 6144, True),
    "qwen3-4b": _qwen3(36, 2560, 32, 9728, True),
    "qwen3-8b": _qwen3(36, 4096, 32, 12288, False),
    "qwen3-14b": _qwen3(40, 5120, 40, 17408, False),
    "qwen3-32b": _qwen3(64, 5120, 64, 25600, False),
}


def preset(name: str) -> dict:
    """A copy of the named preset's HF config; ValueError lists the known names."""
    key = name.lower()
    if key not in PRESETS:
        raise ValueError(f"unknown model preset {name!r} (known: {', '.join(PRESETS)})")
    return dict(PRESETS[key])
