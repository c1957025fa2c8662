"""Vocab-parallel KD loss on ``[s, b, v/tp]`` logits: a private autograd Function with a closed-form backward.

Pattern of megatron-core's ``tensor_parallel/cross_entropy.py``: the forward does its own all-reduces (no autograd
through collectives) and leaves, for the backward, only the gradient of each token's loss with respect to its
logits, ``[s·b, v/tp]`` in the logits' dtype, which is the very tensor the backward returns after scaling each row by
the incoming per-token gradient (in place: no second vocabulary-sized allocation). Everything fp32 exists per chunk
of ``chunk_size`` tokens (``chunk_loss``), so extra memory beyond that gradient is O(chunk × v/tp). The teacher's
logits are read in the forward and not kept.

``inplace_backward=True`` goes one step further, as megatron-core's cross-entropy does with fp32 logits: each chunk's
gradient overwrites that chunk's student logits as soon as they have been read, so the extra memory is the chunk
workspace alone. The caller must not read the student logits after the call (their version counter is bumped, so
an autograd node that saved them fails loudly instead of using gradients as logits).
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from megatron_truncdistill.losses.chunk_loss import LossSpec, chunk_loss
from megatron_truncdistill.losses.divergences import make_divergence
from megatron_truncdistill.losses.shard_softmax import VocabShard, Workspace, resolve_chunk_size


def kd_loss_spec(divergence: str, *, temperature: float, beta: float, alpha: float, t2_scale: bool,
                 kd_weight: float = 1.0, ce_weight: float = 0.0) -> LossSpec:
    """Validated LossSpec for a named divergence (``t2_scale`` multiplies the divergence by T², Hinton)."""
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    return LossSpec(make_divergence(divergence, beta=beta, alpha=alpha), temperature=temperature,
                    kd_scale=temperature**2 if t2_scale else 1.0, kd_weight=kd_weight, ce_weight=ce_weight)


def logits_shard(student: torch.Tensor, teacher: torch.Tensor | None, *, tp_group: dist.ProcessGroup | None,
                 vocab_size: int | None) -> VocabShard:
    """Check a student/teacher pair of ``[s, b, v/tp]`` logits and return this rank's VocabShard."""
    if student.dim() != 3 or not student.is_floating_point():
        raise ValueError(f"student logits must be float [s, b, v/tp], got {tuple(student.shape)} {student.dtype}")
    if teacher is not None:
        if teacher.shape[-1] != student.shape[-1]:
            raise ValueError(
                f"student logits have {student.shape[-1]} vocabulary rows per rank but the teacher's have "
                f"{teacher.shape[-1]}: pad both models to one padded vocabulary (same tokenizer, same "
                f"make_vocab_size_divisible_by) and pass the tokenizer's size as vocab_size")
        if teacher.shape[:2] != student.shape[:2] or not teacher.is_floating_point():
            raise ValueError(f"teacher logits {tuple(teacher.shape)} {teacher.dtype} do not match the student's "
                             f"{tuple(student.shape)}")
    return VocabShard.of(student.shape[-1], group=tp_group, vocab_size=vocab_size)


