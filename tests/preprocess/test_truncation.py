"""Truncation policies: exact arithmetic per policy, on paper and on real tokenized traces."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
from megatron.core.datasets.indexed_dataset import IndexedDataset

from megatron_truncdistill.preprocess.truncation import kept_ranges, make_policy, parse_fraction, truncate
from megatron_truncdistill.sections import Section


def test_lsp_is_exact_decimal():
    assert parse_fraction("0.29") == Fraction(29, 100)
    assert int(0.29 * 100) == 28  # the float trap the Fraction avoids
    assert kept_ranges(make_policy("lead-span", lsp="0.29"), 100, 10, 80) == [(0, 29)]


@pytest.mark.parametrize("lsp, n, expected", [("0.5", 10, 5), ("0.5", 11, 5), ("1", 7, 7), ("0.01", 50, 1),
                                              ("0.3", 10, 3), ("0.7", 10, 7), ("1/3", 9, 3)])
def test_lead_span_keeps_max_1_floor_rn(lsp, n, expected):
    assert kept_ranges(make_policy("lead-span", lsp=lsp), n, 2, n - 4) == [(0, expected)]


def test_token_budget_cot_span_window_none():
    n, p, c = 100, 10, 70  # 10 prompt, 70 CoT, 20 answer; response m = 90
    assert kept_ranges(make_policy("token-budget", max_tokens=40), n, p, c) == [(0, 40)]
    assert kept_ranges(make_policy("token-budget", max_tokens=400), n, p, c) == [(0, 100)]
    assert kept_ranges(make_policy("cot-span", lsp="0.5"), n, p, c) == [(0, 10 + 35)]
    assert kept_ranges(make_policy("cot-span", lsp="0.99"), n, p, c) == [(0, 10 + 69)]
    k = 45  # floor(0.5 * 90)
    assert kept_ranges(make_policy("window", lsp="0.5", keep="left"), n, p, c) == [(0, 10), (10, 10 + k)]
    assert kept_ranges(make_policy("window", lsp="0.5", keep="middle"), n, p, c) == [(0, 10), (10 + 22, 10 + 22 + k)]
    assert kept_ranges(make_policy("window", lsp="0.5", keep="right"), n, p, c) == [(0, 10), (100 - k, 100)]
    assert kept_ranges(make_policy("none"), n, p, c) == [(0, 100)]


def test_truncate_window_concatenates_prompt_and_window():
    sections = np.repeat(np.array([0, 1, 2], dtype=np.uint8), [3, 6, 3])  # [12]
    tokens = np.arange(12, dtype=np.int64)
    kept, kept_sections = truncate(make_policy("window", lsp="0.5", keep="right"), tokens, sections)
    assert kept.tolist() == [0, 1, 2, 8, 9, 10, 11]  # response m = 9, k = floor(4.5) = 4, the last 4
    assert kept_sections.tolist() == [0, 0, 0, 1, 2, 2, 2]


def test_window_over_the_whole_sequence():
    n, p, c = 100, 10, 70
    k = 50  # max(1, floor(0.5 * 100)): the prompt is part of the span
    for keep, start in (("left", 0), ("middle", 25), ("right", 50)):
        policy = make_policy("window", lsp="0.5", keep=keep, window_scope="sequence")
        assert kept_ranges(policy, n, p, c) == [(start, start + k)]
    assert make_policy("window", lsp="0.5", keep="left").window_scope == "response"  # the default protocol's


def test_float_rounding_and_counted_generation_prompt():
    """The official spans: int(L * r) in floating point over n + tail tokens, clipped to the n written ones."""
    exact = make_policy("lead-span", lsp="0.29")
    official = make_policy("lead-span", lsp="0.29", rounding="float")
    assert kept_ranges(exact, 100, 10, 80) == [(0, 29)] and kept_ranges(official, 100, 10, 80) == [(0, 28)]
    assert kept_ranges(official, 97, 10, 80, tail=3) == [(0, 28)]  # int(100 * 0.29) = 28 of 97 written
    whole = make_policy("lead-span", lsp="1", rounding="float")
    assert kept_ranges(whole, 97, 10, 80, tail=3) == [(0, 97)]  # the 3 prompt tokens are never written
    right = make_policy("window", lsp="0.5", keep="right", window_scope="sequence", rounding="float")
    assert kept_ranges(right, 97, 10, 80, tail=3) == [(50, 97)]  # the official window holds 50 ids, 3 of them tail
    middle = make_policy("window", lsp="0.5", keep="middle", window_scope="sequence", rounding="float")
    assert kept_ranges(middle, 97, 10, 80, tail=3) == [(25, 75)]


@pytest.mark.parametrize("kwargs, message", [
    ({"kind": "lead-span", "lsp": "0"}, "--lsp"), ({"kind": "lead-span", "lsp": "1.5"}, "--lsp"),
    ({"kind": "token-budget"}, "--max-tokens"), ({"kind": "window", "lsp": "0.5"}, "--keep"),
    ({"kind": "middle-out"}, "--truncation"), ({"kind": "lead-span", "lsp": "nan"}, "--lsp nan: not a number"),
    ({"kind": "none", "lsp": "0.5"}, "--lsp 0.5 conflicts with --truncation none"),
    ({"kind": "window", "lsp": "0.5", "keep": "left", "window_scope": "prompt"}, "--window-scope")])
def test_bad_policy_options_name_the_option(kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_policy(kwargs.pop("kind"), **kwargs)


@pytest.mark.parametrize("policy, opts", [("lead-span", {"lsp": "0.3"}), ("token-budget", {"max_tokens": 100}),
                                          ("cot-span", {"lsp": "0.5"}), ("window", {"lsp": "0.5", "keep": "middle"}),
                                          ("window", {"lsp": "0.5", "keep": "right", "window_scope": "sequence"})])
def test_policies_on_real_traces(tmp_path, traces, preprocess, policy, opts):
    """Each written document equals the policy applied to the untruncated document (policy none)."""
    src = traces.write_jsonl(tmp_path / "r1.jsonl", traces.short_rows(traces.r1, 4))
    full_prefix, _ = preprocess([src], name="full")
    cut_prefix, manifest = preprocess([src], name="cut", policy=policy, **opts)
    full_t, full_s = IndexedDataset(f"{full_prefix}_tokens"), IndexedDataset(f"{full_prefix}_sections")
    cut_t, cut_s = IndexedDataset(f"{cut_prefix}_tokens"), IndexedDataset(f"{cut_prefix}_sections")
    assert len(cut_t) == len(full_t) == 4
    policy_obj = make_policy(policy, **opts)
    for i in range(4):
        sections = full_s[i]
        n, p, c = sections.size, int((sections == Section.PROMPT).sum()), int((sections == Section.COT).sum())
        ranges = kept_ranges(policy_obj, n, p, c)
        assert cut_t[i].tolist() == np.concatenate([full_t[i][a:b] for a, b in ranges]).tolist()
        assert cut_s[i].tolist() == np.concatenate([sections[a:b] for a, b in ranges]).tolist()
    after = manifest["tokens_after_truncation"]
    assert sum(after.values()) == sum(len(cut_t[i]) for i in range(4))
    assert manifest["truncation"]["kind"] == policy
