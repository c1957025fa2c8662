"""One optimizer step through megatron-core's pipeline schedule, and the step's summed statistics.

Loss convention (megatron-core ``calculate_per_token_loss``): every micro-batch's loss function returns the SUM of
per-token losses and its token count; the schedule accumulates the counts and ``finalize_model_grads`` divides
the gradients by the global token count of the step (over micro-batches and data-parallel ranks). The step's
loss is therefore the mean over every loss token of the global batch, whatever the TP/PP/DP layout, which is what
makes runs at different layouts comparable to the last digit that float summation order allows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator

import torch
import torch.distributed as dist
from megatron.core.pipeline_parallel import get_forward_backward_func

from megatron_truncdistill.parallel import ParallelContext


@dataclass(frozen=True)
class MicroBatching:
    """How one optimizer step is cut into micro-batches on each data-parallel rank."""

    num_microbatches: int
    micro_batch_size: int
    seq_length: int


def sum_step_stats(outputs: list[dict], names: tuple[str, ...], ctx: ParallelContext) -> dict[str, float]:
    """Sum the loss functions' statistics over micro-batches and DP ranks; every rank gets the result.

    Only the last pipeline stage computes losses; it all-reduces over data parallel, then broadcasts over the
    pipeline group so that any rank (rank 0 logs) can read the same numbers.
    """
    totals = torch.zeros(len(names), dtype=torch.float64)
    for out in outputs or []:
        totals += torch.stack([out[n].detach().to(torch.float64).reshape(()) for n in names])
    if ctx.is_last_stage:
        dist.all_reduce(totals, group=ctx.dp_group)
    if ctx.pp_size > 1:
        last = dist.get_global_rank(ctx.pp_group, ctx.pp_size - 1)
        dist.broadcast(totals, src=last, group=ctx.pp_group)
    return dict(zip(names, totals.tolist()))


def forward_backward(stage_models: list, *, forward_step_func: Callable, data_iterator: Iterator,
                     batching: MicroBatching, hidden_size: int, forward_only: bool = False) -> list[dict]:
    """Run megatron-core's schedule over one step's micro-batches; returns the last stage's per-micro-batch dicts.

    ``hidden_size`` is the width of the activation sent between pipeline stages (student + teacher hidden sizes
    when both are co-located), patched into the p2p shapes through ``adjust_tensor_shapes_fn``.
    """
    kwargs = dict(
        forward_step_func=forward_step_func,
        data_iterator=data_iterator,
        model=stage_models,
        num_microbatches=batching.num_microbatches,
        seq_length=batching.seq_length,
        micro_batch_size=batching.micro_batch_size,
        forward_only=forward_only,
    )
    schedule = get_forward_backward_func()
    if schedule.__name__ == "forward_backward_pipelining_without_interleaving":
        def widen(recv_shapes, send_shapes):  # [s, b, h_student] -> [s, b, h_student + h_teacher]
            return ([(*s[:-1], hidden_size) for s in recv_shapes], [(*s[:-1], hidden_size) for s in send_shapes])

        kwargs["adjust_tensor_shapes_fn"] = widen
    return schedule(**kwargs)


def train_step(stage_models: list, ddp_chunks: list, optimizer, scheduler, *, forward_step_func: Callable,
               data_iterator: Iterator, batching: MicroBatching, hidden_size: int,
               stat_names: tuple[str, ...], ctx: ParallelContext) -> dict[str, float]:
    """Zero grads, forward+backward all micro-batches, clip and step the optimizer, advance the LR schedule.

    Returns the step's summed statistics plus ``grad_norm``, ``lr`` and ``skipped`` (optimizer declined the step).
    """
    for chunk in ddp_chunks:
        chunk.zero_grad_buffer()
    optimizer.zero_grad()
    outputs = forward_backward(stage_models, forward_step_func=forward_step_func, data_iterator=data_iterator,
                               batching=batching, hidden_size=hidden_size)
    succeeded, grad_norm, _ = optimizer.step()
    if succeeded:
        scheduler.step(increment=1)
    stats = sum_step_stats(outputs, stat_names, ctx)
    stats.update(grad_norm=float(grad_norm) if grad_norm is not None else float("nan"),
                 lr=optimizer.param_groups[0]["lr"], skipped=not succeeded)
    return stats
