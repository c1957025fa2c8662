"""The trainer's resumable checkpoint: student weights, optimizer, LR schedule, RNG, data position, config.

Layout (see README.md beside this file): ``<run>/checkpoints/iter_0000010/`` is one dist_checkpointing directory
written atomically by ``dist_io.save_sharded``; ``<run>/checkpoints/latest`` names the newest complete one and is
replaced (``os.replace``) only after that directory exists, so a kill at any moment leaves a loadable latest.
The teacher is never saved: it is frozen and reloaded from its own checkpoint. Nor is a student holding a NaN or
Inf weight: ``save_training_checkpoint`` checks first, so neither the directory nor ``latest`` ever names one.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from megatron.core.dist_checkpointing.mapping import ShardedObject
from megatron.core.tensor_parallel import get_cuda_rng_tracker

from megatron_truncdistill.checkpoint.dist_io import load_sharded, save_sharded
from megatron_truncdistill.checkpoint.optimizer_state import load_optimizer_state, optimizer_sharded_state_dict
from megatron_truncdistill.errors import UserError
from megatron_truncdistill.parallel import ParallelContext

LATEST_FILE = "latest"
META_FILE = "truncdistill_train.json"


class NonFiniteWeightsError(UserError):
    """The student holds NaN/Inf weights: the checkpoint is refused before anything is written."""


@dataclass(frozen=True)
class ResumePoint:
    """Where a loaded run continues: the next step to run and how many samples were consumed."""

    step: int
    consumed_samples: int


def iteration_dir(checkpoint_root: str | Path, step: int) -> Path:
    return Path(checkpoint_root) / f"iter_{step:07d}"


def _rng_sharded_object(ctx: ParallelContext) -> ShardedObject:
    """Per-(pp, tp) RNG state: dropout differs per TP rank; DP replicas hold identical generators."""
    state = {"cpu": torch.get_rng_state(), "tracker": get_cuda_rng_tracker().get_states()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return ShardedObject("rng_state", state, (ctx.pp_size, ctx.tp_size), (ctx.pp_rank, ctx.tp_rank),
                         replica_id=ctx.dp_rank)


def _state_dict(ddp_chunks: list, optimizer, scheduler, ctx: ParallelContext, *, is_loading: bool,
                with_rng: bool = True) -> dict:
    model_sd = {}
    for chunk in ddp_chunks:  # the unwrapped GPTModel's keys: the same layout as model-only checkpoints
        model_sd.update(chunk.module.sharded_state_dict())
    state = {
        "model": model_sd,
        "optimizer": optimizer_sharded_state_dict(optimizer, model_sd, is_loading=is_loading),
        "scheduler": scheduler.state_dict(),
    }
    if with_rng:
        state["rng_state"] = _rng_sharded_object(ctx)
    return state


def _layout(ctx: ParallelContext) -> dict:
    return {"tensor_model_parallel_size": ctx.tp_size, "pipeline_model_parallel_size": ctx.pp_size,
            "data_parallel_size": ctx.dp_size}


def read_training_meta(directory: str | Path) -> dict:
    """The JSON written beside the tensors: step, consumed samples, layout, and whatever the trainer added."""
    return json.loads((Path(directory) / META_FILE).read_text())


def check_finite_weights(ddp_chunks: list, *, target: Path) -> None:
    """Collective (default group): refuse ``target`` unless every student weight on every rank is finite."""
    named = [(name, p.detach()) for chunk in ddp_chunks for name, p in chunk.module.named_parameters()]
    bad = torch.zeros((), dtype=torch.float64, device=named[0][1].device)
    for _, p in named:
        bad += (~torch.isfinite(p)).sum()
    dist.all_reduce(bad)
    count = int(bad.item())  # this is a CPU-GPU sync point (once per save)
    if count:
        first = next((n for n, p in named if not bool(torch.isfinite(p).all())), None)
        where = f" (here: {first}, rank {dist.get_rank()})" if first else ""
        raise NonFiniteWeightsError(f"refusing to write {target}: {count} student weights are NaN/Inf{where}; "
                                    f"'{LATEST_FILE}' still names the last finite checkpoint")


def save_training_checkpoint(checkpoint_root: str | Path, *, step: int, consumed_samples: int, ddp_chunks: list,
                             optimizer, scheduler, ctx: ParallelContext, extra_meta: dict | None = None,
                             extra_files: dict[str, str] | None = None) -> Path:
    """Collective: write ``iter_<step>`` atomically, then point ``latest`` at it.

    ``extra_files`` (name -> text) land inside the directory atomically too: the trainer adds the student's
    ``truncdistill_model.json`` so the converter can export any trainer checkpoint. Non-finite weights raise
    ``NonFiniteWeightsError`` before anything is written.
    """
    check_finite_weights(ddp_chunks, target=iteration_dir(checkpoint_root, step))
    state = _state_dict(ddp_chunks, optimizer, scheduler, ctx, is_loading=False)
    state["progress"] = {"step": step, "consumed_samples": consumed_samples}
    meta = {"step": step, "consumed_samples": consumed_samples, "layout": _layout(ctx), **(extra_meta or {})}
    target = iteration_dir(checkpoint_root, step)
    files = {META_FILE: json.dumps(meta, indent=2, default=str), **(extra_files or {})}
    save_sharded(state, target, extra_files=files)
    if dist.get_rank() == 0:
        tmp = Path(checkpoint_root) / (LATEST_FILE + ".tmp")
        tmp.write_text(target.name + "\n")
        os.replace(tmp, Path(checkpoint_root) / LATEST_FILE)
    dist.barrier()
    return target


def resolve_checkpoint(path: str | Path) -> Path:
    """A run's checkpoint root (follows ``latest``) or one ``iter_*`` directory."""
    path = Path(path)
    latest = path / LATEST_FILE
    if latest.is_file():
        return path / latest.read_text().strip()
    if (path / "metadata.json").is_file():
        return path
    raise FileNotFoundError(f"checkpoint.load={path}: neither a checkpoint directory nor a root with '{LATEST_FILE}'")


def load_training_checkpoint(path: str | Path, *, ddp_chunks: list, optimizer, scheduler,
                             ctx: ParallelContext) -> ResumePoint:
    """Collective: restore everything ``save_training_checkpoint`` wrote, at any TP/PP/DP layout.

    RNG streams are per (PP, TP) rank, so they are restored only at the layout that saved them; at another
    layout the dropout streams restart from the run's seed (weights, optimizer, schedule and data position
    still resume exactly).
    """
    directory = resolve_checkpoint(path)
    saved = read_training_meta(directory)["layout"]
    same_grid = (saved["tensor_model_parallel_size"], saved["pipeline_model_parallel_size"]) == (ctx.tp_size,
                                                                                               ctx.pp_size)
    template = _state_dict(ddp_chunks, optimizer, scheduler, ctx, is_loading=True, with_rng=same_grid)
    template["progress"] = {"step": 0, "consumed_samples": 0}
    loaded = load_sharded(template, directory)
    (chunk,) = ddp_chunks  # one model chunk per stage: virtual pipeline stages are refused at config time
    chunk.module.load_state_dict(loaded["model"], strict=True)
    load_optimizer_state(optimizer, loaded["optimizer"])
    scheduler.load_state_dict(loaded["scheduler"])
    if same_grid:
        rng = loaded["rng_state"]
        torch.set_rng_state(rng["cpu"])
        get_cuda_rng_tracker().set_states(rng["tracker"])
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state(rng["cuda"])
    progress = loaded["progress"]
    return ResumePoint(step=int(progress["step"]), consumed_samples=int(progress["consumed_samples"]))
