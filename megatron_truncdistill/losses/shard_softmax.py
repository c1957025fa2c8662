"""Softmax over a vocabulary split across tensor-parallel ranks, for one chunk of tokens, without gathering it.

As in megatron-core's ``VocabParallelCrossEntropy``: a MAX all-reduce of the per-row maxima, a local exp of the
shifted logits, a SUM all-reduce of the row sums. Several distributions of one chunk (student, teacher, the
student at T = 1 for cross-entropy) share each all-reduce by stacking their ``[n]`` rows.

Padded vocabulary: megatron pads the output layer to a multiple of ``make_vocab_size_divisible_by × tp``; rows
``>= vocab_size`` are not tokens. Padding sits at the end of the vocabulary, so on each rank the real rows are a
prefix of its shard; every function here reads only that prefix (``z[:, :shard.real]``), which gives padded rows
exactly zero probability and zero gradient without a mask tensor.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class VocabShard:
    """This rank's slice of the padded vocabulary: global rows ``[start, start + width)``; the first ``real`` are
    tokenizer rows, the rest padding."""

    start: int
    width: int
    real: int
    group: dist.ProcessGroup | None

    @classmethod
    def of(cls, width: int, *, group: dist.ProcessGroup | None, vocab_size: int | None) -> VocabShard:
        """The shard of a ``[.., width]`` logits tensor on this rank of ``group`` (None: no tensor parallelism)."""
        rank, size = (0, 1) if group is None else (dist.get_rank(group), dist.get_world_size(group))
        padded = width * size
        vocab_size = padded if vocab_size is None else vocab_size
        if not 0 < vocab_size <= padded:
            raise ValueError(f"vocab_size {vocab_size} must be in [1, {padded}] (the padded vocabulary: "
                             f"{width} rows per rank × {size} tensor-parallel ranks)")
        start = rank * width
        return cls(start=start, width=width, real=max(0, min(width, vocab_size - start)), group=group)


def all_reduce_(tensor: torch.Tensor, op: dist.ReduceOp, group: dist.ProcessGroup | None) -> torch.Tensor:
    """In-place all-reduce over ``group``; a no-op without tensor parallelism."""
    if group is not None and dist.get_world_size(group) > 1:
        dist.all_reduce(tensor, op=op, group=group)
    return tensor


def row_max(z: torch.Tensor, shard: VocabShard) -> torch.Tensor:
    """fp32 ``[n]`` maximum of each row's real logits on this shard (-inf where the shard holds no real rows)."""
    if shard.real == 0:
        return torch.full((z.shape[0],), -torch.inf, dtype=torch.float32, device=z.device)
    return z[:, : shard.real].amax(dim=-1).float()  # max is exact in bf16: cast the [n] result, not the chunk


def exp_shifted(z: torch.Tensor, global_max: torch.Tensor, *, inv_temperature: float, shard: VocabShard,
                log_out: torch.Tensor, prob_out: torch.Tensor) -> torch.Tensor:
    """``log_out = (z − max)/T`` and ``prob_out = exp(log_out)`` in fp32 on the real rows; returns the local row sums.

    ``z`` is ``[n, width]`` in any float dtype; the subtraction reads it once and writes fp32 (all math in fp32).
    Shifting by the global max before dividing by T is the same as shifting z/T by max/T (T > 0).
    """
    torch.sub(z[:, : shard.real], global_max.unsqueeze(1), out=log_out)  # [n, real] fp32
    if inv_temperature != 1.0:
        log_out.mul_(inv_temperature)
    torch.exp(log_out, out=prob_out)
    return prob_out.sum(dim=-1)


def normalize_(log_buf: torch.Tensor, prob_buf: torch.Tensor, total: torch.Tensor) -> None:
    """Turn shifted logits and their exps into log-probabilities and probabilities, given the global row sums."""
    log_buf.sub_(total.log().unsqueeze(1))
    prob_buf.mul_(total.reciprocal().unsqueeze(1))


class Workspace:
    """``[rows, cols]`` buffers (fp32 unless asked) allocated once per call and reused by every chunk.

    Why: a fresh chunk-sized tensor per step costs an mmap and page faults on CPU and allocator churn on GPU; the
    last (shorter) chunk uses a row prefix, which is still contiguous.
    """

    def __init__(self, rows: int, cols: int, device: torch.device):
        self.rows, self.cols, self.device = rows, cols, device
        self._buffers: dict[str, torch.Tensor] = {}

    def get(self, name: str, n: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Buffer ``name`` as ``[n, cols]``, n <= rows (contents undefined)."""
        if name not in self._buffers:
            self._buffers[name] = torch.empty(self.rows, self.cols, dtype=dtype, device=self.device)
        return self._buffers[name][:n]


DEFAULT_CHUNK_ELEMENTS = {"cpu": 1 << 21, "cuda": 1 << 26}


def resolve_chunk_size(chunk_size: int | None, *, tokens: int, width: int, device: torch.device,
                       min_rows: int = 1) -> int:
    """Rows per chunk: ``chunk_size`` if given, else rows whose fp32 shard fits a per-device element budget (at
    least ``min_rows``).

    Why the budgets differ: on CPU a chunk should stay in the last-level cache (each buffer here 8 MiB); on a GPU
    it should hold enough rows to fill the device and keep the number of collectives low (each buffer 256 MiB).
    """
    if chunk_size is not None:
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        return min(chunk_size, max(tokens, 1))
    budget = DEFAULT_CHUNK_ELEMENTS.get(device.type, DEFAULT_CHUNK_ELEMENTS["cuda"])
    return max(1, min(max(tokens, 1), max(min_rows, budget // max(width, 1))))
