"""Student-only DDP, megatron-core optimizer and LR schedule.

The teacher never appears here: it is frozen, outside DDP and outside the optimizer. How the optimizer's state is
checkpointed (and megatron-core 0.16's bugs around it) is ``checkpoint.optimizer_state``'s business.
"""

from __future__ import annotations

import torch
from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig, finalize_model_grads
from megatron.core.optimizer import OptimizerConfig as McoreOptimizerConfig
from megatron.core.optimizer import get_megatron_optimizer
from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

from megatron_truncdistill.config import OptimizerConfig


def wrap_student_ddp(student_chunks: list, *, transformer_config, use_distributed_optimizer: bool) -> list:
    """Wrap each student model chunk in megatron-core DDP (fp32 grad buffers, overlap off for determinism)."""
    ddp_config = DistributedDataParallelConfig(
        grad_reduce_in_fp32=True,
        use_distributed_optimizer=use_distributed_optimizer,
        overlap_grad_reduce=False,
    )
    return [DistributedDataParallel(transformer_config, ddp_config, chunk) for chunk in student_chunks]


def install_grad_finalizer(transformer_config, ddp_chunks: list) -> None:
    """Point the schedule's grad-sync hooks at the student's DDP chunks.

    The pipeline schedule calls ``config.finalize_model_grads_func(models, num_tokens)`` with whatever it was
    given as ``model`` (our co-located stage wrapper); the grads to finish live in the student's DDP chunks.
    """
    transformer_config.no_sync_func = ddp_chunks[0].no_sync
    transformer_config.finalize_model_grads_func = lambda _models, num_tokens=None, **kw: finalize_model_grads(
        ddp_chunks, num_tokens
    )


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
