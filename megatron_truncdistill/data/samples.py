"""Documents → fixed-length training samples, padded (one document each) or packed (several, kept apart).

A sample is a list of (prefix index, document index) pairs whose clipped lengths sum to at most ``seq_length``.
Labels never cross a document boundary: the last token of each document predicts nothing. With packing, position
ids restart at 0 for every document (the padding tail, if any, counts as one more document) and attention is
confined to each document.

How a model sees the packed documents depends on its attention implementation (``AttentionInput``); the batch
carries only what the run's models use. Position ids alone determine the block-diagonal causal mask (a token's
document starts ``position_id`` tokens before it), so the ``[b, 1, s, s]`` mask of the local attention is built on
the device, from position ids already there (``block_causal_mask``), never on the host: at s = 32k it is 1 GiB
per sample. Transformer Engine's THD attention takes document boundaries instead (``cu_seqlens``), which the
batch carries only when a model asks for them.
"""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass

import numpy as np
import torch

from megatron_truncdistill.sections import NO_SECTION


def plan_samples(lengths: np.ndarray, doc_ids: np.ndarray, *, seq_length: int, packing: bool) -> list[np.ndarray]:
    """Group ``doc_ids`` (in the given order) into samples; each document clipped to ``seq_length`` tokens.

    Packing is first-fit in order (next sample starts when the next document does not fit), deterministic and
    independent of the parallel layout. Documents shorter than 2 tokens carry no prediction and are skipped.
    """
    samples, current, used = [], [], 0
    for doc in doc_ids:
        n = min(int(lengths[doc]), seq_length)
        if n < 2:
            continue
        if not packing or used + n > seq_length:
            if current:
                samples.append(np.asarray(current, dtype=np.int64))
            current, used = [], 0
        current.append(doc)
        used += n
    if current:
        samples.append(np.asarray(current, dtype=np.int64))
    return samples


class AttentionInput(enum.Enum):
    """What one model's attention takes to keep packed documents apart (decided per model)."""

    CAUSAL = "causal"
    """Padded samples: megatron-core's plain causal mask; nothing comes from the batch."""
    BLOCK_MASK = "block_mask"
    """Packed samples, megatron-core's local attention: a ``[b, 1, s, s]`` mask built on the device."""
    THD = "thd"
    """Packed samples, Transformer Engine's THD attention: document boundaries (``cu_seqlens``), one sample."""


@dataclass
class Batch:
    """One micro-batch in megatron-core's ``[b, s]`` convention, on the host until ``to(device)``."""

    tokens: torch.Tensor  # [b, s] int64 input ids
    labels: torch.Tensor  # [b, s] int64 next-token ids (0 where there is no prediction)
    loss_mask: torch.Tensor  # [b, s] float32: 1 where the label counts in the loss
    sections: torch.Tensor  # [b, s] uint8 section code of each label (NO_SECTION where none)
    position_ids: torch.Tensor  # [b, s] int64, restarting at 0 for every packed document
    real_tokens: int  # tokens that are not padding (what the batch costs usefully)
    packed: bool = False  # documents are packed: attention must be confined to each (``block_causal_mask``)
    cu_seqlens: torch.Tensor | None = None  # [n_docs + 1] int32 boundaries of a packed 1-sample batch (THD)
    max_seqlen: int | None = None  # longest segment of ``cu_seqlens`` (known on the host: no device sync)

    def to(self, device: torch.device) -> "Batch":
        """This micro-batch on ``device``: each field copied once. On CUDA the copies come from pinned host
        memory and are ``non_blocking``: queued on the stream ahead of the model's first kernel, they overlap
        with the host's work instead of stalling it. Pinning needs CUDA's host allocator, so it happens only here
        (in the training process, once CUDA is up), never on CPU runs."""
        pin = device.type == "cuda"

        def move(tensor: torch.Tensor | None) -> torch.Tensor | None:
            if tensor is None:
                return None
            return (tensor.pin_memory() if pin else tensor).to(device, non_blocking=pin)

        return dataclasses.replace(self, tokens=move(self.tokens), labels=move(self.labels),
                                   loss_mask=move(self.loss_mask), sections=move(self.sections),
                                   position_ids=move(self.position_ids), cu_seqlens=move(self.cu_seqlens))


