"""A seeded generator of multi-step problems whose answers need a worked chain of thought.

Three task families, each with a CoT a small model can learn to execute step by step:
- column addition of 2–3-digit numbers: one line per digit with its carry, then the digits read back;
- linear equations a·x + b = c: undo the addition, then the multiplication;
- chained metric unit conversions (km → m → cm → mm, kg → g, L → mL): one multiplication per hop.

Operand ranges are chosen so that each step is learnable by a ~1M-parameter model in minutes of CPU training
(single-digit subtraction and division facts, power-of-ten factors), and so that every family has hundreds of
distinct prompts: the held-out test split removes every training record whose prompt it contains.

An easier, disjoint family set (``EASY_TASKS``: one-digit addition, equations with a = 1, single cm -> mm
conversions) pretrains the quickstart's *base* student: it learns the output format (``<think>`` steps,
``</think>``, ``Answer: N``) and one-step facts, but never sees a prompt of the main families (their operands
never overlap: main additions have 2-3 digits, main equations a >= 2, main conversions start at km/m/kg/L).

Records use the prompt/response layout of DeepSeek-R1 traces (``<think>COT</think>ANSWER``), so they go through
``tools/preprocess.py`` unchanged. The final answer line is always ``Answer: N``.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

ANSWER_PREFIX = "Answer: "
UNIT_CHAINS = {  # unit -> (next unit, factor)
    "km": ("m", 1000), "m": ("cm", 100), "cm": ("mm", 10), "kg": ("g", 1000), "L": ("mL", 1000),
}


def _addition(rng: random.Random, digit_choices: tuple[int, ...] = (2, 3)) -> tuple[str, list[str], int]:
    digits = rng.choice(digit_choices)
    a, b = rng.randrange(10 ** (digits - 1), 10 ** digits), rng.randrange(10 ** (digits - 1), 10 ** digits)
    steps, carry, out_digits = [], 0, []
    for da, db in zip(reversed(str(a).zfill(digits)), reversed(str(b).zfill(digits))):
        total = int(da) + int(db) + carry
        steps.append(f"{da}+{db}+{carry}={total}, write {total % 10}, carry {total // 10}")
        out_digits.append(str(total % 10))
        carry = total // 10
    if carry:
        out_digits.append(str(carry))
    steps.append("read back: " + "".join(reversed(out_digits)))
    return f"What is {a}+{b}?", steps, a + b


def _linear(rng: random.Random, a_range: tuple[int, int] = (2, 6)) -> tuple[str, list[str], int]:
    a, x, b = rng.randrange(*a_range), rng.randrange(1, 10), rng.randrange(1, 10)
    c = a * x + b
    steps = [f"{a}x+{b}={c}", f"{a}x={c}-{b}={c - b}", f"x={c - b}/{a}={x}"]
    return f"Solve {a}x+{b}={c} for x.", steps, x


def _conversion(rng: random.Random, starts: tuple[str, ...] = ("km", "m", "kg", "L")) -> tuple[str, list[str], int]:
    start = rng.choice(starts)
    hops = rng.choice([1, 2]) if start in ("km", "m") else 1
    value = rng.randrange(2, 100)
    unit, steps, current = start, [], value
    for _ in range(hops):
        nxt, factor = UNIT_CHAINS[unit]
        steps.append(f"{current} {unit} = {current}*{factor} {nxt} = {current * factor} {nxt}")
        current, unit = current * factor, nxt
    return f"Convert {value} {start} to {unit}.", steps, current


TASKS = {"addition": _addition, "linear": _linear, "conversion": _conversion}
EASY_TASKS = {  # the base student's pretraining families: same formats, disjoint and one step easier
    "addition": lambda rng: _addition(rng, digit_choices=(1,)),
    "linear": lambda rng: _linear(rng, a_range=(1, 2)),
    "conversion": lambda rng: _conversion(rng, starts=("cm",)),
}


def make_record(rng: random.Random, task: str, *, tasks: dict = TASKS) -> dict:
    prompt, steps, answer = tasks[task](rng)
    response = "<think>\n" + "\n".join(steps) + "\n</think>\n\n" + ANSWER_PREFIX + str(answer)
    return {"task": task, "prompt": prompt, "response": response, "answer": str(answer)}


def generate(n: int, *, seed: int, weights: dict[str, float] | None = None, tasks: dict = TASKS) -> list[dict]:
    """``n`` records, reproducible from ``seed``; task mix by ``weights`` (default: half addition).

    ``tasks`` picks the family set: ``TASKS`` (the study's problems) or ``EASY_TASKS`` (base pretraining).
    """
    weights = weights or {"addition": 0.5, "linear": 0.25, "conversion": 0.25}
    rng = random.Random(seed)
    names = list(weights)
    return [make_record(rng, rng.choices(names, weights=[weights[t] for t in names])[0], tasks=tasks)
            for _ in range(n)]


def split_train_test(records: list[dict], *, test_size: int) -> tuple[list[dict], list[dict]]:
    """Held-out test problems never appear (by prompt) in the training split."""
    test = records[:test_size]
    held = {r["prompt"] for r in test}
    return [r for r in records[test_size:] if r["prompt"] not in held], test


def write_jsonl(records: list[dict], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record) + "\n")
    return path

