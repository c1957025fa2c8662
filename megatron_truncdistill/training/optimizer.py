"""Student-only DDP, megatron-core optimizer and LR schedule.

The teacher never appears here: it is frozen, outside DDP and outside the optimizer. How the schedule reaches the
student's grad-sync hooks is ``ColocatedStage``'s business; how the optimizer's state is checkpointed (and
megatron-core 0.16's bugs around it) is ``checkpoint.optimizer_state``'s.
"""

from __future__ import annotations

import torch
from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig
from megatron.core.optimizer import OptimizerConfig as McoreOptimizerConfig
from megatron.core.optimizer import get_megatron_optimizer
from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

from megatron_truncdistill.config import OptimizerConfig


def wrap_student_ddp(student_chunks: list, *, transformer_config, use_distributed_optimizer: bool) -> list:
    """Wrap each student model chunk in megatron-core DDP (fp32 grad buffers, overlap off for determinism).

    DDP reads ``calculate_per_token_loss`` from the chunk's config when it is built (no 1/DP averaging of the
    gradients: ``finalize_model_grads`` divides by the global token count instead), so the chunk must be built
    with it (``BuildOptions.calculate_per_token_loss``).
    """
    if not transformer_config.calculate_per_token_loss:
        raise ValueError("the student must be built with calculate_per_token_loss=True (the loss functions return "
                         "token sums; DDP must not average over data-parallel ranks)")
    ddp_config = DistributedDataParallelConfig(
        grad_reduce_in_fp32=True,
        use_distributed_optimizer=use_distributed_optimizer,
        overlap_grad_reduce=False,
    )
    return [DistributedDataParallel(transformer_config, ddp_config, chunk) for chunk in student_chunks]


def build_optimizer(ddp_chunks: list, settings: OptimizerConfig, *, train_steps: int, params_dtype):
    """megatron-core AdamW over the student, and the warmup + decay LR schedule."""
    config = McoreOptimizerConfig(
        optimizer="adam",
        lr=settings.lr,
        min_lr=settings.min_lr,
        weight_decay=settings.weight_decay,
        adam_beta1=settings.adam_beta1,
        adam_beta2=settings.adam_beta2,
        adam_eps=settings.adam_eps,
        clip_grad=settings.clip_grad,
        use_distributed_optimizer=settings.use_distributed_optimizer,
        bf16=params_dtype == torch.bfloat16,
        params_dtype=params_dtype,
    )
    optimizer = get_megatron_optimizer(config, ddp_chunks)
    warmup = int(round(settings.warmup_fraction * train_steps))
    scheduler = OptimizerParamScheduler(
        optimizer,
        init_lr=0.0 if warmup else settings.lr,
        max_lr=settings.lr,
        min_lr=settings.min_lr,
        lr_warmup_steps=warmup,
        lr_decay_steps=max(train_steps, warmup + 1),
        lr_decay_style=settings.lr_decay_style,
        start_wd=settings.weight_decay,
        end_wd=settings.weight_decay,
        wd_incr_steps=max(train_steps, 1),
        wd_incr_style="constant",
    )
    return optimizer, scheduler
