"""Atomic, synchronous megatron-core ``dist_checkpointing`` save/load: the only place that calls it.

Why a wrapper:
- Atomicity. All ranks write into ``<dir>.partial``; only after every rank has finished does rank 0 rename it to
  ``<dir>``. A kill during a save leaves a ``.partial`` directory that loaders never look at, so the newest
  *complete* checkpoint is never damaged.
- Integrity. Every load first runs ``integrity.verify_checkpoint`` on every rank, and the ranks agree on the
  outcome, so a damaged checkpoint is refused with one line naming the file instead of a traceback from deep in
  the loader (or a rank that hangs because another one failed).
- Cost. Saves are synchronous and in-process: the writer's results queue is an in-process one
  (``mcore_compat.use_in_process_checkpoint_results_queue``, ~17 s per save saved on 4 CPU ranks), and the
  strategy writes with one thread per rank (no forked writer processes from a rank that holds gloo sockets).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch.distributed as dist
from megatron.core import dist_checkpointing
from megatron.core.dist_checkpointing.strategies.torch import TorchDistSaveShardedStrategy

from megatron_truncdistill.checkpoint.integrity import PARTIAL_SUFFIX, CheckpointError, verify_checkpoint
from megatron_truncdistill.mcore_compat import use_in_process_checkpoint_results_queue


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def _is_rank0() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


def save_sharded(sharded_state_dict: dict, directory: str | Path, *, extra_files: dict[str, str] | None = None) -> Path:
    """Save a sharded state dict (collective over all ranks) to ``directory``, atomically.

    ``extra_files`` (name -> text) are written by rank 0 inside the directory before it becomes visible, so
    metadata and tensors appear together. Raises FileExistsError if ``directory`` already exists.
    """
    final = Path(directory)
    partial = final.with_name(final.name + PARTIAL_SUFFIX)
    if final.exists():
        raise FileExistsError(f"checkpoint directory {final} already exists; refusing to overwrite it")
    if _is_rank0():
        shutil.rmtree(partial, ignore_errors=True)  # debris of an interrupted save
        partial.mkdir(parents=True)
    _barrier()
    use_in_process_checkpoint_results_queue()
    strategy = TorchDistSaveShardedStrategy("torch_dist", 1, thread_count=1)
    dist_checkpointing.save(sharded_state_dict, str(partial), sharded_strategy=strategy)
    _barrier()
    if _is_rank0():
        for name, text in (extra_files or {}).items():
            (partial / name).write_text(text)
        partial.rename(final)
    _barrier()
    return final


def load_sharded(sharded_state_dict: dict, directory: str | Path) -> dict:
    """Load the tensors ``sharded_state_dict`` asks for from ``directory`` (any saved layout; extra keys ignored).

    Collective. A missing, half-written or damaged checkpoint is refused on every rank with a ``CheckpointError``
    naming the file (``verify_checkpoint``), before any tensor is read.
    """
    verify_on_every_rank(directory)
    return dist_checkpointing.load(sharded_state_dict, str(directory))


def verify_on_every_rank(directory: str | Path) -> None:
    """Collective when several ranks run: each verifies ``directory``, and all raise if any one refused it.

    Every rank checks what it can see (node-local copies differ), and no rank goes on into the collective load
    while another has refused: that would leave it hanging until the process-group timeout.
    """
    if not dist.is_initialized() or dist.get_world_size() == 1:
        verify_checkpoint(directory)
        return
    try:
        verify_checkpoint(directory)
        failure = None
    except CheckpointError as err:
        failure = err
    texts: list[str | None] = [None] * dist.get_world_size()
    dist.all_gather_object(texts, None if failure is None else str(failure))
    if failure is not None:
        raise failure
    for rank, text in enumerate(texts):
        if text is not None:
            raise CheckpointError(f"{text} (seen by rank {rank})")
