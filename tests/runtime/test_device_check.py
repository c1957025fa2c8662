"""The CPU device check tells host from device tensors and refuses to mix them (each case in a forked rank)."""

from __future__ import annotations

import numpy as np
import pytest

from distill_setup import DEVICE_CHECK
from gloo_ranks import run_gloo_ranks


def _placements():
    import torch

    from megatron_truncdistill.runtime import is_device_tensor as on_device

    host, dev = torch.ones(3), torch.ones(3, device="cuda")
    moved = host.to("cuda")
    linear = torch.nn.Linear(3, 2).cuda()
    linear(dev).sum().backward()
    return {
        "factories": (on_device(host), on_device(dev), on_device(torch.zeros(2, device=torch.cuda.current_device()))),
        "move_copies": (on_device(moved), on_device(host), moved.data_ptr() != host.data_ptr()),
        "back_to_host": (on_device(dev.cpu()), on_device(dev.to("cpu")), on_device(dev.to(torch.float64))),
        "views_and_data": (on_device(dev[1:]), on_device(dev.data), on_device(dev.view(3, 1))),
        "computed": (on_device(dev * 2), on_device(dev * torch.tensor(2.0)), on_device(torch.zeros_like(dev))),
        "follows_device_attr": on_device(torch.arange(3, device=dev.device)),
        "module_and_grads": (on_device(linear.weight), on_device(linear.weight.grad)),
        "queries": (str(dev.device), dev.is_cuda, dev.type(), str(host.device), host.is_cuda, host.type()),
        "pinned_is_host": on_device(host.pin_memory()),
    }


def test_placements_follow_what_cuda_would_do():
    got = run_gloo_ranks(_placements, 1, timeout=60, env=DEVICE_CHECK)[0]
    assert got == {
        "factories": (False, True, True), "move_copies": (True, False, True), "back_to_host": (False, False, True),
        "views_and_data": (True, True, True), "computed": (True, True, True), "follows_device_attr": True,
        "module_and_grads": (True, True),
        "queries": ("cuda:0", True, "torch.cuda.FloatTensor", "cpu", False, "torch.FloatTensor"),
        "pinned_is_host": False,
    }


def _raises(fn) -> str:
    from megatron_truncdistill.runtime import DeviceMixError

    try:
        fn()
    except DeviceMixError as err:
        return str(err)
    return "did not raise"


def _mixing():
    import torch

    dev, host = torch.ones(4, device="cuda"), torch.ones(4)
    linear = torch.nn.Linear(4, 2).to("cuda")
    return {"add": _raises(lambda: dev + host), "linear": _raises(lambda: linear(host)),
            "numpy": _raises(lambda: dev.numpy()), "index": _raises(lambda: dev[torch.tensor([0, 1])]),
            "scalar_ok": _raises(lambda: dev * torch.tensor(3.0)), "copy_ok": _raises(lambda: dev.copy_(host))}


def test_mixing_host_and_device_raises_naming_the_op_and_caller():
    got = run_gloo_ranks(_mixing, 1, timeout=60, env=DEVICE_CHECK)[0]
    assert "aten.add.Tensor got host tensor(s) [host (4,) float32]" in got["add"]
    assert "test_device_check.py" in got["add"], "the failing call is named"
    assert "aten.addmm.default" in got["linear"] and "numpy() of a device" in got["numpy"]
    assert "aten.index.Tensor" in got["index"], "host indices into a device tensor are a hidden copy"
    assert got["scalar_ok"] == got["copy_ok"] == "did not raise"


def _collectives():
    import torch
    import torch.distributed as dist

    gloo = dist.new_group([0, 1], backend="gloo")  # as megatron-core makes its *_GLOO groups
    dev, host = torch.ones(2, device="cuda"), torch.ones(2)
    out = {"host_on_default": _raises(lambda: dist.all_reduce(host)),
           "device_on_default": _raises(lambda: dist.all_reduce(dev)),
           "host_on_gloo": _raises(lambda: dist.all_reduce(host, group=gloo)),
           "device_on_gloo": _raises(lambda: dist.all_reduce(dev, group=gloo)),
           "objects": _raises(lambda: dist.all_gather_object([None, None], {"rank": dist.get_rank()}))}
    return out


def test_collectives_take_tensors_where_their_backend_does():
    got = run_gloo_ranks(_collectives, 2, timeout=60, env=DEVICE_CHECK)[0]
    assert "c10d::allreduce_ got a host (2,) float32 tensor on a device-backend (NCCL) group" in got["host_on_default"]
    assert "got a device (2,) float32 tensor on a gloo group" in got["device_on_gloo"]
    assert got["device_on_default"] == got["host_on_gloo"] == got["objects"] == "did not raise"


def _batch_to_device():
    from megatron_truncdistill.data.samples import collate
    from megatron_truncdistill.parallel import local_device
    from megatron_truncdistill.runtime import is_device_tensor
    from megatron_truncdistill.sections import Section

    tokens, sections = np.arange(6), np.array([0, 1, 1, 1, 2, 2], dtype=np.uint8)
    batch = collate([[(tokens, sections)]], seq_length=8, loss_sections=list(Section), packing=True,
                    cu_seqlens=True)
    device = local_device()
    moved = batch.to(device)
    fields = ("tokens", "labels", "loss_mask", "sections", "position_ids", "cu_seqlens")
    return (str(device), [is_device_tensor(getattr(batch, f)) for f in fields],
            [is_device_tensor(getattr(moved, f)) for f in fields], moved.real_tokens, moved.max_seqlen)


def test_a_batch_moves_whole_to_the_runs_device():
    device, before, after, real, longest = run_gloo_ranks(_batch_to_device, 1, timeout=60, env=DEVICE_CHECK)[0]
    assert device == "cuda:0" and not any(before) and all(after) and (real, longest) == (6, 6)


@pytest.mark.parametrize("env", [{}, DEVICE_CHECK], ids=["plain", "checked"])
def test_local_device_is_cpu_unless_checked(env):
    def device():
        from megatron_truncdistill.parallel import local_device

        return str(local_device())

    assert run_gloo_ranks(device, 1, timeout=60, env=env)[0] == ("cuda:0" if env else "cpu")


def _greedy_on_the_device():
    from megatron_truncdistill.evaluation.greedy import greedy_generate
    from megatron_truncdistill.models.builder import build_gpt_model
    from megatron_truncdistill.models.hf_config import architecture_from_hf
    from megatron_truncdistill.parallel import destroy_parallel, initialize_parallel
    from megatron_truncdistill.runtime import is_device_tensor

    arch = architecture_from_hf({"model_type": "qwen3", "num_hidden_layers": 1, "hidden_size": 32,
                                 "intermediate_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2,
                                 "head_dim": 8, "vocab_size": 64, "max_position_embeddings": 64})
    ctx = initialize_parallel(1, 1, seed=3)
    model = build_gpt_model(arch, ctx, padded_vocab_size=128).eval()
    on_device = is_device_tensor(next(model.parameters()))
    out = greedy_generate(model, [[1, 2, 3], [4, 5, 6], [7, 8]], max_new_tokens=4, stop_ids={0}, vocab_size=64)
    destroy_parallel()
    return on_device, [len(o) for o in out]


def test_greedy_generation_runs_on_the_models_device():
    on_device, lengths = run_gloo_ranks(_greedy_on_the_device, 1, timeout=60, env=DEVICE_CHECK)[0]
    assert on_device and all(0 < n <= 4 for n in lengths)
