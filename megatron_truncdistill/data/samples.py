"""Documents → fixed-length training samples, padded (one document each) or packed (several, kept apart).

A sample is a list of (prefix index, document index) pairs whose clipped lengths sum to at most ``seq_length``.
Labels never cross a document boundary: the last token of each document predicts nothing. With packing, position
ids restart at 0 for every document and attention is confined to each document (block-diagonal causal mask).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

PAD_SECTION = 255  # section code of padding positions: matches no Section, so no loss and no per-section stat


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


@dataclass
class Batch:
    """One micro-batch in megatron-core's ``[b, s]`` convention."""

    tokens: torch.Tensor  # [b, s] int64 input ids
    labels: torch.Tensor  # [b, s] int64 next-token ids (0 where there is no prediction)
    loss_mask: torch.Tensor  # [b, s] float32: 1 where the label counts in the loss
    sections: torch.Tensor  # [b, s] uint8 section code of each label (PAD_SECTION where none)
    position_ids: torch.Tensor  # [b, s] int64
    attention_mask: torch.Tensor | None  # [b, 1, s, s] bool, True = masked; None = plain causal (padding mode)
    real_tokens: int  # tokens that are not padding (what the batch costs usefully)
    cu_seqlens: torch.Tensor | None = None  # [n_docs + 1] int32 document boundaries of a packed 1-sample batch


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
        row["doc_id"][start:end] = len(row["spans"])
        row["spans"].append((start, end))
        start = end


def collate(samples: list[list[tuple[np.ndarray, np.ndarray]]], *, seq_length: int, loss_sections,
            packing: bool) -> Batch:
    """Build a micro-batch from samples given as lists of (tokens, sections) documents."""
    loss_codes = np.asarray([int(s) for s in loss_sections], dtype=np.uint8)
    rows = []
    for documents in samples:
        row = {"tokens": np.zeros(seq_length, np.int64), "labels": np.zeros(seq_length, np.int64),
               "sections": np.full(seq_length, PAD_SECTION, np.uint8), "loss_mask": np.zeros(seq_length, np.float32),
               "position_ids": np.zeros(seq_length, np.int64), "doc_id": np.full(seq_length, -1, np.int64),
               "spans": []}
        _fill_row(documents, seq_length=seq_length, loss_codes=loss_codes, row=row)
        rows.append(row)
    stack = {k: torch.from_numpy(np.stack([r[k] for r in rows])) for k in
             ("tokens", "labels", "sections", "loss_mask", "position_ids", "doc_id")}
    mask = None
    if packing:
        doc = stack["doc_id"]  # [b, s]
        same_doc = doc.unsqueeze(2) == doc.unsqueeze(1)  # [b, s, s]
        causal = torch.ones(seq_length, seq_length, dtype=torch.bool).tril()  # [s, s]
        mask = ~(same_doc & causal & (doc >= 0).unsqueeze(2)).unsqueeze(1)  # [b, 1, s, s], True = masked
        # padding rows attend to nothing; let them attend to themselves so softmax stays finite
        mask[:, 0].diagonal(dim1=-2, dim2=-1).copy_(mask[:, 0].diagonal(dim1=-2, dim2=-1) & (doc >= 0))
    return Batch(stack["tokens"], stack["labels"], stack["loss_mask"], stack["sections"], stack["position_ids"],
                 mask, int((stack["doc_id"] >= 0).sum()),
                 cu_seqlens=_cu_seqlens(rows[0]["spans"], seq_length) if packing and len(rows) == 1 else None)


def _cu_seqlens(spans: list[tuple[int, int]], seq_length: int) -> torch.Tensor:
    """Cumulative document boundaries for Transformer Engine's packed (THD) attention; the padding tail, if
    any, is one more segment (its tokens carry no loss)."""
    bounds = [0] + [end for _, end in spans]
    if bounds[-1] < seq_length:
        bounds.append(seq_length)
    return torch.tensor(bounds, dtype=torch.int32)

