"""The device-discipline check: on a CPU-only machine, tell "device" memory from host memory and refuse to mix them.

Why: ``runtime.cpu`` maps every CUDA placement to the host, so on CPU machines a tensor the trainer forgot to move
to the GPU sits exactly where a moved one would, every test passes, and the first GPU step fails (an embedding fed
host token ids, a loss fed host labels, a host tensor in an NCCL all-reduce). Under this check the suite runs the
GPU code path (``parallel.local_device()`` answers ``cuda:0``) and every tensor knows where it would live on a GPU.

How: placement is a property of storage. Every storage allocated "on CUDA" is tagged on its (preserved) Python
``UntypedStorage`` object, so views, ``.data`` and ``main_grad`` buffers share the tag. Two modes maintain it:

- a ``TorchFunctionMode`` sees the Python-level calls that place tensors: factories with ``device=`` (mapped to the
  host and tagged), ``.to``/``.cuda``/``.cpu`` (a move between host and device is a real copy here, as on a GPU),
  and answers ``.device``/``.is_cuda``/``.type()`` as CUDA would; ``.numpy()`` of a device tensor fails as on CUDA;
- a ``TorchDispatchMode`` sees every aten op, forward and backward, and every c10d collective: outputs of an op
  are on the device when an input is (a factory op inside a composite call follows that call's placement).

Rules, each raising ``DeviceMixError`` naming the op and the first caller outside torch:

1. an aten op with a device tensor among its inputs takes no host tensor, except the copies between the two
   (``copy_``, ``_to_copy``) and 0-dim host tensors (CUDA kernels take those as scalars: ``x[mask] = 0`` passes
   the 0 as one; an op that would refuse one on a GPU is not caught);
2. a collective takes tensors where its group's backend does: a group created with ``backend="gloo"`` (megatron's
   ``*_GLOO`` groups) takes host tensors; every other group (the default group, megatron's TP/PP/DP groups) stands
   for NCCL and takes device tensors only. Object collectives place their own buffers and are exempt;
3. a ``GPTModel`` is called with its tensors (``PackedSeqParams``' included) where its parameters are: this is the
   only rule that sees inputs a CPU model never computes with (``cu_seqlens`` goes to Transformer Engine only).

Not modeled: streams, events and synchronization (there is one stream and every copy completes at once, so a
``non_blocking`` device-to-host copy read before a sync is not caught), pinned memory (``pin_memory()`` returns a
host copy). Enabled per process by ``enable_device_check()`` or by
``TRUNCDISTILL_DEVICE_CHECK=1`` in the environment of anything that calls ``runtime.enable_cpu_runtime()``.
"""

from __future__ import annotations

import dataclasses
import os
import traceback

import torch
import torch.distributed as dist
from torch.overrides import TorchFunctionMode
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

ENV_VAR = "TRUNCDISTILL_DEVICE_CHECK"
_TAG = "_truncdistill_on_device"  # attribute on a tensor's UntypedStorage: True = device memory
_EMULATED = torch.device("cuda", 0)
_CPU = torch.device("cpu")
_COPIES = {torch.ops.aten.copy_.default, torch.ops.aten._to_copy.default, torch.ops.aten._copy_from.default,
           torch.ops.aten._copy_from_and_resize.default, torch.ops.aten.lift_fresh.default}
_UNCHECKED_COLLECTIVES = {"c10d::barrier", "c10d::monitored_barrier_"}  # their tensor is the backend's own
_OBJECT_COLLECTIVES = ("all_gather_object", "broadcast_object_list", "gather_object", "scatter_object_list",
                       "send_object_list", "recv_object_list")

_state = {"active": False, "object_collectives": 0}
_host_groups: set[str] = set()  # names of groups created with backend="gloo"
_placement_stack: list = []  # per outer torch call: True/False (explicit device) or its args (follow them)


class DeviceMixError(RuntimeError):
    """A host tensor met a device op or a device-backend collective (or the reverse): a bug on a real GPU."""


