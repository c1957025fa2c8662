"""Which samples each rank reads at each step: blend, train/valid split, shuffling, and the data position.

The global order of samples depends only on the data, ``seq_length``, packing and the seed, never on TP/PP/DP:
step k consumes global samples [k·G, (k+1)·G) (G = global batch), and data-parallel rank r reads the r-th
contiguous slice of them, cut into micro-batches. Resuming at ``consumed_samples`` continues the same order.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from megatron.core.datasets import helpers

from megatron_truncdistill.data.bins import SectionedBins
from megatron_truncdistill.data.samples import Batch, collate, plan_samples
from megatron_truncdistill.layout import check_batch_sizes


@dataclass
class SampleSource:
    """One prefix's samples for one split: ``plans[i]`` lists the document ids packed into sample i."""

    bins: SectionedBins
    plans: list[np.ndarray]


def split_documents(num_docs: int, valid_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """The last ``valid_fraction`` of documents (at least one when the fraction is > 0 and ≥ 2 docs) are valid."""
    n_valid = int(round(num_docs * valid_fraction))
    if valid_fraction > 0 and num_docs >= 2:
        n_valid = max(n_valid, 1)
    return np.arange(num_docs - n_valid), np.arange(num_docs - n_valid, num_docs)


def build_sources(all_bins: list[SectionedBins], *, split: str, valid_fraction: float, seq_length: int,
                  packing: bool) -> list[SampleSource]:
    sources = []
    for bins in all_bins:
        train_docs, valid_docs = split_documents(len(bins), valid_fraction)
        docs = train_docs if split == "train" else valid_docs
        sources.append(SampleSource(bins, plan_samples(bins.document_lengths, docs, seq_length=seq_length,
                                                       packing=packing)))
    return sources


class GlobalSampleOrder:
    """Maps a global sample number to (source, sample) through megatron's blending helper and per-epoch shuffles."""

    def __init__(self, sources: list[SampleSource], *, weights: list[float] | None, seed: int,
                 blend_size: int) -> None:
        sizes = np.array([len(s.plans) for s in sources], dtype=np.float64)
        if (sizes == 0).any():
            empty = [s.bins.prefix for s in sources if not s.plans]
            raise ValueError(f"data.prefixes: no samples in {', '.join(empty)} for this split")
        w = np.asarray(weights if weights is not None else sizes, dtype=np.float64)
        w = w / w.sum()
        self.sources, self.seed = sources, seed
        self.dataset_index = np.zeros(blend_size, dtype=np.int16)
        self.dataset_sample_index = np.zeros(blend_size, dtype=np.int64)
        helpers.build_blending_indices(self.dataset_index, self.dataset_sample_index, w, len(sources), blend_size,
                                       False)
        self.per_lap = np.bincount(self.dataset_index, minlength=len(sources))  # samples of each source per lap
        self._perms: dict[tuple[int, int], np.ndarray] = {}

    def _permutation(self, source: int, epoch: int) -> np.ndarray:
        key = (source, epoch)
        if key not in self._perms:
            rng = np.random.RandomState((self.seed + 7919 * source + 104729 * epoch) % (2**32))
            self._perms[key] = rng.permutation(len(self.sources[source].plans))
        return self._perms[key]

    def locate(self, global_index: int) -> tuple[int, np.ndarray]:
        """The source and document-id plan of global sample ``global_index`` (wraps into further epochs)."""
        blend_len = len(self.dataset_index)
        lap, pos = divmod(global_index, blend_len)
        source = int(self.dataset_index[pos])
        local = lap * int(self.per_lap[source]) + int(self.dataset_sample_index[pos])
        n = len(self.sources[source].plans)
        epoch, within = divmod(local, n)
        return source, self.sources[source].plans[self._permutation(source, epoch)[within]]


class StepBatches:
    """Produces each step's micro-batches for one data-parallel rank."""

    def __init__(self, order: GlobalSampleOrder, *, global_batch: int, micro_batch: int, dp_rank: int,
                 dp_size: int, seq_length: int, loss_sections, packing: bool, cu_seqlens: bool = False) -> None:
        """``cu_seqlens``: batches also carry THD document boundaries (a model uses ``AttentionInput.THD``)."""
        check_batch_sizes(global_batch=global_batch, micro_batch=micro_batch, dp=dp_size)
        self.order, self.global_batch, self.micro_batch = order, global_batch, micro_batch
        self.dp_rank, self.dp_size, self.seq_length = dp_rank, dp_size, seq_length
        self.loss_sections, self.packing, self.cu_seqlens = loss_sections, packing, cu_seqlens

    @property
    def num_microbatches(self) -> int:
        return self.global_batch // (self.micro_batch * self.dp_size)

    def _sample(self, global_index: int) -> list[tuple[np.ndarray, np.ndarray]]:
        source, plan = self.order.locate(global_index)
        bins = self.order.sources[source].bins
        return [bins.document(int(doc), limit=self.seq_length) for doc in plan]

    def step(self, consumed_samples: int) -> list[Batch]:
        """Micro-batches (on the host) of the step that starts at ``consumed_samples`` (a multiple of the global
        batch); the forward step moves each to the device as it is consumed."""
        per_rank = self.global_batch // self.dp_size
        first = consumed_samples + self.dp_rank * per_rank
        batches = []
        for m in range(self.num_microbatches):
            start = first + m * self.micro_batch
            samples = [self._sample(i) for i in range(start, start + self.micro_batch)]
            batches.append(collate(samples, seq_length=self.seq_length, loss_sections=self.loss_sections,
                                   packing=self.packing, cu_seqlens=self.cu_seqlens))
        return batches