def block_causal_mask(position_ids: torch.Tensor) -> torch.Tensor:
    """``[b, s]`` packed position ids -> ``[b, 1, s, s]`` bool attention mask (True = masked), on their device.

    Query i may attend key j iff ``i - position_ids[i] <= j <= i`` (same document, not in the future). Built as one
    comparison and two in-place ops: the mask is the only ``[b, 1, s, s]`` allocation.
    """
    batch, seq = position_ids.shape
    key = torch.arange(seq, device=position_ids.device)  # [s]
    start = key - position_ids  # [b, s]: first position of each query's document
    allowed = key.view(1, 1, 1, seq) >= start.view(batch, 1, seq, 1)  # [b, 1, s, s]
    return allowed.tril_().logical_not_()


def _fill_row(documents, *, seq_length: int, loss_codes: np.ndarray, row: dict) -> None:
    """Write one sample's documents into the row arrays (all length ``seq_length``)."""
    start = 0
    for tokens, sections in documents:
        n = len(tokens)
        end = start + n
        row["tokens"][start:end] = tokens
        row["labels"][start:end - 1] = tokens[1:]
        row["sections"][start:end - 1] = sections[1:]  # a label's section is that of the token it predicts
        row["loss_mask"][start:end - 1] = np.isin(sections[1:], loss_codes)
        row["position_ids"][start:end] = np.arange(n)
        row["spans"].append((start, end))
        start = end
    row["real"] = start


def collate(samples: list[list[tuple[np.ndarray, np.ndarray]]], *, seq_length: int, loss_sections,
            packing: bool, cu_seqlens: bool = False) -> Batch:
    """Build a micro-batch from samples given as lists of (tokens, sections) documents.

    ``cu_seqlens``: also give the document boundaries a THD model takes (packing, one sample per micro-batch).
    """
    if cu_seqlens and not (packing and len(samples) == 1):
        raise ValueError("cu_seqlens describes one packed sample: use packing with micro_batch_size=1")
    loss_codes = np.asarray([int(s) for s in loss_sections], dtype=np.uint8)
    rows = []
    for documents in samples:
        row = {"tokens": np.zeros(seq_length, np.int64), "labels": np.zeros(seq_length, np.int64),
               "sections": np.full(seq_length, NO_SECTION, np.uint8), "loss_mask": np.zeros(seq_length, np.float32),
               "position_ids": np.zeros(seq_length, np.int64), "spans": []}
        _fill_row(documents, seq_length=seq_length, loss_codes=loss_codes, row=row)
        if packing:  # the padding tail is one more document (finite softmax; carries no loss)
            row["position_ids"][row["real"]:] = np.arange(seq_length - row["real"])
        rows.append(row)
    stack = {k: torch.from_numpy(np.stack([r[k] for r in rows])) for k in
             ("tokens", "labels", "sections", "loss_mask", "position_ids")}
    bounds = _cu_seqlens(rows[0]["spans"], seq_length) if cu_seqlens else None
    return Batch(stack["tokens"], stack["labels"], stack["loss_mask"], stack["sections"], stack["position_ids"],
                 real_tokens=sum(r["real"] for r in rows), packed=packing,
                 cu_seqlens=None if bounds is None else torch.tensor(bounds, dtype=torch.int32),
                 max_seqlen=None if bounds is None else max(b - a for a, b in zip(bounds, bounds[1:])))


def _cu_seqlens(spans: list[tuple[int, int]], seq_length: int) -> list[int]:
    """Cumulative document boundaries for Transformer Engine's packed (THD) attention; the padding tail, if
    any, is one more segment (its tokens carry no loss)."""
    bounds = [0] + [end for _, end in spans]
    if bounds[-1] < seq_length:
        bounds.append(seq_length)
    return bounds
