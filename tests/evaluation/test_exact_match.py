"""The quickstart's and the study's scorer decides equality with ``math_answers``, like ``tools/evaluate.py``."""

from megatron_truncdistill.evaluation.exact_match import EXTRACTORS, answer_line, boxed, final_answer, matches


def test_extracted_answers_are_compared_by_math_verify():
    assert matches(answer_line("</think>\n\nAnswer: 15"), "15") and not matches(answer_line("Answer: 16"), "15")
    assert matches(answer_line("Answer: 042"), "42"), "string equality would have said no"
    assert matches(boxed("so \\boxed{\\dfrac{1}{2}}"), "\\frac12") and matches(boxed("\\boxed{0.5}"), "\\frac{1}{2}")
    assert matches(boxed("\\boxed{27}"), 27.0), "AMC's float answers"
    assert not matches(answer_line("no answer line"), "15") and not matches(None, "15")


def test_math_verify_extractor_reads_like_grade():
    assert EXTRACTORS["math_verify"] is final_answer
    assert final_answer("so the answer is 18.") == "18" and final_answer("nothing") is None
    assert matches(final_answer("<think>\\boxed{3}</think> finally \\boxed{\\frac{14}{3}}"), "\\frac{14}{3}")
