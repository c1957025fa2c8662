"""One chunk of tokens: per-token KD and cross-entropy, and the closed-form gradient of their weighted sum.

Shared by the logits front end (``vocab_parallel_kd``) and the fused-hidden front end (``fused_linear_kd``): both
hand it ``[n, v/tp]`` logits of one chunk and consume the fp32 gradient it returns before the next chunk, so no
full-micro-batch fp32 copy of the vocabulary ever exists. Three all-reduces per chunk, each of a few ``[n]`` rows:
MAX of row maxima, SUM of exp sums, SUM of the divergence's partial sums (with the CE target logit).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

from megatron_truncdistill.losses.divergences import Divergence
from megatron_truncdistill.losses.shard_softmax import VocabShard, Workspace, all_reduce_, exp_shifted, normalize_, \
    row_max


@dataclass(frozen=True)
class LossSpec:
    """One token's loss: ``kd_weight · kd_scale · D(p_t, p_s) + ce_weight · CE``, D at temperature T, CE at T = 1."""

    divergence: Divergence | None  # None: no teacher, cross-entropy only (then temperature must be 1)
    temperature: float = 1.0
    kd_scale: float = 1.0  # T² under Hinton's t2_scale, else 1; part of the reported per-token KD
    kd_weight: float = 1.0
    ce_weight: float = 0.0  # CE is computed (for logging) whenever labels are given, even at weight 0

    @property
    def grad_scale(self) -> float:
        """d(kd_weight·kd_scale·D)/dz_s = kd_weight·kd_scale/T · ∂D/∂a, with a = z_s / T."""
        return self.kd_weight * self.kd_scale / self.temperature


@dataclass
class ChunkResult:
    """Per-token terms of one chunk; ``grad`` is a workspace view, valid until the next chunk."""

    kd: torch.Tensor | None  # [n] fp32, kd_scale·D (None without a teacher)
    ce: torch.Tensor | None  # [n] fp32 (None without labels)
    grad: torch.Tensor | None  # [n, real] fp32: d(kd_weight·kd + ce_weight·ce)/dz_s on the real rows of the shard


def _softmaxes(zs, zt, *, with_ce: bool, spec: LossSpec, shard: VocabShard, ws: Workspace):
    """(log p, p) buffer pairs for the student at T, the teacher at T and, when T != 1 and CE is on, the student
    at T = 1. Two all-reduces for all of them together."""
    n, inv_t = zs.shape[0], 1.0 / spec.temperature
    maxima = torch.stack([row_max(zs, shard)] + ([row_max(zt, shard)] if zt is not None else []))  # [1|2, n]
    all_reduce_(maxima, dist.ReduceOp.MAX, shard.group)
    jobs = [("s", zs, maxima[0], inv_t)]
    if zt is not None:
        jobs.append(("t", zt, maxima[1], inv_t))
    if with_ce and inv_t != 1.0:
        jobs.append(("s1", zs, maxima[0], 1.0))  # same max: the shift does not depend on T
    pairs = {name: (ws.get(f"l{name}", n), ws.get(f"p{name}", n)) for name, *_ in jobs}
    totals = torch.stack([exp_shifted(z, m, inv_temperature=it, shard=shard, log_out=pairs[name][0],
                                      prob_out=pairs[name][1]) for name, z, m, it in jobs])  # [k, n]
    all_reduce_(totals, dist.ReduceOp.SUM, shard.group)
    for (name, *_), total in zip(jobs, totals):
        normalize_(*pairs[name], total)
    if "s1" not in pairs:
        pairs["s1"] = pairs["s"]
    return pairs


@dataclass
class _Target:
    """Where each token's label lives on this shard, and this shard's share of -log p_s[label]."""

    index: torch.Tensor  # [n, 1] local column of the label (0 where another rank owns it)
    owned: torch.Tensor  # [n] 1.0 where this rank owns the label's row
    share: torch.Tensor  # [1, n] -log p_s[label] on the owner, 0 elsewhere: one SUM all-reduce completes it

    @classmethod
    def of(cls, labels: torch.Tensor, log_probs: torch.Tensor, shard: VocabShard) -> _Target:
        local = labels - shard.start
        owned = (local >= 0) & (local < shard.real)
        index = torch.where(owned, local, 0).unsqueeze(1)  # [n] -> [n, 1]
        if shard.real == 0:
            return cls(index, owned.float(), torch.zeros(1, labels.shape[0], device=labels.device))
        picked = log_probs.gather(1, index).view(-1)  # [n, 1] -> [n]
        return cls(index, owned.float(), picked.mul_(owned).neg_().unsqueeze(0))


def _combined_grad(sums, pairs, target: _Target | None, *, spec: LossSpec, shard: VocabShard, scratch):
    """d(kd_weight·kd_scale·D + ce_weight·CE)/dz_s on the shard: grad_scale·∂D/∂a + ce_weight·(p_s − onehot)."""
    ps1 = pairs["s1"][1]
    if spec.divergence is not None:
        ls, ps = pairs["s"]
        lt, pt = pairs["t"]
        grad = spec.divergence.grad(sums, ls, ps, lt, pt, scratch).mul_(spec.grad_scale)
        if spec.ce_weight:
            grad.add_(ps1, alpha=spec.ce_weight)
    else:
        grad = ps1.mul_(spec.ce_weight)  # CE only: p_s is not needed afterwards
    if target is not None and spec.ce_weight and shard.real:
        grad.scatter_add_(1, target.index, target.owned.mul(-spec.ce_weight).unsqueeze(1))  # -onehot(label)
    return grad


def chunk_loss(zs: torch.Tensor, zt: torch.Tensor | None, labels: torch.Tensor | None, *, spec: LossSpec,
               shard: VocabShard, ws: Workspace, need_grad: bool) -> ChunkResult:
    """KD and CE of one chunk and, if ``need_grad``, the gradient of the weighted per-token sum w.r.t. ``zs``.

    zs, zt: ``[n, >= real]`` logits of the chunk on this shard (any float dtype; zt None only for a CE-only spec);
    labels: ``[n]`` global token ids, or None for no CE. CE per token is -log p_s[label] at T = 1, read from the
    owning shard's log-softmax before the divergence reuses that buffer; its gradient is p_s − onehot(label).
    """
    pairs = _softmaxes(zs, zt, with_ce=labels is not None, spec=spec, shard=shard, ws=ws)
    target = None if labels is None else _Target.of(labels, pairs["s1"][0], shard)  # before ls is overwritten
    scratch, parts = ws.get("scratch", zs.shape[0]), []
    if zt is not None:
        parts.append(spec.divergence.partial_sums(*pairs["s"], *pairs["t"], scratch))  # [k, n]
    if target is not None:
        parts.append(target.share)  # [1, n]
    sums = all_reduce_(torch.cat(parts), dist.ReduceOp.SUM, shard.group)  # [k (+1 with CE), n]
    kd = sums[0] * spec.kd_scale if zt is not None else None
    ce = sums[-1] if target is not None else None
    grad = _combined_grad(sums, pairs, target, spec=spec, shard=shard, scratch=scratch) if need_grad else None
    return ChunkResult(kd, ce, grad)
