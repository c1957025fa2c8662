"""The real trainer step under the CPU device check (``runtime.device_check``), and the check catching each device
bug the trainer had before the device had one owner (issue 10), reintroduced one at a time.

Each ``_bug_*`` function below is the code as it stood at commit a5782b9 (or, where that code no longer exists,
the same mistake made at the seam that replaced it), patched into a forked rank before the run is built.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torch.distributed as dist

from distill_setup import DEVICE_CHECK, train_losses, trainer_config
from gloo_ranks import RankFailure, run_gloo_ranks

TP2PP2 = ("parallel.tensor_model_parallel_size=2", "parallel.pipeline_model_parallel_size=2")
PACKED_FUSED = ("data.packing=true", "data.seq_length=256", "distill.fused=true")
STEPS = ("train.train_steps=2", "train.eval_interval=2", "train.eval_batches=1", "data.valid_fraction=0.1")


@pytest.mark.slow
@pytest.mark.parametrize("layout,world", [((), 1), (TP2PP2, 4)], ids=["tp1", "tp2pp2"])
@pytest.mark.parametrize("features", [(), PACKED_FUSED], ids=["padded-logits", "packed-fused"])
def test_trainer_steps_pass_the_device_check(tiny, tmp_path, layout, world, features):
    """Co-located teacher, training steps, a validation pass and the final checkpoint, all under the check."""
    checked = train_losses(trainer_config(tiny, tmp_path / "checked", *STEPS, *layout, *features), world,
                           env=DEVICE_CHECK)
    assert len(checked) == 2 and all(np.isfinite(checked))
    assert (tmp_path / "checked" / "checkpoints" / "latest").read_text().strip() == "iter_0000002"
    if world == 1 and not features:  # the check only tags tensors: the numbers are the plain runtime's
        plain = train_losses(trainer_config(tiny, tmp_path / "plain", *STEPS), 1)
        np.testing.assert_allclose(checked, plain, rtol=1e-6)


# ------------------------------------------------------------------------------ the bugs, as they were
def _bug_host_batch():
    """The batch reaches the models as collated on the host (a5782b9: forward_step never moved it)."""
    from megatron_truncdistill.data.samples import Batch

    Batch.to = lambda self, device: self


def _bug_host_loss_inputs():
    """Model inputs moved, but labels, loss mask and sections reach the loss on the host."""
    from megatron_truncdistill.data.samples import Batch

    Batch.to = lambda self, device: dataclasses.replace(self, tokens=self.tokens.to(device),
                                                        position_ids=self.position_ids.to(device))


def _bug_host_cu_seqlens():
    """cu_seqlens left where the collate made it (a5782b9: ``.to(batch.tokens.device)``, i.e. the host)."""
    from megatron_truncdistill.data.samples import Batch

    moved = Batch.to
    Batch.to = lambda self, device: dataclasses.replace(moved(self, device), cu_seqlens=self.cu_seqlens)


def _bug_host_stop_flag():
    """a5782b9 train.py ``_StopFlag.agreed``: a host flag in an all-reduce over the default (NCCL) group."""
    from megatron_truncdistill import train

    def agreed(self, device=None):
        flag = torch.tensor([1.0 if self.requested else 0.0])
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    train._StopFlag.agreed = agreed


def _bug_host_step_totals():
    """a5782b9 training/step.py ``sum_step_stats``: device statistics summed into a host tensor."""
    from megatron_truncdistill.training import step

    def sum_step_stats(outputs, names, ctx):
        totals = torch.zeros(len(names), dtype=torch.float64)
        for out in outputs or []:
            totals += torch.stack([out[n].detach().to(torch.float64).reshape(()) for n in names])
        if ctx.is_last_stage:
            dist.all_reduce(totals, group=ctx.dp_group)
        if ctx.pp_size > 1:
            last = dist.get_global_rank(ctx.pp_group, ctx.pp_size - 1)
            dist.broadcast(totals, src=last, group=ctx.pp_group)
        return dict(zip(names, totals.tolist()))

    step.sum_step_stats = sum_step_stats


def _bug_host_input_tokens():
    """a5782b9 training/loop.py ``_global_input_tokens``: a host count in a data-parallel (NCCL) all-reduce."""
    from megatron_truncdistill.training.loop import TrainingRun

    def global_input_tokens(self, batches):
        count = torch.tensor([float(sum(b.real_tokens for b in batches))], dtype=torch.float64)
        dist.all_reduce(count, group=self.ctx.dp_group)
        return int(count.item())

    TrainingRun._global_input_tokens = global_input_tokens


def _thd_student_and_teacher():
    """Both models take packed documents as THD, as Transformer Engine models do (TE is absent here)."""
    from megatron_truncdistill.training import validation

    validation.uses_transformer_engine = lambda model: True


def _train_with(patches, config):
    """Rank function: apply the patches, then the trainer as ``train.run_training`` runs it."""
    from megatron_truncdistill.train import run_training

    for patch in patches:
        patch()
    return run_training(config)


THD = ("data.packing=true", "data.seq_length=256", "train.micro_batch_size=1")
BUGS = {  # bug -> (overrides, the failure line the check must print)
    "host_batch": (_bug_host_batch, (), "GPTModel.forward got argument 0 as a host"),
    "host_loss_inputs": (_bug_host_loss_inputs, (), "aten.gather.default got host tensor(s) [host (320, 1) int64]"),
    "host_cu_seqlens": (_bug_host_cu_seqlens, THD, "GPTModel.forward got packed_seq_params.cu_seqlens_q as a host"),
    "host_stop_flag": (_bug_host_stop_flag, (), "c10d::allreduce_ got a host (1,) float32 tensor on a device-backend"),
    "host_step_totals": (_bug_host_step_totals, (), "aten.add_.Tensor got host tensor(s) [host (10,) float64]"),
    "host_input_tokens": (_bug_host_input_tokens, (), "c10d::allreduce_ got a host (1,) float64 tensor on a device-"),
}


def _failure_line(err: RankFailure) -> str:
    return next(line for line in str(err).splitlines() if line.startswith(("megatron_truncdistill.runtime",
                                                                            "DeviceMixError")))


@pytest.mark.parametrize("bug", list(BUGS))
def test_device_check_catches_the_bug(tiny, tmp_path, bug):
    reintroduce, overrides, expected = BUGS[bug]
    patches = [_thd_student_and_teacher] if overrides == THD else []
    config = trainer_config(tiny, tmp_path / "run", "train.train_steps=1", *overrides)
    with pytest.raises(RankFailure) as failure:
        run_gloo_ranks(_train_with, 1, patches + [reintroduce], config, timeout=120, env=DEVICE_CHECK)
    line = _failure_line(failure.value)
    print(f"{bug}: {line}")  # the report quotes these (pytest -s)
    assert "DeviceMixError: device check:" in line and expected in line, line


def test_thd_inputs_reach_the_models_on_the_device(tiny, tmp_path):
    """Without the bug the THD inputs pass the check and the run reaches megatron-core's local attention, which
    refuses THD (only Transformer Engine takes it, and it is not installed here)."""
    config = trainer_config(tiny, tmp_path / "run", "train.train_steps=1", *THD)
    with pytest.raises(RankFailure) as failure:
        run_gloo_ranks(_train_with, 1, [_thd_student_and_teacher], config, timeout=120, env=DEVICE_CHECK)
    assert "DeviceMixError" not in str(failure.value)
    assert "Packed sequence is not supported by DotProductAttention" in str(failure.value)
