"""Vocab-parallel knowledge-distillation losses and the training objective (α_kd·KD + (1 − α_kd)·CE).

Modules, bottom up: ``divergences`` (per-divergence math and closed-form gradients on one shard),
``shard_softmax`` (softmax over a TP-split vocabulary), ``chunk_loss`` (one chunk of tokens), ``vocab_parallel_kd``
(logits front end), ``fused_linear_kd`` (hidden-state front end), ``objective`` (KD + CE, logging terms).
"""

from megatron_truncdistill.losses.divergences import DIVERGENCES
from megatron_truncdistill.losses.fused_linear_kd import fused_linear_kd_loss
from megatron_truncdistill.losses.objective import STAT_NAMES, KDObjectiveConfig, ObjectiveTerms, kd_ce_objective, \
    kd_ce_objective_fused
from megatron_truncdistill.losses.vocab_parallel_kd import vocab_parallel_kd_loss

__all__ = ["DIVERGENCES", "STAT_NAMES", "KDObjectiveConfig", "ObjectiveTerms", "fused_linear_kd_loss",
           "kd_ce_objective", "kd_ce_objective_fused", "vocab_parallel_kd_loss"]
