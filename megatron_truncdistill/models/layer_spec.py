"""Pick the transformer-layer implementation: Transformer Engine's (FP8-capable, fused) or megatron-core's local one.

Both specs produce the same parameters and the same ``sharded_state_dict`` keys (the local spec maps its separate
norms onto TE's fused ``linear_qkv.layer_norm_weight`` / ``linear_fc1.layer_norm_weight`` names), so a checkpoint
written by one loads into the other: the CPU converter's checkpoints load into TE models on GPUs.
"""

from __future__ import annotations

import importlib.util

import torch
from megatron.core.models.gpt.gpt_layer_specs import (
    get_gpt_layer_local_spec,
    get_gpt_layer_with_transformer_engine_spec,
)
from megatron.core.transformer.spec_utils import ModuleSpec

from megatron_truncdistill.models.hf_config import ModelArchitecture


def transformer_engine_available() -> bool:
    """True when ``transformer_engine`` can be imported (it ships in the NGC PyTorch container)."""
    return importlib.util.find_spec("transformer_engine") is not None


def resolve_use_te(use_te: bool | None, *, fp8: bool) -> bool:
    """Default: TE when it imports and a GPU is present. FP8 or an explicit request without TE is an error."""
    available = transformer_engine_available()
    if fp8 and not available:
        raise ValueError("FP8 was requested but transformer_engine is not installed: FP8 runs only through "
                         "Transformer Engine (use the NGC PyTorch container or pip install transformer-engine)")
    if use_te and not available:
        raise ValueError("use_te=True but transformer_engine is not installed")
    if fp8 and use_te is False:
        raise ValueError("FP8 needs the Transformer Engine layer spec; use_te=False contradicts it")
    if use_te is None:
        return available and (fp8 or torch.cuda.is_available())
    return use_te


def gpt_layer_spec(arch: ModelArchitecture, *, use_te: bool) -> ModuleSpec:
    """The per-layer spec for ``arch`` (RMSNorm, optional q/k norm) with the chosen implementation."""
    if use_te:
        return get_gpt_layer_with_transformer_engine_spec(qk_layernorm=arch.qk_layernorm)
    return get_gpt_layer_local_spec(qk_layernorm=arch.qk_layernorm, normalization="RMSNorm")