class _VocabParallelKD(torch.autograd.Function):
    """Per-token ``kd_weight·kd + ce_weight·ce`` on ``[s, b, v/tp]`` logits; differentiable w.r.t. the student only."""

    @staticmethod
    def forward(ctx, student_logits, teacher_logits, labels, spec: LossSpec, shard: VocabShard, chunk_size,
                inplace: bool):
        zs = student_logits.detach().reshape(-1, shard.width)  # [s, b, v/tp] -> [s*b, v/tp], a view if contiguous
        zt = None if teacher_logits is None else teacher_logits.reshape(-1, shard.width)  # [s*b, v/tp]
        flat_labels = None if labels is None else labels.reshape(-1)  # [s, b] -> [s*b]
        tokens, need_grad = zs.shape[0], ctx.needs_input_grad[0]
        chunk = resolve_chunk_size(chunk_size, tokens=tokens, width=shard.width, device=zs.device)
        ws = Workspace(chunk, shard.real, zs.device)
        kd = torch.zeros(tokens, dtype=torch.float32, device=zs.device)
        ce = torch.zeros_like(kd)
        grad = (zs if inplace else torch.empty_like(zs)) if need_grad else None  # [s*b, v/tp]: the returned grad
        if need_grad:
            grad[:, shard.real:].zero_()  # padded vocabulary rows
        for start in range(0, tokens, chunk):
            rows = slice(start, min(start + chunk, tokens))
            out = chunk_loss(zs[rows], None if zt is None else zt[rows],
                             None if flat_labels is None else flat_labels[rows],
                             spec=spec, shard=shard, ws=ws, need_grad=need_grad)
            if out.kd is not None:
                kd[rows] = out.kd
            if out.ce is not None:
                ce[rows] = out.ce
            if need_grad:
                grad[rows, : shard.real] = out.grad  # fp32 -> logits dtype
        ctx.save_for_backward(grad)
        ctx.logits_shape = student_logits.shape
        ctx.mark_non_differentiable(kd, ce)
        loss = (kd * spec.kd_weight).add_(ce, alpha=spec.ce_weight)
        shape = student_logits.shape[:2]
        return loss.view(shape), kd.view(shape), ce.view(shape)  # [s*b] -> [s, b] each

    @staticmethod
    def backward(ctx, grad_loss, grad_kd, grad_ce):
        """Scale each token's saved gradient row by its incoming gradient, in place (backward runs once)."""
        (grad,) = ctx.saved_tensors
        grad.mul_(grad_loss.reshape(-1, 1))  # [s, b] -> [s*b, 1]
        return grad.view(ctx.logits_shape), None, None, None, None, None, None  # [s*b, v/tp] -> [s, b, v/tp]


def vocab_parallel_kd_terms(student_logits, teacher_logits, labels, *, spec: LossSpec,
                            tp_group: dist.ProcessGroup | None, chunk_size: int | None, vocab_size: int | None,
                            inplace_backward: bool = False):
    """(loss, kd, ce), each ``[s, b]`` fp32; only ``loss = kd_weight·kd + ce_weight·ce`` is differentiable.

    labels: ``[s, b]`` token ids for CE (every id must be a real row: the caller checks), or None for no CE.
    """
    shard = logits_shard(student_logits, teacher_logits, tp_group=tp_group, vocab_size=vocab_size)
    teacher = None if teacher_logits is None else teacher_logits.detach()
    if inplace_backward and not student_logits.is_contiguous():
        raise ValueError("inplace_backward needs contiguous student logits (the gradient is written into them)")
    return _VocabParallelKD.apply(student_logits, teacher, labels, spec, shard, chunk_size, inplace_backward)


def vocab_parallel_kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, *,
                           divergence: str = "forward_kl", temperature: float = 1.0, beta: float = 0.5,
                           alpha: float = 0.1, t2_scale: bool = False, tp_group: dist.ProcessGroup | None = None,
                           chunk_size: int | None = None, vocab_size: int | None = None,
                           inplace_backward: bool = False) -> torch.Tensor:
    """Per-token divergence between teacher and student over a vocabulary split across tensor-parallel ranks.

    Args:
        student_logits: ``[s, b, v/tp]`` fp32 or bf16, this rank's shard of the (padded) vocabulary.
        teacher_logits: ``[s, b, v/tp]``, same per-rank width (one padded vocabulary); never receives a gradient.
        divergence: forward_kl | reverse_kl | jsd | tvd | skew_kl | skew_reverse_kl (see ``divergences``), on
            p = softmax(z / temperature); ``beta`` is JSD's teacher weight, ``alpha`` the skew weight.
        t2_scale: multiply by T² (Hinton), keeping gradient magnitudes comparable across temperatures.
        tp_group: the tensor-parallel group the vocabulary is split over; None means no tensor parallelism.
        chunk_size: tokens per chunk; extra memory is O(chunk_size × v/tp). None picks a per-device default.
        vocab_size: real tokenizer rows; global rows >= vocab_size are padding, excluded from both softmaxes.
        inplace_backward: write the gradient into ``student_logits`` during the forward (no gradient-sized
            allocation); the logits are garbage afterwards.

    Returns:
        ``[s, b]`` float32 per-token loss (identical on every TP rank), differentiable w.r.t. ``student_logits``.
    """
    spec = kd_loss_spec(divergence, temperature=temperature, beta=beta, alpha=alpha, t2_scale=t2_scale)
    loss, _, _ = vocab_parallel_kd_terms(student_logits, teacher_logits, None, spec=spec, tp_group=tp_group,
                                         chunk_size=chunk_size, vocab_size=vocab_size,
                                         inplace_backward=inplace_backward)
    return loss
