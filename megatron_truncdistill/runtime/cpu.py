"""Let megatron-core 0.16.x run on CPU processes: the one place this project patches megatron-core.

megatron-core assumes CUDA in a few dozen places (``device="cuda"`` literals in the pipeline schedules, DDP grad
buffers, optimizer and grad clipping; ``torch.cuda.current_device()``/``synchronize()``; ``.cuda()`` on tied
embeddings; ``.type() == 'torch.cuda.FloatTensor'`` asserts; a CUDA-only RNG tracker that attention always enters).
Rather than forking those modules, ``enable_cpu_runtime()`` installs, once per process and only when CUDA is
absent:

1. shims for the ``torch.cuda`` functions megatron-core calls (each replaces exactly the symbol named below);
2. CPU versions of megatron's private ``_get_cuda_rng_state``/``_set_cuda_rng_state``: on a CPU build the
   original setter queues a lazy callback that never runs, so ``fork()`` would silently stop restoring state;
3. one ``TorchFunctionMode`` that maps CUDA device arguments and ``.cuda()`` to the CPU and answers megatron's
   ``.type()`` checks with the CUDA type name (only the no-argument form, which is what megatron asserts on).

On a GPU none of this is installed. An unverified megatron-core version fails loudly here (through
``mcore_compat``, which every entry point also calls on GPUs) rather than in a half-patched forward pass.

Because CUDA placements land on the host, this runtime alone cannot see a tensor the trainer forgot to move to the
GPU; ``runtime.device_check`` (``enable_cpu_runtime(device_check=True)`` or ``TRUNCDISTILL_DEVICE_CHECK=1``) adds
the check that can.
"""

from __future__ import annotations

import logging

import torch
from torch.overrides import TorchFunctionMode

from megatron_truncdistill.mcore_compat import check_megatron_core_version
from megatron_truncdistill.runtime.device_check import device_check_requested, enable_device_check

_installed = False
_mode: TorchFunctionMode | None = None


def _is_cuda_device(device) -> bool:
    """True for "cuda", "cuda:N", torch.device("cuda"), and a bare int (torch reads ints as CUDA indices)."""
    if isinstance(device, bool):
        return False
    if isinstance(device, int):
        return True
    if isinstance(device, str):
        return device.startswith("cuda")
    return isinstance(device, torch.device) and device.type == "cuda"


_CPU = torch.device("cpu")
_TENSOR_MOVES = {torch.Tensor.cuda}
_TENSOR_TO = {torch.Tensor.to}
_TENSOR_TYPE = {torch.Tensor.type}


class _CudaToCpuMode(TorchFunctionMode):
    """Rewrites CUDA placements to CPU for every torch call made while the mode is on the stack."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _TENSOR_MOVES:  # tensor.cuda(...): already "on the device"
            return args[0]
        if func in _TENSOR_TYPE and len(args) == 1 and not kwargs:
            name = func(*args)
            return name.replace("torch.", "torch.cuda.", 1) if not name.startswith("torch.cuda.") else name
        if "device" in kwargs and _is_cuda_device(kwargs["device"]):
            kwargs = dict(kwargs, device=_CPU)
        if "pin_memory" in kwargs:  # pinning needs a CUDA allocator; meaningless on CPU
            kwargs = {k: v for k, v in kwargs.items() if k != "pin_memory"}
        if func in _TENSOR_TO and len(args) > 1 and _is_cuda_device(args[1]):
            args = (args[0], _CPU, *args[2:])
        return func(*args, **kwargs)


def _patch_torch_cuda() -> None:
    """Replace the torch.cuda entry points megatron-core calls with CPU equivalents.

    The CPU default generator plays the role of the "CUDA" generator: dropout on CPU tensors draws from it.
    ``manual_seed_all`` is left alone because ``torch.manual_seed`` calls it (harmless: it queues lazily).
    """
    torch.cuda.current_device = lambda: 0  # replaces torch.cuda.current_device; the mode maps index 0 to CPU
    torch.cuda.synchronize = lambda device=None: None  # replaces torch.cuda.synchronize
    torch.cuda.get_rng_state = lambda device="cuda": torch.get_rng_state()  # replaces torch.cuda.get_rng_state
    torch.cuda.set_rng_state = lambda new_state, device="cuda": torch.set_rng_state(new_state)
    torch.cuda.manual_seed = lambda seed: torch.manual_seed(seed)  # replaces torch.cuda.manual_seed
    torch.cuda.random.get_rng_state = torch.cuda.get_rng_state  # megatron's _get_cuda_rng_state calls this path
    torch.cuda.random.set_rng_state = torch.cuda.set_rng_state


def _patch_megatron_rng() -> None:
    """Replace megatron's private RNG state accessors, which go through CUDA generators, with CPU ones."""
    from megatron.core.tensor_parallel import random as mcore_random

    def get_state(device="cuda", clone=False, graph_safe=False):  # replaces random._get_cuda_rng_state
        return torch.get_rng_state()

    def set_state(new_state, device=-1, graph_safe=False):  # replaces random._set_cuda_rng_state
        torch.set_rng_state(new_state)

    mcore_random._get_cuda_rng_state = get_state
    mcore_random._set_cuda_rng_state = set_state
    # fork() compares the CPU state before/after to catch CPU draws inside a GPU RNG region; on CPU the "GPU"
    # generator *is* the CPU generator, so every dropout inside fork() would log a false alarm.
    logging.getLogger(mcore_random.__name__).addFilter(
        lambda record: "CPU RNG state changed within GPU RNG context" not in record.getMessage()
    )


def enable_cpu_runtime(*, device_check: bool | None = None) -> bool:
    """Install the CPU runtime once per process. Returns True when active, False on a CUDA machine (no-op).

    ``device_check``: also install the device-discipline check (``runtime.device_check``); None = as the
    environment says (``TRUNCDISTILL_DEVICE_CHECK``), so that launched ranks inherit it.
    """
    global _installed, _mode
    if torch.cuda.is_available():
        return False
    if not _installed:
        check_megatron_core_version()
        _patch_torch_cuda()
        _patch_megatron_rng()
        _mode = _CudaToCpuMode()
        _mode.__enter__()  # stays on this thread's mode stack for the life of the process
        _installed = True
    if device_check or (device_check is None and device_check_requested()):
        enable_device_check()
    return True
