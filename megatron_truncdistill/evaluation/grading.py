"""Grade a generations file with math-verify (``math_answers``) and summarize pass@1 per benchmark.

pass@1 of a benchmark is the mean over its problems of the fraction of a problem's samples that are correct
(with the same n for every problem this is the mean over all samples, lighteval's pass@1 with n samples).

Interval (``INTERVAL``): a 95% normal-approximation interval over problems, mean ± 1.96 · s / √P, where s is the
sample standard deviation (ddof 1) of the P per-problem pass rates, clipped to [0, 1]. Problems, not samples,
are the independent units: the 64 samples of one AIME problem are strongly correlated, so an interval over
samples would be far too narrow. With few problems (AIME: 30) the normal approximation is rough, and a
benchmark on which every problem has the same rate (e.g. all 0) gets a zero-width interval.
"""

from __future__ import annotations

import math
import statistics
import sys
from collections import defaultdict
from pathlib import Path

from tqdm import tqdm

from megatron_truncdistill.evaluation.run_files import read_generations, write_json_atomic
from megatron_truncdistill.math_answers import parse_prediction, parse_reference, same_answer

Z_95 = 1.959964
INTERVAL = ("95% normal-approximation interval over problems: mean ± 1.96 · sd(per-problem pass rate) / "
            "sqrt(problems), clipped to [0, 1]")


def grade_record(record: dict) -> dict:
    """Per generation: whether its final answer equals the reference, and the answer math-verify read."""
    reference = parse_reference(record["answer"])
    predictions = [parse_prediction(text) for text in record["generations"]]
    graded = {key: record[key] for key in ("benchmark", "source", "index", "answer")}
    graded.update(correct=[same_answer(reference, p) for p in predictions],
                  extracted=[str(p[-1]) if p else None for p in predictions], reference_parsed=bool(reference))
    return graded


def pass_at_1(graded: list[dict], generations: list[dict] | None = None) -> dict:
    """pass@1 with its interval for one benchmark's graded records (and length statistics when recorded)."""
    rates = [sum(r["correct"]) / len(r["correct"]) for r in graded if r["correct"]]
    problems = len(rates)
    mean = sum(rates) / problems if problems else 0.0
    stderr = statistics.stdev(rates) / math.sqrt(problems) if problems > 1 else 0.0
    summary = {"mean": mean, "ci95": [max(0.0, mean - Z_95 * stderr), min(1.0, mean + Z_95 * stderr)],
               "stderr": stderr, "problems": problems, "samples": sum(len(r["correct"]) for r in graded),
               "unparsed_references": sum(not r["reference_parsed"] for r in graded)}
    tokens = [t for g in generations or [] for t in g.get("num_tokens", [])]
    finished = [f for g in generations or [] for f in g.get("finished", [])]
    if tokens:
        summary["mean_new_tokens"] = sum(tokens) / len(tokens)
    if finished:
        summary["finished_fraction"] = sum(finished) / len(finished)
    return summary


def summarize(graded: list[dict], generations: list[dict]) -> dict[str, dict]:
    """benchmark → ``pass_at_1`` summary, benchmarks in order of first appearance."""
    by_benchmark, records_of = defaultdict(list), defaultdict(list)
    for g, record in zip(graded, generations):
        by_benchmark[g["benchmark"]].append(g)
        records_of[g["benchmark"]].append(record)
    return {name: pass_at_1(rows, records_of[name]) for name, rows in by_benchmark.items()}


def grade_generations(generations_path: str | Path, output_json: str | Path, *, progress: bool = True) -> dict:
    """Grade every record of ``generations_path`` and write ``output_json`` (README.md: grades.json)."""
    records = read_generations(generations_path)
    total = sum(len(r["generations"]) for r in records)
    graded = []
    with tqdm(total=total, desc="grading", unit=" samples", disable=not progress, file=sys.stderr) as bar:
        for record in records:
            graded.append(grade_record(record))
            bar.update(len(record["generations"]))
    payload = {"generations": str(generations_path), "interval": INTERVAL,
               "pass@1": summarize(graded, records), "records": graded}
    Path(output_json).parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(output_json, payload)
    return payload


def summary_table(pass_at_1_by_benchmark: dict[str, dict]) -> str:
    """A markdown table of one run's pass@1 per benchmark."""
    lines = ["| benchmark | problems | samples | pass@1 | 95% CI |", "|---|---|---|---|---|"]
    for name, s in pass_at_1_by_benchmark.items():
        lines.append(f"| {name} | {s['problems']} | {s['samples']} | {s['mean']:.3f} | "
                     f"[{s['ci95'][0]:.3f}, {s['ci95'][1]:.3f}] |")
    return "\n".join(lines)
