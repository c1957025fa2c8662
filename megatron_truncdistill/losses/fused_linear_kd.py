"""KD (and CE) fused with the column-parallel output layer: logits exist one chunk of tokens at a time.

Takes the output layer's inputs, hidden states ``[s, b, h]`` and the weight shard ``[v/tp, h]``, for student and
teacher. Per chunk: logits = hidden @ weightᵀ (in the model's dtype, like the output layer), ``chunk_loss`` for the
fp32 loss and dL/dlogits, then dL/dhidden = dL/dlogits @ weight and dL/dweight += dL/dlogitsᵀ @ hidden. Neither
model's ``[s, b, v/tp]`` logits ever exist for the whole micro-batch.

Why the output is a weighted sum, not a per-token loss: dL/dweight = Σ_i g_i · dlogits_iᵀ · hidden_i needs each
token's incoming gradient g_i before the chunk's dlogits is dropped. So the per-token weights (the loss mask) are
an input and the result is the scalar Σ_i w_i · loss_i; the backward scales the two saved gradients by one number.
(Recomputing the logits in the backward instead would cost two more vocabulary-sized GEMMs, one of them the
teacher's.) This is the design of Liger-Kernel's fused linear cross-entropy.

Tensor parallelism: this replaces the output layer's GEMM, so it also does that layer's communication for the
hidden-state gradient, explicitly and outside autograd: all-reduce over TP, or with ``sequence_parallel`` the
hidden states arrive as ``[s/tp, b, h]``, are all-gathered along the sequence, and their gradient is
reduce-scattered back. The weight gradient is local to the shard.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

from megatron_truncdistill.losses.chunk_loss import LossSpec, chunk_loss
from megatron_truncdistill.losses.shard_softmax import VocabShard, Workspace, resolve_chunk_size
from megatron_truncdistill.losses.vocab_parallel_kd import kd_loss_spec


# Each chunk reads the [v/tp, h] weights in four GEMMs (two logits, two gradients); with fewer rows than this they
# are bound by reading the weights rather than by arithmetic (measured on CPU: 13 rows ~1.9x slower than 128).
GEMM_MIN_ROWS = 128


@dataclass(frozen=True)
class FusedPlan:
    """Static inputs of one fused call."""

    spec: LossSpec
    shard: VocabShard
    chunk_size: int | None
    sequence_parallel: bool


def _tp_size(group: dist.ProcessGroup | None) -> int:
    return 1 if group is None else dist.get_world_size(group)


def gather_sequence(hidden: torch.Tensor, group: dist.ProcessGroup | None) -> torch.Tensor:
    """``[s/tp, b, h]`` -> ``[s, b, h]``: all-gather the sequence shards along dim 0, megatron's SP order."""
    if _tp_size(group) == 1:
        return hidden
    parts = [torch.empty_like(hidden) for _ in range(_tp_size(group))]
    dist.all_gather(parts, hidden.contiguous(), group=group)
    return torch.cat(parts, dim=0)


