"""The multi-process harness itself: results come back in rank order, failures and hangs are reported."""

import time

import pytest
import torch
import torch.distributed as dist

from gloo_ranks import RankFailure, run_gloo_ranks


def _allreduce_rank():
    t = torch.tensor([float(dist.get_rank() + 1)])
    dist.all_reduce(t)
    return dist.get_rank(), t.item()


def _rank1_raises():
    if dist.get_rank() == 1:
        raise ValueError("planted failure on rank 1")
    dist.barrier()  # rank 0 blocks here until the harness kills it


def _rank0_hangs():
    if dist.get_rank() == 0:
        dist.barrier()  # rank 1 never joins: a genuine hang, not a dead peer
    else:
        time.sleep(120)
    return "returned"


def test_results_in_rank_order():
    assert run_gloo_ranks(_allreduce_rank, 3, timeout=60) == [(0, 6.0), (1, 6.0), (2, 6.0)]


def test_failure_names_the_rank_and_error():
    with pytest.raises(RankFailure, match=r"(?s)rank 1: error.*planted failure on rank 1"):
        run_gloo_ranks(_rank1_raises, 2, timeout=60)


def test_hung_collective_times_out():
    with pytest.raises(RankFailure, match="rank 0: timeout"):
        run_gloo_ranks(_rank0_hangs, 2, timeout=3)
