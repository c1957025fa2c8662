"""``ModelArchitecture`` + build options → megatron-core ``TransformerConfig`` with the HF models' exact math.

The HF ↔ megatron correspondence, option by option:
RMSNorm(eps)            → normalization="RMSNorm", layernorm_epsilon (also used by the Qwen3 q/k norms)
SwiGLU down(silu(gate) * up) → gated_linear_unit=True, activation_func=silu, fc1 = [gate; up]
GQA                     → num_query_groups = num_key_value_heads, kv_channels = head_dim
Qwen3 q_norm/k_norm     → qk_layernorm=True;  Qwen2 q/k/v bias → add_qkv_bias=True;  no other bias
dropout 0               → hidden_dropout = attention_dropout = 0 (the released configs use 0; KD wants it off)
RoPE theta / Llama-3 scaling are GPTModel arguments, not config fields (see builder.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from megatron.core.transformer import TransformerConfig

from megatron_truncdistill.models.hf_config import ModelArchitecture

FP8_FORMATS = ("hybrid", "e4m3")
RECOMPUTE_GRANULARITIES = ("full", "selective")


@dataclass(frozen=True)
class Fp8Options:
    """Transformer Engine FP8 training; the loss math stays in fp32 regardless."""

    format: str = "hybrid"
    """"hybrid" (e4m3 forward, e5m2 gradients) or "e4m3"."""
    recipe: str = "delayed"
    """megatron-core ``fp8_recipe``: "delayed", "tensorwise", "mxfp8" or "blockwise"."""
    first_last_layers_bf16: bool = False
    """Keep the first and last transformer layer in bf16 (the layers most sensitive to FP8 rounding)."""


@dataclass(frozen=True)
class BuildOptions:
    """How to build one model (teacher or student); the architecture itself comes from ModelArchitecture."""

    params_dtype: torch.dtype = torch.float32
    """fp32 or bf16 parameters (bf16 also turns on megatron's bf16 mode)."""
    use_te: bool | None = None
    """Transformer Engine layer spec; None = when TE imports and a GPU is present."""
    fp8: Fp8Options | None = None
    """FP8 through Transformer Engine; refused without it."""
    recompute: str | None = None
    """Activation recomputation: "full" (every layer, uniform) or "selective" (core attention); None = off."""
    sequence_parallel: bool = False
    """Megatron sequence parallelism (TP > 1, GPU only)."""
    perform_initialization: bool = True
    """Random-initialize parameters; off when the weights are loaded right after (saves minutes on big models)."""


def transformer_config(arch: ModelArchitecture, options: BuildOptions, *, tp_size: int, pp_size: int,
                       use_te: bool) -> TransformerConfig:
    """The megatron-core config for ``arch`` at this TP×PP size; ``use_te`` is the resolved layer-spec choice."""
    _check_options(arch, options, tp_size=tp_size)
    on_cpu = not torch.cuda.is_available()
    fused = use_te and not on_cpu  # the fused kernels (RoPE, softmax, bias-act) come from TE/CUDA
    return TransformerConfig(
        num_layers=arch.num_layers,
        hidden_size=arch.hidden_size,
        ffn_hidden_size=arch.ffn_hidden_size,
        num_attention_heads=arch.num_attention_heads,
        num_query_groups=arch.num_query_groups,
        kv_channels=arch.head_dim,
        normalization="RMSNorm",
        layernorm_epsilon=arch.norm_eps,
        gated_linear_unit=True,
        activation_func=F.silu,
        add_bias_linear=False,
        add_qkv_bias=arch.qkv_bias,
        qk_layernorm=arch.qk_layernorm,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        init_method_std=arch.init_std,
        tensor_model_parallel_size=tp_size,
        pipeline_model_parallel_size=pp_size,
        sequence_parallel=options.sequence_parallel,
        params_dtype=options.params_dtype,
        pipeline_dtype=options.params_dtype,  # dtype of the activations sent between stages
        bf16=options.params_dtype == torch.bfloat16,
        use_cpu_initialization=on_cpu,
        perform_initialization=options.perform_initialization,
        bias_activation_fusion=fused,
        masked_softmax_fusion=fused,
        apply_rope_fusion=fused,
        bias_dropout_fusion=fused,
        persist_layer_norm=False,
        gradient_accumulation_fusion=False,
        **_fp8_fields(options.fp8),
        **_recompute_fields(options.recompute),
    )


def _check_options(arch: ModelArchitecture, options: BuildOptions, *, tp_size: int) -> None:
    """Refuse what megatron-core would otherwise assert on deep inside the build, with the option named."""
    if arch.num_attention_heads % tp_size or arch.num_query_groups % tp_size:
        raise ValueError(f"tensor_model_parallel_size={tp_size} must divide num_attention_heads="
                         f"{arch.num_attention_heads} and num_key_value_heads={arch.num_query_groups}")
    if options.params_dtype not in (torch.float32, torch.bfloat16):
        raise ValueError(f"params_dtype={options.params_dtype} is not supported (float32 or bfloat16)")
    if options.sequence_parallel and (tp_size == 1 or not torch.cuda.is_available()):
        raise ValueError("sequence_parallel needs tensor_model_parallel_size > 1 on GPUs")
    if options.recompute not in (None, *RECOMPUTE_GRANULARITIES):
        raise ValueError(f"recompute={options.recompute!r}: expected one of {RECOMPUTE_GRANULARITIES} or None")
    if options.fp8 is not None and options.fp8.format not in FP8_FORMATS:
        raise ValueError(f"fp8.format={options.fp8.format!r}: expected one of {FP8_FORMATS}")


def _fp8_fields(fp8: Fp8Options | None) -> dict:
    if fp8 is None:
        return {}
    return {"fp8": fp8.format, "fp8_recipe": fp8.recipe, "first_last_layers_bf16": fp8.first_last_layers_bf16}


def _recompute_fields(recompute: str | None) -> dict:
    if recompute == "full":  # every layer recomputes its whole forward in backward
        return {"recompute_granularity": "full", "recompute_method": "uniform", "recompute_num_layers": 1}
    if recompute == "selective":  # megatron's default selective set: core attention only
        return {"recompute_granularity": "selective"}
    return {}
