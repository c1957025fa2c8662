"""Every use of a megatron-core internal, in one place, behind one version check (CPU and GPU alike).

The project reaches past megatron-core's public API in exactly these places; each was verified against the
versions in ``SUPPORTED_MCORE`` (pyproject.toml's range says the same). A newer megatron-core must be verified
here, not discovered in a half-patched optimizer load on a thousand GPUs:

- ``DistributedOptimizer._init_optimizer_states_with_dummy_values``: loading a sharded optimizer state needs the
  states to exist first; megatron's own trainer calls this private method for the same reason.
- ``DistributedOptimizer._set_main_param_and_optimizer_states`` (instance patch): the fully-reshardable load
  copies every per-parameter state key from the checkpoint, but torch Adam's ``step`` lives in the param groups
  there: KeyError 'step'. The patch passes the step ``load_state_dict`` already restored through unchanged.
- ``dist_checkpointing.strategies.filesystem_async._results_queue``: the torch_dist writer fetches a results
  queue from a spawn-context ``multiprocessing.Manager`` (a fresh interpreter per process, ~17 s per save on
  4 CPU ranks); it is only needed by async writer processes and we always save synchronously.
- ``GPTModel.output_layer.forward`` shadowing: GPTModel has no public switch that returns the final-norm hidden
  states instead of logits; shadowing the layer's ``forward`` for one call keeps the whole embedding/RoPE/
  decoder path megatron-core's own.
- ``MegatronOptimizer.step``'s sequence (``prepare_grads``, ``get_grad_norm``, ``clip_grad_by_total_norm_fp32``,
  ``step_with_ready_grads``): megatron-core gates an update only on fp16 loss-scale overflow; a bf16/fp32 run
  with a NaN gradient norm clips by NaN and applies it. ``step_if_finite`` runs the same sequence with a gate
  between the norm and the update.

``runtime/cpu.py`` is the other half: the CPU-only layer that maps CUDA placements to the host.
"""

from __future__ import annotations

import functools
import math
import queue
from contextlib import contextmanager

SUPPORTED_MCORE = ("0.16.",)
"""megatron-core version prefixes these shims were verified against."""


@functools.cache
def check_megatron_core_version() -> str:
    """Fail loudly on an unverified megatron-core (every entry point and every shim below calls this)."""
    import megatron.core

    version = megatron.core.__version__
    if not version.startswith(SUPPORTED_MCORE):
        raise RuntimeError(
            f"megatron-core {version} is not verified with megatron-truncdistill (verified: "
            f"{', '.join(v + 'x' for v in SUPPORTED_MCORE)}); install megatron-core==0.16.1, or verify the shims in "
            "megatron_truncdistill/mcore_compat.py against the new version and extend SUPPORTED_MCORE"
        )
    return version


def init_distributed_optimizer_states(inner) -> None:
    """Create a DistributedOptimizer's per-parameter states so a sharded load has tensors to fill."""
    check_megatron_core_version()
    inner._init_optimizer_states_with_dummy_values()


def keep_restored_adam_step(inner) -> None:
    """Instance patch of a DistributedOptimizer: its per-parameter state copy keeps the restored ``step``."""
    check_megatron_core_version()
    original = inner._set_main_param_and_optimizer_states

    def set_states(model_param, tensors):  # replaces DistributedOptimizer._set_main_param_and_optimizer_states
        group_index, group_order = inner.model_param_group_index_map[model_param]
        main_param = inner.optimizer.param_groups[group_index]["params"][group_order]
        state = inner.optimizer.state[main_param]
        if "step" in state and "step" not in tensors:
            tensors = dict(tensors, step=state["step"])
        original(model_param, tensors)

    inner._set_main_param_and_optimizer_states = set_states


def use_in_process_checkpoint_results_queue() -> None:
    """Pre-fill the torch_dist writer's lazily created results queue with an in-process queue."""
    check_megatron_core_version()
    from megatron.core.dist_checkpointing.strategies import filesystem_async

    if filesystem_async._results_queue is None:
        filesystem_async._results_queue = queue.Queue()


@contextmanager
def final_hidden_states(model):
    """Make a last-stage GPTModel return its final-norm hidden states (``[b, s, h]``) instead of logits."""
    check_megatron_core_version()
    layer = model.output_layer
    layer.forward = lambda hidden, weight=None, runtime_gather_output=None: (hidden, None)
    try:
        yield
    finally:
        del layer.forward


def step_if_finite(optimizer, *, skip: bool = False) -> tuple[bool, float]:
    """Step a megatron-core optimizer as its ``step()`` does (prepare grads, norm, clip, update), except that
    nothing is updated when ``skip`` is set or the gradient norm is not finite. Returns (stepped, grad norm).

    The norm is computed even with clipping off: it is what the gate reads. megatron-core all-reduces it over the
    model-parallel ranks, and data-parallel ranks hold identical reduced gradients, so every rank takes the same
    branch. The chained-optimizer loop mirrors ``ChainedOptimizer.step`` of megatron-core 0.16.
    """
    check_megatron_core_version()
    from megatron.core.optimizer.clip_grads import clip_grad_by_total_norm_fp32

    if optimizer.prepare_grads():  # fp16 loss-scale overflow (this project trains in bf16 or fp32)
        return False, float("nan")
    grad_norm = float(optimizer.get_grad_norm())  # megatron-core returns a float: a CPU-GPU sync point
    if skip or not math.isfinite(grad_norm):
        return False, grad_norm
    for inner in getattr(optimizer, "chained_optimizers", [optimizer]):
        params = inner.get_parameters()
        if inner.config.clip_grad > 0.0 and params and not getattr(inner, "is_stub_optimizer", False):
            clip_grad_by_total_norm_fp32(params, max_norm=inner.config.clip_grad, total_norm=grad_norm,
                                         use_decoupled_grad=inner.config.use_precision_aware_optimizer_no_fp8_or_ds_fp8)
    return bool(optimizer.step_with_ready_grads()), grad_norm
