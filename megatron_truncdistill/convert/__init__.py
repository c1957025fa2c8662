"""Hugging Face checkpoints in and out of megatron-core, and the project's model-checkpoint layout (README.md).

Import from the submodules (``convert.model_checkpoint``, ``convert.hf_to_mcore``, ``convert.mcore_to_hf``): the
package itself stays import-free so the CLI can refuse bad input before megatron-core is imported.
"""
