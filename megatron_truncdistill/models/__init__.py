"""Qwen3 / Qwen2 / Llama decoders as megatron-core GPTModels, built from a Hugging Face config.

Import from the submodules (``models.builder.build_gpt_model``, ``models.hf_config.architecture_from_hf``):
this package stays import-free so that config validation (``hf_config``, pure Python) does not pay for
megatron-core's imports.
"""
