"""The one module that touches megatron-core's global ``parallel_state``, and the one owner of the run's device.

Everything else receives a ``ParallelContext`` (ranks, sizes, process groups and the device as plain attributes) so
that losses, data loaders and tests take their process groups as explicit arguments, and every tensor the trainer
creates is placed on ``ctx.device`` (or on the device of the tensors it is computed from).

Collectives: every group the trainer communicates over is one of megatron-core's (or the default group) and has
the device's backend (NCCL on GPUs), so every tensor handed to a collective lives on ``ctx.device``, control-plane
values (the stop flag, token counts, step statistics) included. We do not add a gloo group for those: the
statistics are produced on the device (reducing them there needs no copy before the reduction, and one sync
after it, which is where the host reads them anyway); a gloo ring over thousands of ranks costs more than NCCL's
latency-bound all-reduce of a few numbers; and one rule (device tensors, device groups) is one the CPU device check
(``runtime.device_check``) enforces without exceptions. megatron-core's own ``*_GLOO`` groups take host tensors,
and the check holds it to that too.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from megatron.core import parallel_state as ps
from megatron.core import tensor_parallel

from megatron_truncdistill.layout import data_parallel_size
from megatron_truncdistill.runtime.device_check import device_check_active, emulated_device


@dataclass(frozen=True)
class ParallelContext:
    """This rank's place in the TP × PP × DP grid, with the groups to communicate over and its device."""

    tp_size: int
    pp_size: int
    dp_size: int
    tp_rank: int
    pp_rank: int
    dp_rank: int
    tp_group: dist.ProcessGroup
    pp_group: dist.ProcessGroup
    dp_group: dist.ProcessGroup
    device: torch.device
    """Where this rank's models, micro-batches and collective tensors live (``local_device()``)."""

    @property
    def is_first_stage(self) -> bool:
        return self.pp_rank == 0

    @property
    def is_last_stage(self) -> bool:
        return self.pp_rank == self.pp_size - 1


def local_device() -> torch.device:
    """This process's device, made current: ``cuda:LOCAL_RANK`` on GPU machines (modulo the visible GPUs, so that
    several ranks may share one GPU where the backend allows it), the CPU otherwise, and under the CPU device check
    an emulated ``cuda:0`` (host memory that the check tags as device memory)."""
    if torch.cuda.is_available():
        index = int(os.environ.get("LOCAL_RANK", 0)) % torch.cuda.device_count()
        torch.cuda.set_device(index)
        return torch.device("cuda", index)
    if device_check_active():
        return emulated_device()
    return torch.device("cpu")


_run_device: list[torch.device] = []  # the device initialize_parallel chose, until destroy_parallel


def initialize_parallel(tensor_model_parallel_size: int = 1, pipeline_model_parallel_size: int = 1, *,
                        seed: int = 1234, device: torch.device | None = None) -> ParallelContext:
    """Build megatron-core's TP/PP/DP groups on the already-initialized default group and seed every RNG.

    Seeds follow megatron-core: the default generator gets ``seed`` (same on all TP ranks), the tracked
    model-parallel generator ``seed + 2718 + tp_rank`` (dropout inside TP regions differs per TP rank).
    ``device``: where this run's tensors live (default ``local_device()``); host-side tools (the converter, whose
    world is one gloo process) pass the CPU so that they run as on a CPU machine on GPU machines too.
    """
    data_parallel_size(dist.get_world_size(), tp=tensor_model_parallel_size, pp=pipeline_model_parallel_size)
    _run_device[:] = [device if device is not None else local_device()]  # megatron-core places on the current GPU
    ps.initialize_model_parallel(
        tensor_model_parallel_size=tensor_model_parallel_size,
        pipeline_model_parallel_size=pipeline_model_parallel_size,
    )
    torch.manual_seed(seed)
    tensor_parallel.model_parallel_cuda_manual_seed(seed)
    return current_context()


def current_context() -> ParallelContext:
    """The ParallelContext of the groups megatron-core currently holds."""
    return ParallelContext(
        tp_size=ps.get_tensor_model_parallel_world_size(),
        pp_size=ps.get_pipeline_model_parallel_world_size(),
        dp_size=ps.get_data_parallel_world_size(),
        tp_rank=ps.get_tensor_model_parallel_rank(),
        pp_rank=ps.get_pipeline_model_parallel_rank(),
        dp_rank=ps.get_data_parallel_rank(),
        tp_group=ps.get_tensor_model_parallel_group(),
        pp_group=ps.get_pipeline_model_parallel_group(),
        dp_group=ps.get_data_parallel_group(),
        device=_run_device[0] if _run_device else local_device(),
    )


def destroy_parallel() -> None:
    """Tear down megatron-core's groups (the default process group is left to its owner)."""
    _run_device.clear()
    ps.destroy_model_parallel()
