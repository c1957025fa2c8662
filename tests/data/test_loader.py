"""Which samples each rank reads: layout-independent global order, DP slices, blend, split, resume position."""

from __future__ import annotations

import numpy as np
import pytest

from distill_setup import make_tiny_bins
from megatron_truncdistill.data.bins import open_bins
from megatron_truncdistill.data.loader import GlobalSampleOrder, StepBatches, build_sources, split_documents
from megatron_truncdistill.sections import Section
from megatron_truncdistill.tokenization import load_tokenizer


@pytest.fixture(scope="module")
def bins(tmp_path_factory):
    root = tmp_path_factory.mktemp("loader")
    prefix, tokenizer = make_tiny_bins(root, records=40)
    other, _ = make_tiny_bins(root / "b", records=20, seed=9)
    tok = load_tokenizer(tokenizer)
    return open_bins(prefix, tokenizer=tok), open_bins(other, tokenizer=tok)


def _steps(bins_list, *, dp_size, weights=None, steps=3):
    sources = build_sources(bins_list, split="train", valid_fraction=0.1, seq_length=256, packing=False)
    order = GlobalSampleOrder(sources, weights=weights, seed=3, blend_size=sum(len(s.plans) for s in sources))
    out = []
    for rank in range(dp_size):
        loader = StepBatches(order, global_batch=8, micro_batch=2, dp_rank=rank, dp_size=dp_size, seq_length=256,
                             loss_sections=list(Section), packing=False)
        out.append([[b.tokens for b in loader.step(k * 8)] for k in range(steps)])
    return out


def test_dp_ranks_split_exactly_the_single_rank_global_batch(bins):
    (single,) = _steps(list(bins), dp_size=1)
    two = _steps(list(bins), dp_size=2)
    for k in range(3):
        whole = np.concatenate([t.numpy() for t in single[k]])
        halves = np.concatenate([t.numpy() for rank in two for t in rank[k]])
        np.testing.assert_array_equal(whole, halves)


def test_blend_weights_are_respected(bins):
    sources = build_sources(list(bins), split="train", valid_fraction=0.0, seq_length=256, packing=False)
    order = GlobalSampleOrder(sources, weights=[0.8, 0.2], seed=0, blend_size=100)
    picks = [order.locate(i)[0] for i in range(1000)]
    assert abs(picks.count(0) / 1000 - 0.8) < 0.02


def test_valid_split_is_the_tail_and_disjoint():
    train, valid = split_documents(40, 0.1)
    assert valid.tolist() == [36, 37, 38, 39] and not set(train) & set(valid)
    assert split_documents(3, 0.01)[1].tolist() == [2]  # at least one document once a fraction is asked for


def test_epochs_reshuffle_and_wrap(bins):
    sources = build_sources([bins[0]], split="train", valid_fraction=0.0, seq_length=256, packing=False)
    order = GlobalSampleOrder(sources, weights=None, seed=1, blend_size=len(sources[0].plans))
    n = len(sources[0].plans)
    first = [int(order.locate(i)[1][0]) for i in range(n)]
    second = [int(order.locate(i)[1][0]) for i in range(n, 2 * n)]
    assert sorted(first) == sorted(second) == list(range(n)) and first != second