def device_check_requested() -> bool:
    """Whether this process's environment asks for the check (``TRUNCDISTILL_DEVICE_CHECK=1``)."""
    return os.environ.get(ENV_VAR, "") not in ("", "0")


def device_check_active() -> bool:
    return _state["active"]


def emulated_device() -> torch.device:
    """The device the run uses under the check: "cuda:0", whose tensors are host memory tagged as device memory."""
    return _EMULATED


def is_device_tensor(tensor: torch.Tensor) -> bool:
    """Whether ``tensor`` would live on the GPU (always False while the check is off)."""
    with torch._C.DisableTorchFunction():
        return _on_device(tensor)


def _on_device(tensor: torch.Tensor) -> bool:
    try:
        return getattr(tensor.untyped_storage(), _TAG, False)
    except (RuntimeError, NotImplementedError):  # no storage (sparse, meta): never device memory here
        return False


def _place(tensor: torch.Tensor, on_device: bool) -> None:
    setattr(tensor.untyped_storage(), _TAG, on_device)


def _is_cuda(device) -> bool:
    if isinstance(device, bool):
        return False
    if isinstance(device, int):
        return True
    return torch.device(device).type == "cuda"


def _caller() -> str:
    """The innermost frame outside torch and this runtime, and the innermost frame of this package if different."""
    frames = [f for f in reversed(traceback.extract_stack()[:-2])
              if "/torch/" not in f.filename and "megatron_truncdistill/runtime/" not in f.filename]
    ours = next((f for f in frames if "megatron_truncdistill" in f.filename), None)
    shown = [f for f in (frames[0] if frames else None, ours) if f is not None]
    shown = shown[:1] if len(shown) == 2 and shown[0] is shown[1] else shown
    return " <- ".join(f"{f.filename.split('site-packages/')[-1]}:{f.lineno} in {f.name}" for f in shown)


def _describe(tensor: torch.Tensor) -> str:
    return f"{'device' if _on_device(tensor) else 'host'} {tuple(tensor.shape)} {str(tensor.dtype).split('.')[-1]}"


def _fail(what: str) -> None:
    raise DeviceMixError(f"device check: {what} (at {_caller()})")


# ---------------------------------------------------------------------------------------------------- aten ops
def _factory_placement() -> bool:
    """Where a tensor made from no tensor inputs goes: the enclosing Python call's placement (host if none)."""
    if not _placement_stack:
        return False
    top = _placement_stack[-1]
    if isinstance(top, bool):
        return top
    return any(_on_device(t) for t in pytree.tree_leaves(top) if isinstance(t, torch.Tensor))


