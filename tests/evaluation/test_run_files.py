"""The generations cache: a partial last line (a kill mid-write) is tolerated, anything else damaged is refused."""

from __future__ import annotations

import json

import pytest

from megatron_truncdistill.errors import UserError
from megatron_truncdistill.evaluation.run_files import GenerationsFile, check_settings, read_generations


def _record(i, benchmark="b"):
    return {"benchmark": benchmark, "source": "b.jsonl", "index": i, "problem": f"p{i}", "answer": str(i),
            "generations": [f"\\boxed{{{i}}}", "x"]}


def test_append_then_partial_tail_is_ignored_and_cut(tmp_path):
    cache = GenerationsFile(tmp_path)
    cache.append([_record(0), _record(1)])
    cache.append([_record(2)])
    with open(cache.path, "a") as f:
        f.write(json.dumps(_record(3))[:25])  # killed in the middle of a write
    assert [r["index"] for r in read_generations(cache.path)] == [0, 1, 2]
    before = cache.path.read_bytes()
    cache.drop_partial_tail()
    assert before.startswith(cache.path.read_bytes()) and cache.path.read_bytes().endswith(b"\n")
    cache.append([_record(3)])
    assert sorted(cache.completed()) == [("b", "b.jsonl", i) for i in range(4)]


def test_damaged_middle_line_and_duplicates_are_refused(tmp_path):
    cache = GenerationsFile(tmp_path)
    cache.append([_record(0)])
    with open(cache.path, "a") as f:
        f.write("{broken\n")
    cache.append([_record(1)])
    with pytest.raises(UserError, match="line 2: damaged record"):
        read_generations(cache.path)
    cache.path.write_text(json.dumps(_record(0)) + "\n" + json.dumps(_record(0)) + "\n")
    with pytest.raises(UserError, match="line 2: .* already appears on line 1"):
        read_generations(cache.path)
    cache.path.write_text(json.dumps({"benchmark": "b"}) + "\n")
    with pytest.raises(UserError, match="line 1: not a generations record"):
        read_generations(cache.path)


def test_settings_may_change_until_the_first_record(tmp_path):
    check_settings(tmp_path, {"model": "a", "n": 4}, has_records=False)
    check_settings(tmp_path, {"model": "b", "n": 4}, has_records=False)  # nothing generated yet: replaced
    check_settings(tmp_path, {"model": "b", "n": 4}, has_records=True)
    with pytest.raises(UserError, match="generated with n=4, not 8"):
        check_settings(tmp_path, {"model": "b", "n": 8}, has_records=True)
