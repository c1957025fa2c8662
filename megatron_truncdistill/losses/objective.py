"""The training objective: α_kd·KD + (1 − α_kd)·CE over the loss mask, with per-section KD sums for logging.

The paper's setting is forward KL, α_kd = 0.5, T = 1. CE comes from the same pass that computes the student's
softmax for KD (``chunk_loss``): -log p_s[label] on the rank owning the label's row, all-reduced with the
divergence's sums; no second softmax unless T != 1 (KD at T, CE at 1).

Reductions follow megatron-core's ``loss_func``: ``loss_sum`` is Σ over masked tokens and the caller divides by the
global token count. Inputs ``labels``, ``loss_mask``, ``sections`` are ``[b, s]`` as the data loader yields them;
logits are ``[s, b, v/tp]`` as the output layer yields them. Logits from megatron's output layer are full-sequence
even under sequence parallelism (the layer gathers the sequence first), so the logits entry point needs nothing
for it; the fused entry point takes ``sequence_parallel`` because it replaces that layer.

Logging: ``kd_sum``/``ce_sum`` are over masked tokens (what the loss optimizes). The per-section KD sums are over
every real token of the section, masked or not, so that with ``loss_sections=[COT]`` the answer's KD is still
reported. Real tokens are those whose section code is PROMPT, COT or ANSWER; padding positions must carry any
other code (the KD of padding positions is computed but never counted).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import torch
import torch.distributed as dist

from megatron_truncdistill.config import KDObjectiveFields
from megatron_truncdistill.losses.chunk_loss import LossSpec
from megatron_truncdistill.losses.divergences import make_divergence
from megatron_truncdistill.losses.fused_linear_kd import fused_linear_kd_terms
from megatron_truncdistill.losses.vocab_parallel_kd import kd_loss_spec, vocab_parallel_kd_terms
from megatron_truncdistill.sections import Section


@dataclass
class KDObjectiveConfig(KDObjectiveFields):
    """How the student is trained on each token: α_kd·KD + (1 − α_kd)·CE (fields: ``config.KDObjectiveFields``)."""

    inplace_backward: bool = False
    """Logits entry point only: write dL/dlogits into the student logits during the forward (megatron-core's CE
    trick), saving a logits-sized buffer. Safe when nothing reads the logits after the loss."""

    def __post_init__(self):
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if not 0.0 <= self.kd_weight <= 1.0:
            raise ValueError(f"kd_weight must be in [0, 1], got {self.kd_weight}")
        if self.chunk_size is not None and self.chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1 or null, got {self.chunk_size}")
        make_divergence(self.divergence, beta=self.beta, alpha=self.alpha)  # names the bad key's value

    def loss_spec(self, *, with_teacher: bool) -> LossSpec:
        """Per-token loss of this config; without a teacher, CE alone at weight 1 (the student-only baseline)."""
        if not with_teacher:
            return LossSpec(None, temperature=1.0, kd_weight=0.0, ce_weight=1.0)
        return kd_loss_spec(self.divergence, temperature=self.temperature, beta=self.beta, alpha=self.alpha,
                            t2_scale=self.t2_scale, kd_weight=self.kd_weight, ce_weight=1.0 - self.kd_weight)


_PER_SECTION = {"per_section": True}  # a [len(Section)] field, logged as one statistic per section


@dataclass
class ObjectiveTerms:
    """One micro-batch's objective. Only ``loss_sum`` is differentiable; the rest is detached, for logging."""

    loss_sum: torch.Tensor  # scalar: Σ_masked [α_kd·KD + (1 − α_kd)·CE]; divide by the global token count
    num_tokens: torch.Tensor  # scalar: Σ loss_mask
    kd_sum: torch.Tensor  # scalar: Σ_masked KD (T² included under t2_scale; 0 without a teacher)
    ce_sum: torch.Tensor  # scalar: Σ_masked CE
    section_kd_sum: torch.Tensor = field(metadata=_PER_SECTION)  # [3] by Section: Σ KD over the section's tokens
    section_tokens: torch.Tensor = field(metadata=_PER_SECTION)  # [3] by Section: real tokens of the section

    @staticmethod
    def stat_names() -> tuple[str, ...]:
        """The name of every logged statistic, in ``stats()`` order: scalars by field name, per-section
        fields as ``<field>_<section>`` (``section_kd_sum_cot``). Derived from the fields: one definition."""
        names = []
        for f in fields(ObjectiveTerms):
            if f.metadata.get("per_section"):
                names.extend(f"{f.name}_{s.name.lower()}" for s in Section)
            else:
                names.append(f.name)
        return tuple(names)

    def stat_vector(self) -> torch.Tensor:
        """fp32 ``[len(stat_names())]`` of every term (``loss_sum`` detached), in field order."""
        return torch.cat([getattr(self, f.name).detach().float().reshape(-1) for f in fields(self)])

    def stats(self) -> dict[str, torch.Tensor]:
        """Every term (``loss_sum`` detached) as named fp32 scalars, ``stat_names()`` order."""
        values = self.stat_vector()
        names = self.stat_names()
        if len(values) != len(names):
            raise AssertionError(f"{len(values)} statistics for {len(names)} names: a per-section field "
                                 "lacks its metadata or has the wrong length")
        return dict(zip(names, values.unbind()))


