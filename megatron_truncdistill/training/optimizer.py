"""Student-only DDP, megatron-core optimizer and LR schedule, and the optimizer-state checkpoint workarounds.

The teacher never appears here: it is frozen, outside DDP and outside the optimizer.

megatron-core 0.16 bugs worked around (they bite whenever neither Transformer Engine nor apex is installed, i.e.
on every CPU run and on GPUs without them):
- the distributed optimizer's checkpoint load restores Adam's ``step`` as ONE tensor object shared by every
  parameter's state; torch's Adam increments it in place once per parameter, so step 5 became 57 after one
  iteration and bias correction silently diverged. ``untie_adam_steps`` gives each parameter its own copy.
- loading needs the optimizer states to exist first (``_init_optimizer_states_with_dummy_values``).
- the fully-reshardable load copies every per-parameter state key from the checkpoint, but the checkpoint keeps
  torch Adam's ``step`` in the param groups, not per parameter: KeyError 'step'. ``_keep_loaded_step`` passes the
  step that ``load_state_dict`` already restored through unchanged.
- the reshardable format must be requested explicitly (``fully_reshardable``); ``dp_reshardable`` resumes at
  step 1 and cannot change TP/PP.
"""

from __future__ import annotations

import torch
from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig, finalize_model_grads
from megatron.core.optimizer import OptimizerConfig as McoreOptimizerConfig
from megatron.core.optimizer import get_megatron_optimizer
from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer
from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

from megatron_truncdistill.config import OptimizerConfig

OPTIMIZER_SHARDING_METADATA = {"distrib_optim_sharding_type": "fully_reshardable"}


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


def _inner_optimizers(optimizer) -> list:
    return list(getattr(optimizer, "chained_optimizers", [optimizer]))


def optimizer_sharded_state_dict(optimizer, model_sharded_state_dict: dict, *, is_loading: bool) -> dict:
    """The optimizer's sharded state in the reshardable format; prepares empty states first when loading."""
    if is_loading:
        for inner in _inner_optimizers(optimizer):
            if isinstance(inner, DistributedOptimizer):
                inner._init_optimizer_states_with_dummy_values()
    return optimizer.sharded_state_dict(
        model_sharded_state_dict, is_loading=is_loading, metadata=OPTIMIZER_SHARDING_METADATA
    )


def _keep_loaded_step(inner: DistributedOptimizer) -> None:
    """Instance patch: let the per-parameter copy keep the ``step`` restored from the param groups."""
    original = inner._set_main_param_and_optimizer_states

    def set_states(model_param, tensors):  # replaces DistributedOptimizer._set_main_param_and_optimizer_states
        group_index, group_order = inner.model_param_group_index_map[model_param]
        main_param = inner.optimizer.param_groups[group_index]["params"][group_order]
        state = inner.optimizer.state[main_param]
        if "step" in state and "step" not in tensors:
            tensors = dict(tensors, step=state["step"])
        original(model_param, tensors)

    inner._set_main_param_and_optimizer_states = set_states


def load_optimizer_state(optimizer, loaded_state: dict) -> None:
    """Load what ``optimizer_sharded_state_dict(is_loading=True)`` fetched, with the workarounds above."""
    for inner in _inner_optimizers(optimizer):
        if isinstance(inner, DistributedOptimizer):
            _keep_loaded_step(inner)
    optimizer.load_state_dict(loaded_state)
    untie_adam_steps(optimizer)


def untie_adam_steps(optimizer) -> int:
    """Give every parameter's Adam state its own ``step`` tensor (see module docstring). Returns states fixed."""
    fixed = 0
    for inner in _inner_optimizers(optimizer):
        torch_opt = getattr(inner, "optimizer", None)
        if torch_opt is None:
            continue
        for state in torch_opt.state.values():
            step = state.get("step")
            if isinstance(step, torch.Tensor):
                state["step"] = step.clone()
                fixed += 1
    return fixed
