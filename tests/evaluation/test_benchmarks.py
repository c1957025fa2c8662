"""The shared eval sets load as benchmarks without options; bad files fail with one line naming file and key."""

from __future__ import annotations

import json
import re

import pytest

from megatron_truncdistill.evaluation.benchmarks import load_benchmark, load_benchmarks
from megatron_truncdistill.evaluation.cli import main
from megatron_truncdistill.errors import UserError

SIZES = {"math500": 500, "gsm8k_test": 1319, "aime24": 30, "aime25_I": 15, "aime25_II": 15, "amc23": 40}


def test_every_shared_eval_set_loads_without_options(eval_dir):
    for name, size in SIZES.items():
        problems = load_benchmark(eval_dir / f"{name}.jsonl")
        assert len(problems) == size and all(p.benchmark == name and p.problem for p in problems)
        assert [p.index for p in problems] == list(range(size))
    gsm = load_benchmark(eval_dir / "gsm8k_test.jsonl")
    assert gsm[0].problem.startswith("Janet") and gsm[0].answer == "18", "question field; the number after ####"
    assert all(re.fullmatch(r"-?[\d,]+(\.\d+)?", p.answer) for p in gsm)
    amc = load_benchmark(eval_dir / "amc23.jsonl")
    assert amc[0].answer == 27.0 and isinstance(amc[0].answer, float), "the JSON type is kept"
    assert load_benchmark(eval_dir / "math500.jsonl")[0].answer == "\\left( 3, \\frac{\\pi}{2} \\right)"


def test_named_files_join_into_one_benchmark(eval_dir):
    problems = load_benchmarks([f"aime25={eval_dir / 'aime25_I.jsonl'}", f"aime25={eval_dir / 'aime25_II.jsonl'}",
                                str(eval_dir / "aime24.jsonl")], limit=2)
    assert [(p.benchmark, p.source, p.index) for p in problems] == [
        ("aime25", "aime25_I.jsonl", 0), ("aime25", "aime25_I.jsonl", 1), ("aime25", "aime25_II.jsonl", 0),
        ("aime25", "aime25_II.jsonl", 1), ("aime24", "aime24.jsonl", 0), ("aime24", "aime24.jsonl", 1)]
    assert len({p.key for p in problems}) == 6


def _write(path, lines):
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("lines, keys, expected", [
    (['{"question": "q"}'], {}, ["line 1", "answer", "--answer-key"]),
    (['{"problem": "p", "answer": "1"}', '{"problem": "p2"}'], {}, ["line 2", "'answer'", "--answer-key"]),
    (['{"problem": "p", "answer": "1"}', "{not json"], {}, ["line 2", "not JSON"]),
    (['["a list"]'], {}, ["line 1", "JSON object"]),
    (['{"problem": "p", "answer": "1"}'], {"problem_key": "query"}, ["line 1", "'query'", "--problem-key"]),
])
def test_bad_benchmark_files_name_the_file_line_and_key(tmp_path, lines, keys, expected):
    path = _write(tmp_path / "bench.jsonl", lines)
    with pytest.raises(UserError) as err:
        load_benchmark(path, **keys)
    assert str(path) in str(err.value) and all(e in str(err.value) for e in expected), str(err.value)


def test_cli_bad_benchmark_is_one_line_and_exit_2(tmp_path, tiny_qwen3_dir, capsys):
    path = _write(tmp_path / "bench.jsonl", [json.dumps({"problem": "p", "answer": "1"}), '{"problem": "p2"}'])
    rc = main(["generate", "--model", str(tiny_qwen3_dir), "--benchmark", str(path), "--output",
               str(tmp_path / "out"), "--backend", "transformers"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("error: ") and str(path) in err[0] and "'answer'" in err[0]
    rc = main(["generate", "--model", str(tiny_qwen3_dir), "--benchmark", str(tmp_path / "missing.jsonl"),
               "--output", str(tmp_path / "out"), "--backend", "transformers"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "missing.jsonl not found" in err[0]
    assert not (tmp_path / "out").exists(), "nothing is written for a run that cannot start"
