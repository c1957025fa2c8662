"""Co-location's decisions, owned by ``ColocatedStage``: the boundary dtype, the schedule's config, attention inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from distill_setup import DEVICE_CHECK, trainer_config
from gloo_ranks import run_gloo_ranks
from megatron_truncdistill.data.samples import AttentionInput
from megatron_truncdistill.training.colocated import attention_input, boundary_dtype

MIXED = ("student.params_dtype=bfloat16", "teacher.params_dtype=float32")


def _teacher_hidden(config, round_at_boundary=False):
    """Rank function: one forward-only pass of the first micro-batch; the teacher's final hidden states on the last
    stage, and what the stage told the schedule."""
    from megatron_truncdistill.training import colocated
    from megatron_truncdistill.training.assembly import build_training_run
    from megatron_truncdistill.training.step import forward_backward

    if round_at_boundary:  # the policy before issue 10: the teacher rounded to the student's dtype
        colocated.boundary_dtype = lambda student, *others: student
    run = build_training_run(config)
    captured = []

    def forward_step(data_iterator, model):
        output, loss_func = run.forward_step(data_iterator, model)
        if run.ctx.is_last_stage:
            captured.append(output[1].detach().to(torch.float64).cpu().numpy())  # [s, b, h_t]
        return output, loss_func

    forward_backward(run.stage, forward_step_func=forward_step, data_iterator=iter(run.train_batches.step(0)[:1]),
                     batching=type(run.batching)(1, run.batching.micro_batch_size, run.batching.seq_length),
                     ctx=run.ctx, forward_only=True)
    student_config = run.ddp[0].config
    out = {"hidden": captured[0] if captured else None, "pipeline_dtype": str(run.stage.config.pipeline_dtype),
           "student_pipeline_dtype": str(student_config.pipeline_dtype),
           "student_config_untouched": run.stage.config is not student_config and
           student_config.finalize_model_grads_func is None}
    run.close()
    return out


@pytest.mark.slow
def test_fp32_teacher_crosses_the_pipeline_boundary_unrounded_beside_a_bf16_student(tiny, tmp_path):
    one = run_gloo_ranks(_teacher_hidden, 1, trainer_config(tiny, tmp_path / "pp1", *MIXED), timeout=120)[0]
    pp2_config = trainer_config(tiny, tmp_path / "pp2", *MIXED, "parallel.pipeline_model_parallel_size=2")
    first, last = run_gloo_ranks(_teacher_hidden, 2, pp2_config, timeout=120, env=DEVICE_CHECK)
    assert first["pipeline_dtype"] == "torch.float32" and first["student_pipeline_dtype"] == "torch.bfloat16"
    assert first["student_config_untouched"]
    np.testing.assert_array_equal(last["hidden"], one["hidden"])  # bit for bit: nothing rounded on the way
    rounded = run_gloo_ranks(_teacher_hidden, 2, pp2_config, True, timeout=120)[1]["hidden"]
    assert np.abs(rounded - one["hidden"]).max() > 1e-4, "rounding at the boundary would have been seen"


def test_boundary_dtype_is_the_wider_one():
    assert boundary_dtype(torch.bfloat16, torch.float32) == boundary_dtype(torch.float32, torch.bfloat16) \
        == torch.float32
    assert boundary_dtype(torch.bfloat16, torch.bfloat16) == torch.bfloat16


def test_attention_input_is_decided_per_model():
    assert attention_input(packing=False, transformer_engine=True) is AttentionInput.CAUSAL
    assert attention_input(packing=True, transformer_engine=True) is AttentionInput.THD
    assert attention_input(packing=True, transformer_engine=False) is AttentionInput.BLOCK_MASK
