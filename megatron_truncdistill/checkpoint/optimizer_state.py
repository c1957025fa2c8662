"""The optimizer's part of a trainer checkpoint: megatron-core's sharded optimizer state, loadable at any layout.

megatron-core 0.16 needs three things around its own save/load of the optimizer (they bite whenever neither
Transformer Engine nor apex is installed, i.e. on every CPU run and on GPUs without them):
- the reshardable format must be requested explicitly (``fully_reshardable``); ``dp_reshardable`` resumes at
  step 1 and cannot change TP/PP;
- loading needs the distributed optimizer's states to exist first, and its fully-reshardable load needs the
  restored Adam ``step`` passed through (both shims live in ``mcore_compat``);
- the distributed optimizer's load restores Adam's ``step`` as ONE tensor object shared by every parameter's
  state; torch's Adam increments it in place once per parameter, so step 5 became 57 after one iteration and
  bias correction silently diverged. ``untie_adam_steps`` gives each parameter its own copy.
"""

from __future__ import annotations

import torch
from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer

from megatron_truncdistill.mcore_compat import init_distributed_optimizer_states, keep_restored_adam_step

OPTIMIZER_SHARDING_METADATA = {"distrib_optim_sharding_type": "fully_reshardable"}


def _inner_optimizers(optimizer) -> list:
    return list(getattr(optimizer, "chained_optimizers", [optimizer]))


def optimizer_sharded_state_dict(optimizer, model_sharded_state_dict: dict, *, is_loading: bool) -> dict:
    """The optimizer's sharded state in the reshardable format; prepares empty states first when loading."""
    if is_loading:
        for inner in _inner_optimizers(optimizer):
            if isinstance(inner, DistributedOptimizer):
                init_distributed_optimizer_states(inner)
    return optimizer.sharded_state_dict(
        model_sharded_state_dict, is_loading=is_loading, metadata=OPTIMIZER_SHARDING_METADATA
    )


def load_optimizer_state(optimizer, loaded_state: dict) -> None:
    """Load what ``optimizer_sharded_state_dict(is_loading=True)`` fetched, with the workarounds above."""
    for inner in _inner_optimizers(optimizer):
        if isinstance(inner, DistributedOptimizer):
            keep_restored_adam_step(inner)
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
