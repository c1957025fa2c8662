"""A seeded generator of multi-step problems whose answers need a worked chain of thought.

Three task families, each with a CoT a small model can learn to execute step by step:
- column addition of 2–3-digit numbers: one line per digit with its carry, then the digits read back;
- linear equations a·x + b = c: undo the addition, then the multiplication;
- chained metric unit conversions (km → m → cm → mm, kg → g, L → mL): one multiplication per hop.

Operand ranges are chosen so that each step is learnable by a ~1M-parameter model in minutes of CPU training
(single-digit subtraction and division facts, power-of-ten factors), and so that every family has hundreds of
distinct prompts: the held-out test split removes every training record whose prompt it contains.

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


def _addition(rng: random.Random) -> tuple[str, list[str], int]:
    digits = rng.choice([2, 3])
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


def _linear(rng: random.Random) -> tuple[str, list[str], int]:
    a, x, b = rng.randrange(2, 6), rng.randrange(1, 10), rng.randrange(1, 10)
    c = a * x + b
    steps = [f"{a}x+{b}={c}", f"{a}x={c}-{b}={c - b}", f"x={c - b}/{a}={x}"]
    return f"Solve {a}x+{b}={c} for x.", steps, x


def _conversion(rng: random.Random) -> tuple[str, list[str], int]:
    start = rng.choice(["km", "m", "kg", "L"])
    hops = rng.choice([1, 2]) if start in ("km", "m") else 1
    value = rng.randrange(2, 100)
    unit, steps, current = start, [], value
    for _ in range(hops):
        nxt, factor = UNIT_CHAINS[unit]
        steps.append(f"{current} {unit} = {current}*{factor} {nxt} = {current * factor} {nxt}")
        current, unit = current * factor, nxt
    return f"Convert {value} {start} to {unit}.", steps, current


TASKS = {"addition": _addition, "linear": _linear, "conversion": _conversion}


def make_record(rng: random.Random, task: str) -> dict:
    prompt, steps, answer = TASKS[task](rng)
    response = "<think>\n" + "\n".join(steps) + "\n</think>\n\n" + ANSWER_PREFIX + str(answer)
    return {"task": task, "prompt": prompt, "response": response, "answer": str(answer)}


def generate(n: int, *, seed: int, weights: dict[str, float] | None = None) -> list[dict]:
    """``n`` records, reproducible from ``seed``; task mix by ``weights`` (default: half addition)."""
    weights = weights or {"addition": 0.5, "linear": 0.25, "conversion": 0.25}
    rng = random.Random(seed)
    names = list(weights)
    return [make_record(rng, rng.choices(names, weights=[weights[t] for t in names])[0]) for _ in range(n)]


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