STAT_NAMES = ObjectiveTerms.stat_names()


def _token_inputs(labels, loss_mask, sections, *, vocab_limit: int):
    """``[b, s]`` batch fields -> ``[s, b]``; labels of masked tokens must be real rows, others are zeroed.

    One host sync (``any``) per micro-batch: a label in the padded rows would silently train towards a row the
    softmax excludes, so it is an error here, not a NaN later.
    """
    labels, mask, sections = (x.transpose(0, 1) for x in (labels, loss_mask, sections))  # [b, s] -> [s, b]
    mask = mask.float().contiguous()
    bad = (mask != 0) & ((labels < 0) | (labels >= vocab_limit))
    if bool(bad.any()):
        pos = bad.nonzero()[0].tolist()
        raise ValueError(f"label {int(labels[pos[0], pos[1]])} at (batch {pos[1]}, position {pos[0]}) is outside "
                         f"the real vocabulary [0, {vocab_limit}) but the loss mask includes it")
    return torch.where(mask != 0, labels, 0).contiguous(), mask, sections


def _terms(loss_sum, kd, ce, mask, sections) -> ObjectiveTerms:
    """ObjectiveTerms from ``[s, b]`` per-token KD, CE, mask and section codes."""
    codes = torch.arange(len(Section), device=kd.device)
    onehot = (sections.unsqueeze(-1).long() == codes).float()  # [s, b] -> [s, b, 3]
    return ObjectiveTerms(loss_sum=loss_sum, num_tokens=mask.sum(), kd_sum=torch.dot(kd.reshape(-1), mask.reshape(-1)),
                          ce_sum=torch.dot(ce.reshape(-1), mask.reshape(-1)),
                          section_kd_sum=torch.einsum("sbc,sb->c", onehot, kd), section_tokens=onehot.sum((0, 1)))


def kd_ce_objective(student_logits: torch.Tensor, teacher_logits: torch.Tensor | None, *, labels: torch.Tensor,
                    loss_mask: torch.Tensor, sections: torch.Tensor, config: KDObjectiveConfig,
                    tp_group: dist.ProcessGroup | None = None, vocab_size: int | None = None) -> ObjectiveTerms:
    """The objective from output-layer logits.

    Args:
        student_logits: ``[s, b, v/tp]`` fp32/bf16. teacher_logits: same width, or None for CE only.
        labels, loss_mask, sections: ``[b, s]`` next-token ids, 0/1 (or float) loss weights, uint8 Section codes.
        vocab_size: real tokenizer rows (rows >= vocab_size are padding); None: all rows are real.
    """
    tp = 1 if tp_group is None else dist.get_world_size(tp_group)
    vocab_limit = student_logits.shape[-1] * tp if vocab_size is None else vocab_size
    labels, mask, sections = _token_inputs(labels, loss_mask, sections, vocab_limit=vocab_limit)
    loss, kd, ce = vocab_parallel_kd_terms(student_logits, teacher_logits, labels,
                                           spec=config.loss_spec(with_teacher=teacher_logits is not None),
                                           tp_group=tp_group, chunk_size=config.chunk_size, vocab_size=vocab_size,
                                           inplace_backward=config.inplace_backward)
    return _terms(torch.dot(loss.reshape(-1), mask.reshape(-1)), kd, ce, mask, sections)


def kd_ce_objective_fused(student_hidden: torch.Tensor, student_weight: torch.Tensor,
                          teacher_hidden: torch.Tensor | None, teacher_weight: torch.Tensor | None, *,
                          labels: torch.Tensor, loss_mask: torch.Tensor, sections: torch.Tensor,
                          config: KDObjectiveConfig, tp_group: dist.ProcessGroup | None = None,
                          vocab_size: int | None = None, sequence_parallel: bool = False) -> ObjectiveTerms:
    """The objective from the output layers' inputs, never holding the micro-batch's logits (``fused_linear_kd``).

    Args:
        student_hidden: ``[s, b, h]`` (``[s/tp, b, h]`` with ``sequence_parallel``); student_weight: ``[v/tp, h]``.
        teacher_hidden, teacher_weight: the teacher's, or both None for CE only.
        Other arguments: as ``kd_ce_objective``. ``loss_sum`` has gradients for student hidden and weight.
    """
    tp = 1 if tp_group is None else dist.get_world_size(tp_group)
    vocab_limit = student_weight.shape[0] * tp if vocab_size is None else vocab_size
    labels, mask, sections = _token_inputs(labels, loss_mask, sections, vocab_limit=vocab_limit)
    loss_sum, kd, ce = fused_linear_kd_terms(
        student_hidden, student_weight, teacher_hidden, teacher_weight, labels=labels, weights=mask,
        spec=config.loss_spec(with_teacher=teacher_weight is not None), tp_group=tp_group,
        sequence_parallel=sequence_parallel, chunk_size=config.chunk_size, vocab_size=vocab_size)
    return _terms(loss_sum, kd, ce, mask, sections)
