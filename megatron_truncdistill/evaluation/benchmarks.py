"""Benchmark files: JSON lines of math problems with reference answers, read without per-file options.

The shared eval sets (``../shared/data/eval``) name their fields differently: MATH500, AIME24/25 and AMC23 use
``problem``/``answer``, GSM8K uses ``question``/``answer`` with the answer as a worked solution ending in
``#### 18``. The problem field is the first of ``PROBLEM_KEYS`` that the first record has (``--problem-key``
overrides), the answer field likewise from ``ANSWER_KEYS``; a GSM8K solution is reduced to the number after
``#### `` (``math_answers.reference_text``). An AMC answer such as ``27.0`` keeps its JSON type (a float), which
``math_answers`` reads as the integer 27.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from megatron_truncdistill.errors import UserError
from megatron_truncdistill.math_answers import reference_text

PROBLEM_KEYS = ("problem", "question", "prompt", "input")
ANSWER_KEYS = ("answer", "expected_answer", "final_answer", "target")


@dataclass(frozen=True)
class Problem:
    """One problem of a benchmark; ``(benchmark, source, index)`` identifies it in ``generations.jsonl``."""

    benchmark: str
    """The name results are reported under (the file's stem unless given as ``NAME=FILE``)."""
    source: str
    """The benchmark file's name (several files may form one benchmark, e.g. AIME25 I and II)."""
    index: int
    """0-based position among the file's non-empty lines."""
    problem: str
    answer: Any
    """The reference answer (a string, or the number as the file wrote it)."""

    @property
    def key(self) -> tuple[str, str, int]:
        return (self.benchmark, self.source, self.index)


def parse_benchmark_spec(spec: str) -> tuple[str, Path]:
    """``NAME=FILE`` or ``FILE`` (named by its stem) → (name, path)."""
    name, sep, path = spec.partition("=")
    if not sep:
        return Path(spec).stem, Path(spec)
    if not name or not path:
        raise UserError(f"--benchmark {spec}: expected FILE.jsonl or NAME=FILE.jsonl")
    return name, Path(path)


def _pick_key(path: Path, first: dict, given: str | None, *, candidates: tuple[str, ...], option: str) -> str:
    if given is not None:
        if given not in first:
            raise UserError(f"{path} line 1: no {given!r} field (fields: {', '.join(first)}); fix {option}")
        return given
    for key in candidates:
        if key in first:
            return key
    raise UserError(f"{path} line 1: none of the fields {', '.join(candidates)} (fields: {', '.join(first)}); "
                         f"pass {option}")


def _read_records(path: Path) -> list[tuple[int, dict]]:
    """(line number, record) for every non-empty line; one-line errors for a missing or damaged file."""
    if not path.is_file():
        raise UserError(f"benchmark file {path} not found")
    records = []
    for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise UserError(f"{path} line {line_no}: not JSON ({err.msg}); a benchmark is JSON lines") from None
        if not isinstance(record, dict):
            raise UserError(f"{path} line {line_no}: a JSON object per line expected")
        records.append((line_no, record))
    if not records:
        raise UserError(f"benchmark file {path} holds no records")
    return records


def load_benchmark(path: str | Path, *, name: str | None = None, problem_key: str | None = None,
                   answer_key: str | None = None, limit: int | None = None) -> list[Problem]:
    """The problems of one JSONL file, in file order (the first ``limit`` when given)."""
    path = Path(path)
    records = _read_records(path)
    first = records[0][1]
    pkey = _pick_key(path, first, problem_key, candidates=PROBLEM_KEYS, option="--problem-key")
    akey = _pick_key(path, first, answer_key, candidates=ANSWER_KEYS, option="--answer-key")
    problems = []
    for index, (line_no, record) in enumerate(records[:limit]):
        for key, option in ((pkey, "--problem-key"), (akey, "--answer-key")):
            if record.get(key) in (None, ""):
                raise UserError(f"{path} line {line_no}: field {key!r} is missing or empty; fix the record "
                                     f"or pass {option}")
        problems.append(Problem(benchmark=name or path.stem, source=path.name, index=index,
                                problem=str(record[pkey]), answer=reference_text(record[akey])))
    return problems


def load_benchmarks(specs: list[str], *, problem_key: str | None = None, answer_key: str | None = None,
                    limit: int | None = None) -> list[Problem]:
    """All problems of ``specs`` (``FILE`` or ``NAME=FILE``; a repeated name joins files into one benchmark)."""
    problems, seen = [], set()
    for spec in specs:
        name, path = parse_benchmark_spec(spec)
        if (name, path.name) in seen:
            raise UserError(f"--benchmark {spec}: {path.name} is given twice for benchmark {name}")
        seen.add((name, path.name))
        problems += load_benchmark(path, name=name, problem_key=problem_key, answer_key=answer_key, limit=limit)
    return problems
