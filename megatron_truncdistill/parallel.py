"""The one module that touches megatron-core's global ``parallel_state``.

Everything else receives a ``ParallelContext`` (ranks, sizes and process groups as plain attributes) so that
losses, data loaders and tests take their process groups as explicit arguments.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
from megatron.core import parallel_state as ps
from megatron.core import tensor_parallel

from megatron_truncdistill.layout import data_parallel_size


@dataclass(frozen=True)
class ParallelContext:
    """This rank's place in the TP × PP × DP grid, with the groups to communicate over."""

    tp_size: int
    pp_size: int
    dp_size: int
    tp_rank: int
    pp_rank: int
    dp_rank: int
    tp_group: dist.ProcessGroup
    pp_group: dist.ProcessGroup
    dp_group: dist.ProcessGroup

    @property
    def is_first_stage(self) -> bool:
        return self.pp_rank == 0

    @property
    def is_last_stage(self) -> bool:
        return self.pp_rank == self.pp_size - 1


def initialize_parallel(tensor_model_parallel_size: int = 1, pipeline_model_parallel_size: int = 1, *,
                        seed: int = 1234) -> ParallelContext:
    """Build megatron-core's TP/PP/DP groups on the already-initialized default group and seed every RNG.

    Seeds follow megatron-core: the default generator gets ``seed`` (same on all TP ranks), the tracked
    model-parallel generator ``seed + 2718 + tp_rank`` (dropout inside TP regions differs per TP rank).
    """
    data_parallel_size(dist.get_world_size(), tp=tensor_model_parallel_size, pp=pipeline_model_parallel_size)
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
    )


def destroy_parallel() -> None:
    """Tear down megatron-core's groups (the default process group is left to its owner)."""
    ps.destroy_model_parallel()
