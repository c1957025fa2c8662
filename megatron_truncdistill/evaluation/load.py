"""Load a project checkpoint (converter or trainer) into a single-process TP1/PP1 model for evaluation."""

from __future__ import annotations

from pathlib import Path

from megatron_truncdistill.checkpoint.train_state import resolve_checkpoint
from megatron_truncdistill.checkpoint.model_checkpoint import load_model_checkpoint, read_model_meta
from megatron_truncdistill.models.builder import build_gpt_model
from megatron_truncdistill.models.transformer_config import BuildOptions
from megatron_truncdistill.parallel import current_context


def load_for_eval(checkpoint: str | Path):
    """The model of ``checkpoint`` (a run's checkpoint root or one directory) on the current TP1/PP1 groups."""
    directory = resolve_checkpoint(checkpoint)
    meta = read_model_meta(directory)
    model = build_gpt_model(meta.architecture, current_context(), padded_vocab_size=meta.padded_vocab_size,
                            options=BuildOptions(params_dtype=meta.params_dtype, perform_initialization=False))
    load_model_checkpoint([model], directory)
    return model.eval(), meta
