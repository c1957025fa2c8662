"""``grade``: the JSON's shape and values on generations with a known answer pattern; ``compare`` on two runs."""

from __future__ import annotations

import json
import math
import statistics

import pytest

from megatron_truncdistill.evaluation.cli import main
from megatron_truncdistill.evaluation.compare import compare_runs
from megatron_truncdistill.evaluation.run_files import GenerationsFile

# (benchmark, reference, generations): correct counts per problem are known by construction
AIME = [("aime", "70", ["\\boxed{70}", "\\boxed{71}", "\\boxed{70}", "no idea"]),
        ("aime", "588", ["\\boxed{588}"] * 4),
        ("aime", "16", ["\\boxed{15}"] * 4)]
MATH = [("math", "\\frac{14}{3}", ["\\boxed{\\dfrac{14}{3}}", "\\boxed{14/3}", "\\boxed{4}", "\\boxed{4}"]),
        ("math", "\\$18.90", ["\\boxed{18.9}", "\\boxed{18.90}", "\\boxed{18.9}", "\\boxed{1}"])]


def _run(directory, problems):
    cache = GenerationsFile(directory)
    directory.mkdir(parents=True, exist_ok=True)
    cache.append([{"benchmark": b, "source": f"{b}.jsonl", "index": i, "problem": f"p{i}", "answer": ref,
                   "generations": gens, "num_tokens": [3] * len(gens), "finished": [True, True, True, False]}
                  for i, (b, ref, gens) in enumerate(problems)])
    return cache.path


def _interval(rates):
    mean = sum(rates) / len(rates)
    half = 1.959964 * statistics.stdev(rates) / math.sqrt(len(rates))
    return mean, [max(0.0, mean - half), min(1.0, mean + half)]


def test_grade_json_shape_and_values(tmp_path, capsys):
    path = _run(tmp_path / "run", AIME + MATH)
    assert main(["grade", "--generations", str(path), "--output-json", str(tmp_path / "g.json"), "--no-progress"]) == 0
    grades = json.loads((tmp_path / "g.json").read_text())
    assert [r["correct"] for r in grades["records"]] == [
        [True, False, True, False], [True] * 4, [False] * 4, [True, True, False, False], [True, True, True, False]]
    assert [r["index"] for r in grades["records"]] == [0, 1, 2, 3, 4], "input order"
    assert grades["records"][0]["extracted"][:2] == ["70", "71"] and grades["records"][0]["extracted"][3] is None
    aime, math_ = grades["pass@1"]["aime"], grades["pass@1"]["math"]
    mean, ci = _interval([0.5, 1.0, 0.0])
    assert aime["mean"] == pytest.approx(mean) and aime["ci95"] == pytest.approx(ci)
    assert (aime["problems"], aime["samples"], aime["unparsed_references"]) == (3, 12, 0)
    assert math_["mean"] == pytest.approx(0.625) and math_["ci95"] == pytest.approx(_interval([0.5, 0.75])[1])
    assert aime["mean_new_tokens"] == 3 and aime["finished_fraction"] == 0.75
    assert "normal-approximation" in grades["interval"]
    assert "| aime | 3 | 12 | 0.500 |" in capsys.readouterr().out


def test_compare_two_runs_retention_table_json_png(tmp_path, capsys):
    teacher = [(b, ref, [f"\\boxed{{{ref}}}"] * 4) for b, ref, _ in AIME + MATH]  # always right
    for name, problems in (("teacher", teacher), ("student", AIME + MATH)):
        assert main(["grade", "--generations", str(_run(tmp_path / name, problems)), "--no-progress"]) == 0
    out = tmp_path / "cmp"
    assert main(["compare", str(tmp_path / "teacher"), str(tmp_path / "student"), "--output", str(out)]) == 0
    table = capsys.readouterr().out
    assert "| aime | student | 3 | 12 | 0.500 | " in table and "| 50.0% |" in table
    assert "| math | teacher (reference) | 2 | 8 | 1.000 |" in table and "| mean retention | student |" in table
    comparison = json.loads((out / "comparison.json").read_text())
    retention = {(r["benchmark"], r["run"]): r["retention"] for r in comparison["rows"]}
    assert retention == {("aime", "teacher"): 1.0, ("aime", "student"): 0.5, ("math", "teacher"): 1.0,
                         ("math", "student"): 0.625}
    assert comparison["mean_retention"] == {"student": pytest.approx(0.5625)}
    assert (out / "comparison.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "comparison.md").read_text().startswith("# pass@1 and retention vs teacher")
    flipped = compare_runs([str(tmp_path / "teacher"), str(tmp_path / "student")], reference="student")
    assert {(r["benchmark"], r["run"]): r["retention"] for r in flipped["rows"]}[("aime", "teacher")] == 2.0


def test_compare_refuses_a_run_without_grades(tmp_path, capsys):
    _run(tmp_path / "ungraded", AIME)
    assert main(["compare", str(tmp_path / "ungraded"), "--output", str(tmp_path / "cmp")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no grades.json" in err[0] and "truncdistill-evaluate grade" in err[0]
