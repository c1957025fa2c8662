"""Hugging Face checkpoints in and out of megatron-core, and the project's model-checkpoint layout."""

from megatron_truncdistill.convert.model_checkpoint import (
    ModelMeta,
    load_model_checkpoint,
    model_sharded_state_dict,
    read_model_meta,
    save_model_checkpoint,
    model_meta_files,
)

__all__ = ["ModelMeta", "load_model_checkpoint", "model_sharded_state_dict", "read_model_meta",
           "save_model_checkpoint", "model_meta_files"]