def reduce_hidden_grad(grad: torch.Tensor, group: dist.ProcessGroup | None, *, sequence_parallel: bool):
    """Sum the hidden-state gradient over the vocab shards: all-reduce ``[s, b, h]``, or reduce-scatter it to
    ``[s/tp, b, h]`` under sequence parallelism."""
    size = _tp_size(group)
    if size == 1:
        return grad
    if not sequence_parallel:
        dist.all_reduce(grad, group=group)
        return grad
    out = grad.new_empty((grad.shape[0] // size, *grad.shape[1:]))
    dist.reduce_scatter_tensor(out, grad.contiguous(), group=group)
    return out


def _chunk_grads(grad_logits, hidden_chunk, weight, *, grad_hidden_rows, grad_weight):
    """Accumulate one chunk's dL/dhidden (``[n, h]``, into its rows) and dL/dweight (``[real, h]``, fp32)."""
    if grad_hidden_rows is not None:
        if weight.dtype == torch.float32:
            torch.mm(grad_logits, weight, out=grad_hidden_rows)  # [n, real] @ [real, h]
        else:  # GEMM in the model dtype, as the output layer's backward would; accumulate in fp32
            grad_hidden_rows.copy_(torch.mm(grad_logits.to(weight.dtype), weight))
    if grad_weight is not None:
        grad_weight.addmm_(grad_logits.t(), hidden_chunk.float())  # [real, n] @ [n, h] in fp32


class _FusedLinearKD(torch.autograd.Function):
    """Σ_i w_i (kd_weight·kd_i + ce_weight·ce_i) from hidden states; gradients for student hidden and weight."""

    @staticmethod
    def forward(ctx, s_hidden, s_weight, t_hidden, t_weight, labels, weights, plan: FusedPlan):
        spec, shard, group = plan.spec, plan.shard, plan.shard.group
        hs = gather_sequence(s_hidden, group) if plan.sequence_parallel else s_hidden
        ht = None
        if t_hidden is not None:
            ht = gather_sequence(t_hidden, group) if plan.sequence_parallel else t_hidden
            ht = ht.reshape(-1, ht.shape[-1])  # [s, b, h_t] -> [s*b, h_t]
        seq_shape = hs.shape[:2]
        hs = hs.reshape(-1, hs.shape[-1])  # [s, b, h] -> [s*b, h]
        tokens, (need_h, need_w) = hs.shape[0], ctx.needs_input_grad[:2]
        w_s = s_weight[: shard.real]  # [real, h]: padded rows produce no logits and get zero gradient
        w_t = None if t_weight is None else t_weight[: shard.real]  # [real, h_t]
        grad_h = torch.empty(tokens, hs.shape[1], dtype=torch.float32, device=hs.device) if need_h else None
        grad_w = torch.zeros(s_weight.shape, dtype=torch.float32, device=hs.device) if need_w else None
        kd, ce = (torch.zeros(tokens, dtype=torch.float32, device=hs.device) for _ in range(2))
        weights = weights.reshape(-1).float()  # [s, b] -> [s*b]
        labels = None if labels is None else labels.reshape(-1)  # [s, b] -> [s*b]
        chunk = resolve_chunk_size(plan.chunk_size, tokens=tokens, width=shard.width, device=hs.device,
                                   min_rows=GEMM_MIN_ROWS)
        ws = Workspace(chunk, shard.real, hs.device)
        for start in range(0, tokens, chunk):
            rows = slice(start, min(start + chunk, tokens))
            n = rows.stop - rows.start
            zs = torch.mm(hs[rows], w_s.t(), out=ws.get("zs", n, hs.dtype))  # [n, real]
            zt = None if w_t is None else torch.mm(ht[rows], w_t.t(), out=ws.get("zt", n, ht.dtype))
            out = chunk_loss(zs, zt, None if labels is None else labels[rows], spec=spec, shard=shard, ws=ws,
                             need_grad=need_h or need_w)
            kd[rows] = 0.0 if out.kd is None else out.kd
            ce[rows] = 0.0 if out.ce is None else out.ce
            if need_h or need_w:
                _chunk_grads(out.grad.mul_(weights[rows].unsqueeze(1)), hs[rows], w_s,
                             grad_hidden_rows=None if grad_h is None else grad_h[rows],
                             grad_weight=None if grad_w is None else grad_w[: shard.real])
        if need_h:
            grad_h = reduce_hidden_grad(grad_h.view(*seq_shape, -1), group, sequence_parallel=plan.sequence_parallel)
            grad_h = grad_h.to(s_hidden.dtype)  # [s(/tp), b, h]
        ctx.save_for_backward(grad_h, None if grad_w is None else grad_w.to(s_weight.dtype))
        ctx.mark_non_differentiable(kd, ce)
        loss = torch.dot(weights, (kd * spec.kd_weight).add_(ce, alpha=spec.ce_weight))
        return loss, kd.view(seq_shape), ce.view(seq_shape)  # [s*b] -> [s, b]

    @staticmethod
    def backward(ctx, grad_loss, grad_kd, grad_ce):
        grad_h, grad_w = ctx.saved_tensors
        grad_h = None if grad_h is None else grad_h.mul_(grad_loss)
        grad_w = None if grad_w is None else grad_w.mul_(grad_loss)
        return grad_h, grad_w, None, None, None, None, None


def fused_shard(s_hidden, s_weight, t_hidden, t_weight, *, tp_group, vocab_size) -> VocabShard:
    """Check the student/teacher output-layer inputs and return this rank's VocabShard."""
    if s_hidden.dim() != 3 or s_weight.dim() != 2 or s_hidden.shape[-1] != s_weight.shape[1]:
        raise ValueError(f"student hidden [s, b, h] {tuple(s_hidden.shape)} and weight [v/tp, h] "
                         f"{tuple(s_weight.shape)} do not match")
    if t_weight is not None:
        if t_weight.shape[0] != s_weight.shape[0]:
            raise ValueError(
                f"student output weight has {s_weight.shape[0]} vocabulary rows per rank but the teacher's has "
                f"{t_weight.shape[0]}: pad both models to one padded vocabulary and pass the tokenizer's size as "
                f"vocab_size")
        if t_hidden.shape[:2] != s_hidden.shape[:2] or t_hidden.shape[-1] != t_weight.shape[1]:
            raise ValueError(f"teacher hidden {tuple(t_hidden.shape)} / weight {tuple(t_weight.shape)} do not "
                             f"match the student's hidden {tuple(s_hidden.shape)}")
    return VocabShard.of(s_weight.shape[0], group=tp_group, vocab_size=vocab_size)


def fused_linear_kd_terms(s_hidden, s_weight, t_hidden, t_weight, *, labels, weights, spec: LossSpec,
                          tp_group, sequence_parallel: bool, chunk_size: int | None, vocab_size: int | None):
    """(Σ w·loss, kd ``[s, b]``, ce ``[s, b]``); labels and weights are ``[s, b]`` over the full sequence."""
    shard = fused_shard(s_hidden, s_weight, t_hidden, t_weight, tp_group=tp_group, vocab_size=vocab_size)
    if sequence_parallel and s_hidden.shape[0] * _tp_size(tp_group) != weights.shape[0]:
        raise ValueError(f"sequence_parallel hidden states {tuple(s_hidden.shape)} × tp {_tp_size(tp_group)} do "
                         f"not cover the {weights.shape[0]} positions of the token weights")
    plan = FusedPlan(spec, shard, chunk_size, sequence_parallel)
    detach = (lambda x: None if x is None else x.detach())
    return _FusedLinearKD.apply(s_hidden, s_weight, detach(t_hidden), detach(t_weight), labels, weights, plan)


def fused_linear_kd_loss(student_hidden: torch.Tensor, student_output_weight: torch.Tensor,
                         teacher_hidden: torch.Tensor, teacher_output_weight: torch.Tensor, *,
                         divergence: str = "forward_kl", temperature: float = 1.0, beta: float = 0.5,
                         alpha: float = 0.1, t2_scale: bool = False, token_weights: torch.Tensor | None = None,
                         tp_group: dist.ProcessGroup | None = None, sequence_parallel: bool = False,
                         chunk_size: int | None = None, vocab_size: int | None = None) -> torch.Tensor:
    """Σ_i w_i·D_i, the divergence of ``vocab_parallel_kd_loss`` computed from the output layers' inputs.

    Args:
        student_hidden: ``[s, b, h]`` (``[s/tp, b, h]`` with ``sequence_parallel``), the student's output-layer input.
        student_output_weight: ``[v/tp, h]``, the student's column-parallel output weight shard.
        teacher_hidden, teacher_output_weight: the same for the teacher (``[.., h_t]``, ``[v/tp, h_t]``); no grad.
        token_weights: ``[s, b]`` per-token weights (the loss mask), full sequence; None weighs every token 1.
        Other arguments: as ``vocab_parallel_kd_loss``.

    Returns:
        A float32 scalar with gradients for ``student_hidden`` and ``student_output_weight``.
    """
    spec = kd_loss_spec(divergence, temperature=temperature, beta=beta, alpha=alpha, t2_scale=t2_scale)
    s = student_hidden.shape[0] * (_tp_size(tp_group) if sequence_parallel else 1)
    if token_weights is None:
        token_weights = torch.ones(s, student_hidden.shape[1], device=student_hidden.device)
    loss, _, _ = fused_linear_kd_terms(student_hidden, student_output_weight, teacher_hidden,
                                       teacher_output_weight, labels=None, weights=token_weights, spec=spec,
                                       tp_group=tp_group, sequence_parallel=sequence_parallel,
                                       chunk_size=chunk_size, vocab_size=vocab_size)
    return loss
