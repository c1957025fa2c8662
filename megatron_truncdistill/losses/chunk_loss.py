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
    ce_weight: float = 0.0  # 0: no cross-entropy (labels ignored)

    @property
    def grad_scale(self) -> float:
        """d(kd_weight·kd_scale·D)/dz_s = kd_weight·kd_scale/T · ∂D/∂a, with a = z_s / T."""
        return self.kd_weight * self.kd_scale / self.temperature


@dataclass
class ChunkResult:
    """Per-token terms of one chunk; ``grad`` is a workspace view, valid until the next chunk."""

    kd: torch.Tensor | None  # [n] fp32, kd_scale·D (None without a teacher)
    ce: torch.Tensor | None  # [n] fp32 (None when ce_weight == 0)
    grad: torch.Tensor | None  # [n, real] fp32: d(kd_weight·kd + ce_weight·ce)/dz_s on the real rows of the shard


def _softmaxes(zs, zt, *, spec: LossSpec, shard: VocabShard, ws: Workspace):
    """(log p, p) buffer pairs for the student at T, the teacher at T and, when T != 1 and CE is on, the student
    at T = 1. Two all-reduces for all of them together."""
    n, inv_t = zs.shape[0], 1.0 / spec.temperature
    maxima = torch.stack([row_max(zs, shard)] + ([row_max(zt, shard)] if zt is not None else []))  # [1|2, n]
    all_reduce_(maxima, dist.ReduceOp.MAX, shard.group)
    jobs = [("s", zs, maxima[0], inv_t)]
    if zt is not None:
        jobs.append(("t", zt, maxima[1], inv_t))
    if spec.ce_weight and inv_t != 1.0:
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


def _owned_labels(labels: torch.Tensor, shard: VocabShard) -> tuple[torch.Tensor, torch.Tensor]:
    """Labels as local column indices (0 where another rank owns the row) and a float [n] ownership mask."""
    local = labels - shard.start
    owned = (local >= 0) & (local < shard.real)
    return torch.where(owned, local, 0).unsqueeze(1), owned.float()  # [n, 1], [n]


def chunk_loss(zs: torch.Tensor, zt: torch.Tensor | None, labels: torch.Tensor | None, *, spec: LossSpec,
               shard: VocabShard, ws: Workspace, need_grad: bool) -> ChunkResult:
    """KD and CE of one chunk and, if ``need_grad``, the gradient of the weighted per-token sum w.r.t. ``zs``.

    zs, zt: ``[n, >= real]`` logits of the chunk on this shard (any float dtype); labels: ``[n]`` global token ids
    (read only when ``spec.ce_weight``). CE per token is -log p_s[label] at T = 1, read from the owning shard's
    log-softmax before the divergence reuses that buffer; its gradient is p_s − onehot(label).
    """
    n = zs.shape[0]
    pairs = _softmaxes(zs, zt, spec=spec, shard=shard, ws=ws)
    (ls, ps), (ls1, ps1) = pairs["s"], pairs["s1"]
    parts = []
    if zt is not None:
        lt, pt = pairs["t"]
    if spec.ce_weight:  # before the divergence may overwrite ls (ls1 is ls when T = 1)
        index, owned = _owned_labels(labels, shard)
        target = ls1.gather(1, index).view(-1) if shard.real else torch.zeros(n, device=zs.device)  # [n, 1] -> [n]
        ce_part = target.mul_(owned).neg_().unsqueeze(0)  # this shard's share of -log p_s[label]: [1, n]
    scratch = ws.get("scratch", n)
    if zt is not None:
        parts.append(spec.divergence.partial_sums(ls, ps, lt, pt, scratch))  # [k, n]
    if spec.ce_weight:
        parts.append(ce_part)
    sums = all_reduce_(torch.cat(parts), dist.ReduceOp.SUM, shard.group)  # [k (+1 for CE), n]
    kd = sums[0] * spec.kd_scale if zt is not None else None
    ce = sums[-1] if spec.ce_weight else None
    if not need_grad:
        return ChunkResult(kd, ce, None)
    if zt is not None:
        grad = spec.divergence.grad(sums, ls, ps, lt, pt, scratch).mul_(spec.grad_scale)
        if spec.ce_weight:
            grad.add_(ps1, alpha=spec.ce_weight)
    else:
        grad = ps1.mul_(spec.ce_weight)  # CE only: p_s is not needed after this
    if spec.ce_weight and shard.real:
        grad.scatter_add_(1, index, owned.mul(-spec.ce_weight).unsqueeze(1))  # -onehot(label) on the owner
    return ChunkResult(kd, ce, grad)