class _PlacementDispatchMode(TorchDispatchMode):
    """Checks rule 1 and 2 on every op and tags each fresh output storage."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        with torch._C.DisableTorchFunction():
            if func.namespace == "c10d":
                _check_collective(func, args)
                return func(*args, **kwargs)
            inputs = [t for t in pytree.tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
            placed = [_on_device(t) for t in inputs]
            if any(placed) and func not in _COPIES:
                host = [t for t, d in zip(inputs, placed) if not d and t.dim() > 0]  # 0-dim: a scalar
                if host:
                    _fail(f"{func} got host tensor(s) [{', '.join(_describe(t) for t in host)}] together with "
                          f"device tensor(s) [{', '.join(_describe(t) for t, d in zip(inputs, placed) if d)}]")
            out = func(*args, **kwargs)
            on_device = any(placed) if inputs else _factory_placement()
            for t in pytree.tree_leaves(out):
                if isinstance(t, torch.Tensor) and not hasattr(t.untyped_storage(), _TAG):
                    _place(t, on_device)
            return out


def _group_of(args) -> dist.ProcessGroup | None:
    for arg in args:
        if isinstance(arg, torch.ScriptObject) and "ProcessGroup" in arg._type().qualified_name():
            return dist.ProcessGroup.unbox(arg)
    return None


def _check_collective(func, args) -> None:
    if _state["object_collectives"] or func._schema.name in _UNCHECKED_COLLECTIVES:
        return
    group = _group_of(args)
    host_group = group is not None and group.group_name in _host_groups
    for tensor in (t for t in pytree.tree_leaves(list(args)) if isinstance(t, torch.Tensor)):
        if _on_device(tensor) == host_group:
            backend = "a gloo group (host tensors only)" if host_group else "a device-backend (NCCL) group"
            _fail(f"collective {func._schema.name} got a {_describe(tensor)} tensor on {backend}"
                  f"{'' if group is None else ' ' + repr(group.group_desc or group.group_name)}")


# ------------------------------------------------------------------------------------------- Python-level calls
def _move(tensor: torch.Tensor, *, to_device: bool, dtype=None, copy: bool = False, **kwargs):
    """A host<->device move is a real copy (as on a GPU); a move to where the tensor already is, is not."""
    if _on_device(tensor) == to_device:
        return tensor.to(dtype=dtype, copy=copy, **kwargs) if dtype is not None or copy or kwargs else tensor
    moved = tensor.to(device=_CPU, dtype=dtype, copy=True, **kwargs)
    _place(moved, to_device)
    return moved


def _to(func, args, kwargs):
    tensor, rest = args[0], list(args[1:])
    kwargs = dict(kwargs)
    copy = kwargs.pop("copy", False)
    if rest and isinstance(rest[0], torch.Tensor):  # tensor.to(other): other's device and dtype
        return _move(tensor, to_device=_on_device(rest[0]), dtype=rest[0].dtype, copy=copy)
    device = kwargs.get("device")
    if device is not None:
        kwargs["device"] = _CPU
    elif rest and isinstance(rest[0], (str, int, torch.device)) and not isinstance(rest[0], bool):
        device, rest[0] = rest[0], _CPU
    _, dtype, _, memory_format = torch._C._nn._parse_to(*rest, **kwargs)  # CPU only: no CUDA query
    extra = {} if kwargs.get("memory_format") is None else {"memory_format": memory_format}
    if device is None:
        return func(tensor, dtype=dtype, copy=copy, **extra)
    return _move(tensor, to_device=_is_cuda(device), dtype=dtype, copy=copy, **extra)


def _type(func, args, kwargs):
    if len(args) != 1 or kwargs:  # tensor.type(dtype): a cast
        return func(*args, **kwargs)
    name = func(*args).replace("torch.cuda.", "torch.")  # the plain CPU runtime below answers "cuda" for all
    return name.replace("torch.", "torch.cuda.", 1) if _on_device(args[0]) else name


def _numpy(func, args, kwargs):
    if _on_device(args[0]):
        _fail(f"numpy() of a {_describe(args[0])} tensor: CUDA tensors must be copied to the host first")
    return func(*args, **kwargs)


_HANDLERS = {
    torch.Tensor.device.__get__: lambda f, a, k: _EMULATED if _on_device(a[0]) else f(*a),
    torch.Tensor.is_cuda.__get__: lambda f, a, k: _on_device(a[0]),
    torch.Tensor.is_cpu.__get__: lambda f, a, k: not _on_device(a[0]),
    torch.Tensor.get_device: lambda f, a, k: 0 if _on_device(a[0]) else -1,
    torch.Tensor.type: _type,
    torch.Tensor.numpy: _numpy,
    torch.Tensor.pin_memory: lambda f, a, k: a[0].clone(),  # pinned memory is not modeled: a host copy
    torch.Tensor.cuda: lambda f, a, k: _move(a[0], to_device=True),
    torch.Tensor.cpu: lambda f, a, k: _move(a[0], to_device=False),
    torch.Tensor.to: _to,
}


class _PlacementFunctionMode(TorchFunctionMode):
    """Maps CUDA placements to the host, tags what they create, and answers device queries as CUDA would."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        handler = _HANDLERS.get(func)
        if handler is not None:
            with torch._C.DisableTorchFunction():
                return handler(func, args, kwargs)
        kwargs = {k: v for k, v in kwargs.items() if k != "pin_memory"}
        explicit = kwargs.get("device")
        if explicit is not None:
            explicit = _is_cuda(explicit)
            kwargs = dict(kwargs, device=_CPU)
        _placement_stack.append(args if explicit is None else explicit)
        try:
            out = func(*args, **kwargs)
        finally:
            _placement_stack.pop()
        if explicit is not None:
            with torch._C.DisableTorchFunction():
                inputs = {t.untyped_storage()._cdata for t in pytree.tree_leaves(args) if isinstance(t, torch.Tensor)}
                for t in pytree.tree_leaves(out):
                    if isinstance(t, torch.Tensor) and t.untyped_storage()._cdata not in inputs:
                        _place(t, explicit)
        return out


