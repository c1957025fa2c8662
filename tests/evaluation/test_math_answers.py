"""``math_answers`` on the answer forms the shared eval sets really use (every reference is read from the files)."""

from __future__ import annotations

import json
import re

import pytest

from megatron_truncdistill.math_answers import is_correct, parse_prediction, parse_reference, reference_text, same_answer

FILES = ("math500.jsonl", "aime24.jsonl", "aime25_I.jsonl", "aime25_II.jsonl", "amc23.jsonl", "gsm8k_test.jsonl")

# (file, reference exactly as the file writes it, a generation, whether it is correct)
CASES = [
    ("math500.jsonl", "\\frac{14}{3}", "so the answer is \\boxed{14/3}.", True),
    ("math500.jsonl", "\\frac{14}{3}", "\\boxed{\\dfrac{14}{3}}", True),
    ("math500.jsonl", "\\frac{14}{3}", "\\boxed{\\frac{13}{3}}", False),
    ("math500.jsonl", "\\left( 3, \\frac{\\pi}{2} \\right)", "\\boxed{(3, \\frac{\\pi}{2})}", True),
    ("math500.jsonl", "\\left( 3, \\frac{\\pi}{2} \\right)", "\\boxed{(3, \\pi)}", False),
    ("math500.jsonl", "(-\\infty, 2) \\cup (3, \\infty)", "\\boxed{(-\\infty,2)\\cup(3,\\infty)}", True),
    ("math500.jsonl", "(3,4]", "\\boxed{(3,4]}", True),
    ("math500.jsonl", "(3,4]", "\\boxed{(3,4)}", False),  # an open interval is not a half-open one
    ("math500.jsonl", "\\begin{pmatrix} -1/3 \\\\ 2/3 \\\\ 5/3 \\end{pmatrix}",
     "\\boxed{\\begin{pmatrix} -\\frac{1}{3} \\\\ \\frac{2}{3} \\\\ \\frac{5}{3} \\end{pmatrix}}", True),
    ("math500.jsonl", "3 \\pm 2 \\sqrt{2}", "\\boxed{3+2\\sqrt{2}, 3-2\\sqrt{2}}", True),
    ("math500.jsonl", "-2,1", "\\boxed{1, -2}", True),
    ("math500.jsonl", "0.15", "\\boxed{\\frac{3}{20}}", True),
    ("math500.jsonl", "\\sqrt{66}", "\\boxed{\\sqrt{66}}", True),
    ("math500.jsonl", "\\text{Evelyn}", "\\boxed{\\text{Evelyn}}", True),
    ("math500.jsonl", "\\text{Evelyn}", "\\boxed{\\text{Bob}}", False),
    ("math500.jsonl", "\\$18.90", "\\boxed{18.9}", True),  # an escaped dollar is money, not a math delimiter
    ("math500.jsonl", "\\$18.90", "\\boxed{18.91}", False),
    ("math500.jsonl", "\\$32,\\!348", "\\boxed{32348}", True),
    ("math500.jsonl", "y = -2x", "\\boxed{y=-2x}", True),
    ("math500.jsonl", "10080", "<think>\nmaybe 10000\n</think>\n\n\\boxed{10080}", True),
    ("aime24.jsonl", "204", "<think>\n\\boxed{204}\n</think>\n\nSo \\boxed{203}.", False),  # the last box counts
    ("aime24.jsonl", "204", "The answer is 204.", True),  # no box: the last expression (lighteval's order)
    ("aime24.jsonl", "204", "I do not know.", False),
    ("aime25_I.jsonl", "70", "\\boxed{70}", True),
    ("aime25_II.jsonl", "468", "\\boxed{468}", True),
    ("aime25_II.jsonl", "468", "\\boxed{469}", False),
    ("amc23.jsonl", 27.0, "\\boxed{27}", True),  # AMC writes integers as floats
    ("amc23.jsonl", 27.0, "\\boxed{27.0}", True),
    ("amc23.jsonl", 27.0, "\\boxed{28}", False),
]


def _answers(eval_dir, name):
    return [json.loads(line)["answer"] for line in (eval_dir / name).read_text().splitlines() if line.strip()]


@pytest.mark.parametrize("name, reference, generation, correct", CASES)
def test_real_answer_forms(eval_dir, name, reference, generation, correct):
    assert reference in _answers(eval_dir, name), "the reference must be one the eval set really uses"
    assert is_correct(reference, generation) is correct


def test_gsm8k_solution_means_the_number_after_the_mark(eval_dir):
    solution = _answers(eval_dir, "gsm8k_test.jsonl")[0]
    assert solution.endswith("#### 18") and reference_text(solution) == "18"
    assert is_correct(solution, "She makes \\boxed{18} dollars.") and not is_correct(solution, "\\boxed{16}")
    with_commas = next(a for a in _answers(eval_dir, "gsm8k_test.jsonl") if reference_text(a) == "1,450,000")
    assert is_correct(with_commas, "\\boxed{1450000}") and is_correct(with_commas, "\\boxed{1,450,000}")


def test_unparseable_sides_are_never_equal():
    assert parse_prediction("no math here") == [] and not same_answer([], [])
    assert not same_answer(parse_reference("5"), [])


@pytest.mark.slow
def test_every_reference_accepts_its_own_boxed_form_and_rejects_a_wrong_integer(eval_dir):
    """All 600 MATH500/AIME/AMC references and every 4th GSM8K one parse; an integer off by one is wrong."""
    failures = []
    for name in FILES:
        answers = _answers(eval_dir, name)
        for answer in answers[::4] if name.startswith("gsm8k") else answers:
            text = reference_text(answer)
            text = str(int(text)) if isinstance(text, float) and text.is_integer() else str(text)
            if not parse_reference(answer) or not is_correct(answer, f"Thus \\boxed{{{text}}}."):
                failures.append((name, answer))
            plain = text.replace(",", "")
            if re.fullmatch(r"-?\d+", plain) and is_correct(answer, f"Thus \\boxed{{{int(plain) + 1}}}."):
                failures.append((name, answer, "off by one accepted"))
    assert not failures, failures[:10]
