"""megatron-core's ``forward_step(data_iterator, model) -> (output, loss_func)`` for co-located distillation.

The forward step is where a micro-batch leaves the host: ``Batch.to(device)`` moves it once, as megatron-core's
schedule consumes it, and the stage and the loss function both read the moved batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch

from megatron_truncdistill.data.samples import Batch
from megatron_truncdistill.losses import KDObjectiveConfig, kd_ce_objective, kd_ce_objective_fused
from megatron_truncdistill.training.colocated import logits_from_hidden, output_weight


@dataclass(frozen=True)
class ObjectiveSetup:
    """What the last stage's loss needs besides the batch."""

    config: KDObjectiveConfig
    tp_group: object
    vocab_size: int  # real tokenizer rows; padded rows are masked out of both softmaxes
    fused: bool  # logits computed chunk by chunk inside the loss from hidden states
    sequence_parallel: bool


def _core(model):
    return model.module if hasattr(model, "module") else model


def _loss_func(stage, setup: ObjectiveSetup, batch: Batch, output):
    """Last stage: hidden states -> objective terms; returns megatron's (loss_sum, num_tokens, stats) triple."""
    student_hidden, teacher_hidden = output  # [s, b, h_s], [s, b, h_t] or None
    student, teacher = _core(stage.student), stage.teacher
    common = dict(labels=batch.labels, loss_mask=batch.loss_mask, sections=batch.sections, config=setup.config,
                  tp_group=setup.tp_group, vocab_size=setup.vocab_size)
    if setup.fused:
        terms = kd_ce_objective_fused(
            student_hidden, output_weight(student), teacher_hidden,
            output_weight(teacher) if teacher is not None else None,
            sequence_parallel=setup.sequence_parallel, **common)
    else:
        student_logits = logits_from_hidden(student, student_hidden)  # [s, b, v/tp]
        teacher_logits = None
        if teacher is not None:
            with torch.no_grad():
                teacher_logits = logits_from_hidden(teacher, teacher_hidden)  # [s, b, v/tp]
        terms = kd_ce_objective(student_logits, teacher_logits, **common)
    return terms.loss_sum, terms.num_tokens.detach().round().to(torch.int), terms.stats()


def make_forward_step(setup: ObjectiveSetup, *, device: torch.device):
    """The function handed to megatron-core's schedule: next micro-batch to ``device``, through the stage, and
    its loss function (labels, mask and sections read from the moved batch)."""

    def forward_step(data_iterator, model):
        batch = next(data_iterator).to(device)  # the one host-to-device move of this micro-batch
        return model(batch), partial(_loss_func, model, setup, batch)

    return forward_step
