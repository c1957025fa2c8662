"""Hugging Face checkpoints in and out of megatron-core (README.md).

Import from the submodules (``convert.hf_to_mcore``, ``convert.mcore_to_hf``); the model-checkpoint layout they
write and read is ``checkpoint.model_checkpoint``'s. The package itself stays import-free so the CLI can refuse
bad input before megatron-core is imported.
"""
