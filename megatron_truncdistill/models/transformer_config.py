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

from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from megatron.core.transformer import TransformerConfig

from megatron_truncdistill.config import FP8_FORMATS, PARAMS_DTYPES, RECOMPUTE_MODES, ModelBuildFields
from megatron_truncdistill.dtypes import torch_dtype
from megatron_truncdistill.models.hf_config import ModelArchitecture


@dataclass
class BuildOptions(ModelBuildFields):
    """How to build one model (teacher or student): the config's build fields (``config.ModelBuildFields``) plus
    what the run decides. The architecture itself comes from ModelArchitecture."""

    sequence_parallel: bool = False
    """Megatron sequence parallelism (TP > 1, GPU only)."""
    perform_initialization: bool = True
    """Random-initialize parameters; off when the weights are loaded right after (saves minutes on big models)."""
    calculate_per_token_loss: bool = False
    """megatron-core's per-token loss convention: the loss function returns Σ tokens and its token count, and
    gradients are divided by the step's global token count (DDP reads it when it is built: a build option)."""

    @classmethod
    def from_fields(cls, build: ModelBuildFields, **run_options) -> "BuildOptions":
        """The build fields of a ``ModelConfig`` (or any ``ModelBuildFields``) plus the run's options."""
        return cls(**{f.name: getattr(build, f.name) for f in fields(ModelBuildFields)}, **run_options)

    @property
    def torch_dtype(self) -> torch.dtype:
        return torch_dtype(self.params_dtype)


def transformer_config(arch: ModelArchitecture, options: BuildOptions, *, tp_size: int, pp_size: int,
                       use_te: bool, device: torch.device | None = None) -> TransformerConfig:
    """The megatron-core config for ``arch`` at this TP×PP size; ``use_te`` is the resolved layer-spec choice.

    ``device`` (the run's, ``ParallelContext.device``): parameters are allocated on the host when it is the CPU,
    on the GPU otherwise; None = the CPU unless CUDA is available."""
    _check_options(options, tp_size=tp_size)
    on_cpu = device.type == "cpu" if device is not None else not torch.cuda.is_available()
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
        params_dtype=options.torch_dtype,
        pipeline_dtype=options.torch_dtype,  # dtype of the activations sent between stages
        bf16=options.torch_dtype == torch.bfloat16,
        use_cpu_initialization=on_cpu,
        perform_initialization=options.perform_initialization,
        bias_activation_fusion=fused,
        masked_softmax_fusion=fused,
        apply_rope_fusion=fused,
        bias_dropout_fusion=fused,
        persist_layer_norm=False,
        gradient_accumulation_fusion=False,
        calculate_per_token_loss=options.calculate_per_token_loss,
        **_fp8_fields(options),
        **_recompute_fields(options.recompute),
    )


def _check_options(options: BuildOptions, *, tp_size: int) -> None:
    """Refuse what megatron-core would otherwise assert on deep inside the build, with the option named."""
    if options.params_dtype not in PARAMS_DTYPES:
        raise ValueError(f"params_dtype={options.params_dtype!r}: expected one of {PARAMS_DTYPES}")
    if options.sequence_parallel and (tp_size == 1 or not torch.cuda.is_available()):
        raise ValueError("sequence_parallel needs tensor_model_parallel_size > 1 on GPUs")
    if options.recompute not in (None, *RECOMPUTE_MODES):
        raise ValueError(f"recompute={options.recompute!r}: expected one of {RECOMPUTE_MODES} or None")
    if options.fp8 not in (None, *FP8_FORMATS):
        raise ValueError(f"fp8={options.fp8!r}: expected one of {FP8_FORMATS} or None")


def _fp8_fields(options: BuildOptions) -> dict:
    if options.fp8 is None:
        return {}
    return {"fp8": options.fp8, "fp8_recipe": options.fp8_recipe,
            "first_last_layers_bf16": options.fp8_first_last_bf16}


def _recompute_fields(recompute: str | None) -> dict:
    if recompute == "full":  # every layer recomputes its whole forward in backward
        return {"recompute_granularity": "full", "recompute_method": "uniform", "recompute_num_layers": 1}
    if recompute == "selective":  # megatron's default selective set: core attention only
        return {"recompute_granularity": "selective"}
    return {}