# ------------------------------------------------------------------------------------------- patched entry points
def _record_gloo_groups() -> None:
    """Remember which groups are created with an explicit gloo backend (they take host tensors on GPUs too)."""
    from torch.distributed import distributed_c10d

    original = distributed_c10d.new_group

    def new_group(*args, **kwargs):  # wraps torch.distributed.new_group
        group = original(*args, **kwargs)
        backend = kwargs.get("backend", args[2] if len(args) > 2 else None)
        if isinstance(group, dist.ProcessGroup) and backend is not None and "gloo" in str(backend).lower():
            _host_groups.add(group.group_name)
        return group

    distributed_c10d.new_group = dist.new_group = new_group


def _exempt_object_collectives() -> None:
    from torch.distributed import distributed_c10d

    for name in _OBJECT_COLLECTIVES:
        original = getattr(distributed_c10d, name)

        def exempt(*args, __original=original, **kwargs):  # wraps torch.distributed.<name>
            _state["object_collectives"] += 1
            try:
                return __original(*args, **kwargs)
            finally:
                _state["object_collectives"] -= 1

        setattr(distributed_c10d, name, exempt)
        setattr(dist, name, exempt)


def _tensor_inputs(args, kwargs):
    """(name, tensor) of every tensor in a call's arguments, dataclass fields (PackedSeqParams) included."""
    named = [(f"argument {i}", a) for i, a in enumerate(args)] + list(kwargs.items())
    for name, value in named:
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            named.extend((f"{name}.{f.name}", getattr(value, f.name)) for f in dataclasses.fields(value))
        elif isinstance(value, torch.Tensor):
            yield name, value


def _check_model_inputs() -> None:
    """Rule 3, on megatron-core's GPTModel.forward (the boundary where a micro-batch enters a model)."""
    from megatron.core.models.gpt import GPTModel

    original = GPTModel.forward

    def forward(self, *args, **kwargs):  # wraps GPTModel.forward
        with torch._C.DisableTorchFunction():
            first = next(self.parameters(), None)
            if first is not None and _on_device(first):
                for name, tensor in _tensor_inputs(args, kwargs):
                    if not _on_device(tensor):
                        _fail(f"GPTModel.forward got {name} as a {_describe(tensor)} tensor but the model's "
                              "parameters are on the device")
        return original(self, *args, **kwargs)

    GPTModel.forward = forward


def enable_device_check() -> None:
    """Install the check in this process (CPU only, after ``runtime.cpu``'s runtime); idempotent."""
    if torch.cuda.is_available():
        raise RuntimeError("the device check emulates a GPU on CPU-only machines; on a GPU, run the real thing")
    if _state["active"]:
        return
    _record_gloo_groups()
    _exempt_object_collectives()
    _check_model_inputs()
    _PlacementFunctionMode().__enter__()  # both stay on this thread's mode stacks for the life of the process
    _PlacementDispatchMode().__enter__()
    _state["active"] = True
