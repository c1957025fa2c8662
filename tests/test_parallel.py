"""ParallelContext reports the same grid megatron-core builds, and impossible layouts are refused by name."""

import pytest
import torch.distributed as dist

from gloo_ranks import RankFailure, run_gloo_ranks
from megatron_truncdistill.parallel import destroy_parallel, initialize_parallel


def _grid(tp, pp):
    ctx = initialize_parallel(tp, pp, seed=7)
    out = (dist.get_rank(), ctx.tp_rank, ctx.pp_rank, ctx.dp_rank, ctx.dp_size)
    destroy_parallel()
    return out


def test_tp2_pp2_dp1_grid():
    ranks = run_gloo_ranks(_grid, 4, 2, 2, timeout=60)
    # megatron-core orders ranks tp-fastest, then dp, then pp
    assert ranks == [(0, 0, 0, 0, 1), (1, 1, 0, 0, 1), (2, 0, 1, 0, 1), (3, 1, 1, 0, 1)]


def test_tp2_dp2_grid():
    ranks = run_gloo_ranks(_grid, 4, 2, 1, timeout=60)
    assert [r[3] for r in ranks] == [0, 0, 1, 1] and {r[4] for r in ranks} == {2}


def test_indivisible_world_is_refused_by_name():
    with pytest.raises(RankFailure, match="tensor_model_parallel_size × pipeline_model_parallel_size = 2 × 2"):
        run_gloo_ranks(_grid, 2, 2, 2, timeout=60)
