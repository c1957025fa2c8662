"""Each CPU-runtime patch does what megatron-core needs of the symbol it replaces (run inside a forked rank)."""

import torch

from gloo_ranks import run_gloo_ranks


def _device_mapping():
    x = torch.zeros(3, device="cuda")
    return {
        "device_kwarg": str(x.device),
        "int_device": str(torch.empty(2, device=torch.cuda.current_device()).device),
        "dot_cuda": str(torch.ones(1).cuda().device),
        "to_cuda": str(torch.ones(1).to("cuda").device),
        "type_check": torch.ones(1).type(),
        "type_cast_untouched": torch.ones(1).type(torch.float64).dtype == torch.float64,
        "synchronize": torch.cuda.synchronize() is None,
    }


def test_cuda_placements_land_on_cpu():
    got = run_gloo_ranks(_device_mapping, 1, timeout=60)[0]
    assert got == {"device_kwarg": "cpu", "int_device": "cpu", "dot_cuda": "cpu", "to_cuda": "cpu",
                   "type_check": "torch.cuda.FloatTensor", "type_cast_untouched": True, "synchronize": True}


def _tracker_fork_restores_state():
    from megatron.core import tensor_parallel

    from megatron_truncdistill.parallel import destroy_parallel, initialize_parallel

    initialize_parallel(1, 1, seed=3)
    tracker = tensor_parallel.get_cuda_rng_tracker()
    before = torch.get_rng_state()
    with tracker.fork():
        inside_a = torch.rand(4)
    after = torch.get_rng_state()
    with tracker.fork():
        inside_b = torch.rand(4)  # the tracked stream advanced: a fresh draw
    outside = torch.rand(4)
    torch.set_rng_state(before)
    outside_again = torch.rand(4)
    destroy_parallel()
    return bool(torch.equal(before, after)), bool(torch.equal(inside_a, inside_b)), bool(
        torch.equal(outside, outside_again))


def test_rng_tracker_fork_restores_and_advances():
    restored, repeated, default_untouched = run_gloo_ranks(_tracker_fork_restores_state, 1, timeout=60)[0]
    assert restored, "_set_cuda_rng_state must restore the default stream when fork() exits"
    assert not repeated, "the tracked stream must advance between forks"
    assert default_untouched


def _tp_ranks_draw_different_dropout():
    import torch.distributed as dist
    from megatron.core import tensor_parallel

    from megatron_truncdistill.parallel import destroy_parallel, initialize_parallel

    initialize_parallel(2, 1, seed=3)
    with tensor_parallel.get_cuda_rng_tracker().fork():
        tp_draw = torch.rand(4)
    default_draw = torch.rand(4)
    gathered = [torch.zeros(8) for _ in range(2)]
    dist.all_gather(gathered, torch.cat([tp_draw, default_draw]))
    destroy_parallel()
    return [g.tolist() for g in gathered]


def test_model_parallel_seed_differs_per_tp_rank_only_in_tracked_stream():
    rank0, rank1 = run_gloo_ranks(_tp_ranks_draw_different_dropout, 2, timeout=60)[0]
    assert rank0[:4] != rank1[:4], "tensor-parallel regions draw per-TP-rank dropout"
    assert rank0[4:] == rank1[4:], "the default stream is shared by TP ranks"
