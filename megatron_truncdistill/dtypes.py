"""The one map between dtype names (config keys, checkpoint metadata, HF configs) and torch dtypes."""

from __future__ import annotations

import torch

from megatron_truncdistill.config import PARAMS_DTYPES

TORCH_DTYPES = {name: getattr(torch, name) for name in PARAMS_DTYPES}


def torch_dtype(name: str) -> torch.dtype:
    """``"bfloat16"`` -> ``torch.bfloat16``; ValueError for a name outside ``config.PARAMS_DTYPES``."""
    if name not in TORCH_DTYPES:
        raise ValueError(f"unsupported params dtype {name!r} (supported: {', '.join(PARAMS_DTYPES)})")
    return TORCH_DTYPES[name]


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.bfloat16`` -> ``"bfloat16"``; ValueError for a dtype models are never kept in."""
    for name, value in TORCH_DTYPES.items():
        if value == dtype:
            return name
    raise ValueError(f"unsupported params dtype {dtype} (supported: {', '.join(PARAMS_DTYPES)})")


def hf_params_dtype(hf_config: dict) -> str:
    """The params dtype a HF checkpoint is kept in here: bf16 stays bf16, anything else (fp32, fp16) is fp32
    (fp16 -> fp32 is lossless; megatron's fp16 mode with loss scaling is not used by this project)."""
    name = hf_config.get("dtype") or hf_config.get("torch_dtype") or "float32"
    return "bfloat16" if name == "bfloat16" else "float32"
