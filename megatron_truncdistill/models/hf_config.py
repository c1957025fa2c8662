"""A Hugging Face ``config.json`` (Qwen3, Qwen2/2.5, Llama 3/3.1/3.2) → the few numbers a GPTModel needs.

Pure Python on purpose (no torch, no transformers): the trainer validates configs at start-up and the converter
records them, and both should fail on an unsupported option *before* anything heavy is imported or allocated.
Every option that would change the math and that megatron-core cannot express is refused by name rather than
silently dropped (sliding-window attention, o_proj bias, YaRN, ...).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

# model_type → the HF class name written into an exported config.json
SUPPORTED_ARCHITECTURES = {"qwen3": "Qwen3ForCausalLM", "qwen2": "Qwen2ForCausalLM", "llama": "LlamaForCausalLM"}

# megatron-core's RotaryEmbedding._apply_scaling hard-codes these Llama-3 values; only ``factor`` is a parameter.
_MCORE_LLAMA3_ROPE = {"low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}


@dataclass(frozen=True)
class ModelArchitecture:
    """Everything that fixes a decoder's shapes and math; built from a HF config by ``architecture_from_hf``."""

    family: str
    """HF ``model_type``: "qwen3", "qwen2" or "llama"."""
    num_layers: int
    hidden_size: int
    ffn_hidden_size: int
    """SwiGLU inner width (HF ``intermediate_size``); fc1 is twice this wide (gate and up)."""
    num_attention_heads: int
    num_query_groups: int
    """Key/value heads (GQA); HF ``num_key_value_heads``."""
    head_dim: int
    """Per-head width; Qwen3 sets it explicitly and it need not equal hidden_size / num_attention_heads."""
    vocab_size: int
    """Embedding rows in the HF checkpoint (often more than the tokenizer's vocabulary)."""
    max_position_embeddings: int
    norm_eps: float
    rope_theta: float
    rope_scaling_factor: float | None
    """Llama-3 RoPE frequency scaling factor, or None for plain RoPE."""
    qk_layernorm: bool
    """Qwen3: RMSNorm over head_dim on queries and keys before RoPE."""
    qkv_bias: bool
    """Qwen2: bias on q/k/v projections (never on o_proj or the MLP)."""
    tie_word_embeddings: bool
    init_std: float

    @property
    def hf_architecture(self) -> str:
        return SUPPORTED_ARCHITECTURES[self.family]

    @property
    def queries_per_group(self) -> int:
        return self.num_attention_heads // self.num_query_groups


def architecture_from_hf(config: Mapping[str, Any]) -> ModelArchitecture:
    """Parse a HF config dict; raises ValueError naming the first unsupported architecture or option."""
    family = config.get("model_type")
    if family not in SUPPORTED_ARCHITECTURES:
        names = config.get("architectures") or [family]
        raise ValueError(f"unsupported architecture {names[0]!r} (model_type={family!r}); supported: "
                         f"{', '.join(sorted(SUPPORTED_ARCHITECTURES.values()))}")
    _refuse_unsupported_options(config, family)
    heads, groups = config["num_attention_heads"], config.get("num_key_value_heads") or config["num_attention_heads"]
    if heads % groups != 0:
        raise ValueError(f"num_attention_heads={heads} is not a multiple of num_key_value_heads={groups}")
    theta, scaling_factor = _rope(config)
    return ModelArchitecture(
        family=family,
        num_layers=config["num_hidden_layers"],
        hidden_size=config["hidden_size"],
        ffn_hidden_size=config["intermediate_size"],
        num_attention_heads=heads,
        num_query_groups=groups,
        head_dim=config.get("head_dim") or config["hidden_size"] // heads,
        vocab_size=config["vocab_size"],
        max_position_embeddings=config.get("max_position_embeddings", 4096),
        norm_eps=float(config.get("rms_norm_eps", 1e-6)),
        rope_theta=theta,
        rope_scaling_factor=scaling_factor,
        qk_layernorm=family == "qwen3",
        qkv_bias=family == "qwen2",
        tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
        init_std=float(config.get("initializer_range", 0.02)),
    )


def _refuse_unsupported_options(config: Mapping[str, Any], family: str) -> None:
    """Options the HF classes honour but this builder does not reproduce; each is named in the error."""
    refusals = {
        "hidden_act": (config.get("hidden_act", "silu") != "silu", "only 'silu' (SwiGLU) is supported"),
        "use_sliding_window": (bool(config.get("use_sliding_window")), "sliding-window attention"),
        "mlp_bias": (bool(config.get("mlp_bias")), "MLP biases"),
        "pretraining_tp": (config.get("pretraining_tp", 1) not in (1, None), "pretraining_tp > 1"),
        "quantization_config": ("quantization_config" in config, "quantized checkpoints"),
        "partial_rotary_factor": (config.get("partial_rotary_factor", 1.0) not in (1, 1.0, None),
                                  "partial rotary embeddings"),
    }
    # Qwen2 always has q/k/v biases (hard-coded in the HF class); Llama/Qwen3 ``attention_bias`` also adds an
    # o_proj bias, which megatron-core's add_qkv_bias does not.
    if family != "qwen2":
        refusals["attention_bias"] = (bool(config.get("attention_bias")), "attention biases (incl. o_proj)")
    for option, (bad, what) in refusals.items():
        if bad:
            raise ValueError(f"unsupported option {option}={config.get(option)!r} for {family}: {what} "
                             "cannot be expressed by this model builder")


def _rope(config: Mapping[str, Any]) -> tuple[float, float | None]:
    """(theta, llama3 factor or None) from either config flavour.

    transformers < 5 writes ``rope_theta`` + ``rope_scaling``; transformers 5 writes ``rope_parameters`` holding
    both. Released Qwen3/Llama checkpoints use the former, checkpoints saved by transformers 5 the latter.
    """
    params = dict(config.get("rope_parameters") or config.get("rope_scaling") or {})
    theta = float(params.get("rope_theta", config.get("rope_theta", 10000.0)))
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type == "default":
        return theta, None
    if rope_type != "llama3":
        raise ValueError(f"unsupported option rope_scaling.rope_type={rope_type!r}: only 'default' and 'llama3'")
    for key, expected in _MCORE_LLAMA3_ROPE.items():
        if float(params.get(key, expected)) != expected:
            raise ValueError(f"unsupported option rope_scaling.{key}={params[key]!r}: megatron-core's Llama-3 "
                             f"RoPE scaling fixes it to {expected}")
    return theta, float(params["factor"])
