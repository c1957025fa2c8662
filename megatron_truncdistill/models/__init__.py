"""Qwen3 / Qwen2 / Llama decoders as megatron-core GPTModels, built from a Hugging Face config."""

from megatron_truncdistill.models.builder import build_gpt_model, check_padded_vocab_size, padded_vocab_size
from megatron_truncdistill.models.hf_config import ModelArchitecture, architecture_from_hf
from megatron_truncdistill.models.transformer_config import BuildOptions, Fp8Options

__all__ = ["BuildOptions", "Fp8Options", "ModelArchitecture", "architecture_from_hf", "build_gpt_model",
           "check_padded_vocab_size", "padded_vocab_size"]
