"""Hugging Face checkpoints in and out of megatron-core, and the project's model-checkpoint layout (README.md).

Import from the submodules (``convert.hf_to_mcore``, ``convert.mcore_to_hf``; the model-checkpoint layout is ``checkpoint.model_checkpoint``): the
package itself stays import-free so the CLI can refuse bad input before megatron-core is imported.
"""
