"""Whether two math answers are the same, decided by math-verify (the grader lighteval uses): the one definition.

Pure Python (sympy underneath, no torch), so it sits with ``sections`` at the bottom of the package and both the
data side (trace anatomy) and evaluation may import it.

Grading (``tools/evaluate.py grade``), the trace-anatomy tool (where a trace first derives its reference answer)
and the quickstart all ask this module, so "correct" means the same thing everywhere. math-verify parses LaTeX
and plain expressions into sympy and compares them symbolically and numerically: ``\\frac{1}{2}`` = ``0.5`` =
``1/2``, ``\\boxed{42}`` = ``42``, ``(3, \\frac{\\pi}{2})`` = ``\\left( 3, \\frac{\\pi}{2} \\right)``.

Timeouts: math-verify bounds each parse and comparison with ``signal.alarm``, which only works in the main
thread; elsewhere the bound is switched off (``_timeout``) rather than failing.
"""

from __future__ import annotations

import re
import threading
from typing import Any

from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

PARSE_TIMEOUT_S = 5
VERIFY_TIMEOUT_S = 5

# A model's final answer: \boxed{} first (the instruction every benchmark prompt carries), then any LaTeX or
# plain expression, the last one in the text winning (lighteval's order for math tasks).
_PREDICTION_CONFIG = (LatexExtractionConfig(boxed_match_priority=0), ExprExtractionConfig())
# A reference answer is a bare answer ("\\frac{14}{3}", "27.0", "(3,\\frac{\\pi}{2})"), read as one expression.
_REFERENCE_CONFIG = (LatexExtractionConfig(), ExprExtractionConfig())


# A ``$`` that opens or closes math; ``\\$`` is a dollar sign (MATH500 writes money as ``\\$18.90``).
_MATH_DELIMITER = re.compile(r"(?<!\\)\$")
GSM8K_MARK = "#### "


def _timeout(seconds: int) -> int | None:
    return seconds if threading.current_thread() is threading.main_thread() else None


def reference_text(answer: Any) -> Any:
    """The answer part of a reference: a GSM8K solution ending in ``#### 18`` means ``18``; others are as given."""
    if isinstance(answer, str) and GSM8K_MARK in answer:
        return answer.rsplit(GSM8K_MARK, 1)[1].strip()
    return answer


def parse_reference(answer: Any) -> list:
    """The parsed form of a reference answer (a string, int or float); ``[]`` when it cannot be parsed.

    A bare answer is wrapped in ``$...$`` so that LaTeX without delimiters (``\\frac{14}{3}``, ``\\$18.90``) is
    read as math; a GSM8K solution is read from its ``#### `` line (``reference_text``).
    """
    answer = reference_text(answer)
    text = str(answer).strip()
    if isinstance(answer, float) and answer.is_integer():
        text = str(int(answer))  # AMC's 27.0 is the integer 27
    if not _MATH_DELIMITER.search(text) and "\\boxed" not in text:
        text = f"${text}$"
    return parse(text, extraction_config=_REFERENCE_CONFIG, parsing_timeout=_timeout(PARSE_TIMEOUT_S))


def parse_prediction(text: str) -> list:
    """The parsed final answer of a generation (``\\boxed{}`` first); ``[]`` when none is found."""
    return parse(text, extraction_config=_PREDICTION_CONFIG, parsing_timeout=_timeout(PARSE_TIMEOUT_S))


def same_answer(reference: list, prediction: list) -> bool:
    """Whether two parsed answers are equal (symbolically, or numerically to math-verify's precision)."""
    if not reference or not prediction:
        return False
    return bool(verify(reference, prediction, timeout_seconds=_timeout(VERIFY_TIMEOUT_S)))


def is_correct(reference: Any, generation: str) -> bool:
    """Whether ``generation``'s final answer equals the reference answer."""
    return same_answer(parse_reference(reference), parse_prediction(generation))
