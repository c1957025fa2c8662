"""One optimizer step through megatron-core's pipeline schedule, and the step's summed statistics.

Loss convention (megatron-core ``calculate_per_token_loss``): every micro-batch's loss function returns the SUM of
per-token losses and its token count; the schedule accumulates the counts and ``finalize_model_grads`` divides
the gradients by the global token count of the step (over micro-batches and data-parallel ranks). The step's
loss is therefore the mean over every loss token of the global batch, whatever the TP/PP/DP layout, which is what
makes runs at different layouts comparable to the last digit that float summation order allows.

Non-finite values: the step's statistics are summed (and shared by every rank) before the optimizer runs, so a NaN
or Inf loss term is seen at the step it appears, by all ranks alike (a NaN survives the sum); the optimizer then
updates only if they and the gradient norm are finite (``mcore_compat.step_if_finite``). What to do about a
non-finite step (stop or skip) is the loop's decision.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
import torch.distributed as dist
from megatron.core.pipeline_parallel import get_forward_backward_func

from megatron_truncdistill.mcore_compat import step_if_finite
from megatron_truncdistill.parallel import ParallelContext

OBJECTIVE_ORDER = ("kd_sum", "ce_sum", "loss_sum")
"""The objective's terms in the order they are computed: the first non-finite one names what diverged."""


@dataclass(frozen=True)
class MicroBatching:
    """How one optimizer step is cut into micro-batches on each data-parallel rank."""

    num_microbatches: int
    micro_batch_size: int
    seq_length: int


def sum_step_stats(outputs: list[dict], names: tuple[str, ...], ctx: ParallelContext) -> dict[str, float]:
    """Sum the loss functions' statistics over micro-batches and DP ranks; every rank gets the result.

    Only the last pipeline stage computes losses; it all-reduces over data parallel, then broadcasts over the
    pipeline group so that any rank (rank 0 logs) can read the same numbers. The sums stay on the device until
    the one read at the end.
    """
    totals = torch.zeros(len(names), dtype=torch.float64, device=ctx.device)
    for out in outputs or []:
        totals += torch.stack([out[n].detach().to(torch.float64).reshape(()) for n in names])
    if ctx.is_last_stage:
        dist.all_reduce(totals, group=ctx.dp_group)
    if ctx.pp_size > 1:
        last = dist.get_global_rank(ctx.pp_group, ctx.pp_size - 1)
        dist.broadcast(totals, src=last, group=ctx.pp_group)
    return dict(zip(names, totals.tolist()))  # this is a CPU-GPU sync point (once per step)


def first_non_finite(stats: dict[str, float]) -> str | None:
    """The first non-finite statistic: the objective's terms in computation order, then the rest as logged."""
    order = [n for n in OBJECTIVE_ORDER if n in stats] + [n for n in stats if n not in OBJECTIVE_ORDER]
    return next((n for n in order if not math.isfinite(stats[n])), None)


def forward_backward(stage, *, forward_step_func: Callable, data_iterator: Iterator, batching: MicroBatching,
                     ctx: ParallelContext, forward_only: bool = False) -> list[dict]:
    """Run megatron-core's schedule over one step's micro-batches; returns the last stage's per-micro-batch dicts.

    A stage whose activation between pipeline stages is wider than its config's hidden size (``ColocatedStage``)
    says so with ``adjust_tensor_shapes``, handed to the schedule whenever there are pipeline stages to send
    between (PP > 1); megatron-core's schedule without pipelining refuses the argument.
    """
    kwargs = {}
    if ctx.pp_size > 1 and hasattr(stage, "adjust_tensor_shapes"):
        kwargs["adjust_tensor_shapes_fn"] = stage.adjust_tensor_shapes
    schedule = get_forward_backward_func()
    return schedule(forward_step_func=forward_step_func, data_iterator=data_iterator, model=[stage],
                    num_microbatches=batching.num_microbatches, seq_length=batching.seq_length,
                    micro_batch_size=batching.micro_batch_size, forward_only=forward_only, **kwargs)


def train_step(stage, ddp_chunks: list, optimizer, scheduler, *, forward_step_func: Callable,
               data_iterator: Iterator, batching: MicroBatching, stat_names: tuple[str, ...],
               ctx: ParallelContext) -> dict:
    """Zero grads, forward+backward all micro-batches, sum the statistics, then clip and step the optimizer and
    advance the LR schedule unless a statistic or the gradient norm is non-finite.

    Returns the step's summed statistics plus ``grad_norm``, ``lr``, ``skipped`` (no update was applied) and
    ``non_finite`` (the first non-finite term, or None).
    """
    for chunk in ddp_chunks:
        chunk.zero_grad_buffer()
    optimizer.zero_grad()
    outputs = forward_backward(stage, forward_step_func=forward_step_func, data_iterator=data_iterator,
                               batching=batching, ctx=ctx)
    stats = sum_step_stats(outputs, stat_names, ctx)
    non_finite = first_non_finite(stats)
    stepped, grad_norm = step_if_finite(optimizer, skip=non_finite is not None)
    if non_finite is None and not math.isfinite(grad_norm):
        non_finite = "grad_norm"
    if stepped:
        scheduler.step(increment=1)
    stats.update(grad_norm=grad_norm, lr=optimizer.param_groups[0]["lr"], skipped=not stepped,
                 non_finite=non_finite)
    return stats
