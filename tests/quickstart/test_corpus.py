"""The quickstart corpus is deterministic, and an independent evaluator agrees with every answer and CoT step."""

import re

from megatron_truncdistill.evaluation.exact_match import answer_line as extract_answer
from megatron_truncdistill.quickstart.corpus import generate, split_train_test

TO_BASE = {"km": 1000000, "m": 1000, "cm": 10, "mm": 1, "kg": 1000, "g": 1, "L": 1000, "mL": 1}


def independent_answer(prompt: str) -> int:
    """Solve the prompt from its text alone (no generator code)."""
    if m := re.fullmatch(r"What is (\d+)\+(\d+)\?", prompt):
        return int(m[1]) + int(m[2])
    if m := re.fullmatch(r"Solve (\d+)x\+(\d+)=(\d+) for x\.", prompt):
        a, b, c = map(int, m.groups())
        assert (c - b) % a == 0
        return (c - b) // a
    if m := re.fullmatch(r"Convert (\d+) (\w+) to (\w+)\.", prompt):
        return int(m[1]) * TO_BASE[m[2]] // TO_BASE[m[3]]
    raise AssertionError(f"unrecognised prompt {prompt!r}")


def _check_steps(record):
    """Every arithmetic claim written in the CoT is true."""
    cot = record["response"].split("<think>\n")[1].split("\n</think>")[0]
    for a, b, c, total in re.findall(r"(\d)\+(\d)\+(\d)=(\d+)", cot):
        assert int(a) + int(b) + int(c) == int(total)
    for x, f, y in re.findall(r"(\d+)\*(\d+) \w+ = (\d+)", cot):
        assert int(x) * int(f) == int(y)
    for x, y, z in re.findall(r"=(\d+)-(\d+)=(\d+)", cot):
        assert int(x) - int(y) == int(z)


def test_generator_is_deterministic():
    assert generate(50, seed=3) == generate(50, seed=3)
    assert generate(50, seed=3) != generate(50, seed=4)


def test_answers_and_steps_are_correct():
    records = generate(2000, seed=11)
    assert {r["task"] for r in records} == {"addition", "linear", "conversion"}
    for r in records:
        assert int(r["answer"]) == independent_answer(r["prompt"]), r
        assert extract_answer(r["response"]) == r["answer"]
        assert r["response"].startswith("<think>\n") and "\n</think>\n\n" in r["response"]
        _check_steps(r)


def test_every_family_has_hundreds_of_distinct_prompts():
    records = generate(20000, seed=1)
    for task in ("addition", "linear", "conversion"):
        assert len({r["prompt"] for r in records if r["task"] == task}) >= 300, task


def test_held_out_split_never_leaks_a_prompt():
    train, test = split_train_test(generate(3000, seed=5), test_size=300)
    assert len(test) == 300 and not ({r["prompt"] for r in train} & {r["prompt"] for r in test})


def test_extract_answer():
    assert extract_answer("...\n</think>\n\nAnswer: 1350") == "1350"
    assert extract_answer("Answer: 3 then Answer: 12 more") == "12"
    assert extract_answer("no answer here") is None and extract_answer("Answer: x") is None
    assert extract_answer("Answer: 5 ... Answer: x") is None, "only the last Answer: line counts"
    assert extract_answer("Answer: 12<|im_end|>") == "12" and extract_answer("Answer: -3\n") == "-3"
    assert extract_answer("Answer: 12.5") is None and extract_answer("Answer: 12x") is None


def test_boxed_extractor():
    from megatron_truncdistill.evaluation.exact_match import boxed

    assert boxed(r"so \boxed{\frac{1}{2}} done") == r"\frac{1}{2}"
    assert boxed(r"\boxed{3} then \boxed{ 4 }") == "4" and boxed("none") is None and boxed(r"\boxed{open") is None
