"""Vocab-parallel knowledge-distillation losses and the training objective (KD + CE)."""

from megatron_truncdistill.losses.divergences import DIVERGENCES
from megatron_truncdistill.losses.vocab_parallel_kd import vocab_parallel_kd_loss

__all__ = ["DIVERGENCES", "vocab_parallel_kd_loss"]
