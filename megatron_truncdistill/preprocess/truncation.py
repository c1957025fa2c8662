"""Truncation policies: which tokens of a tokenized, section-tagged document are kept.

With n tokens, p of them PROMPT, c COT and m = n - p the response (COT + ANSWER), and r the ``--lsp`` fraction:
- ``lead-span``:    the first max(1, ⌊r·n⌋) tokens of the whole sequence, prompt included (the paper's protocol);
- ``token-budget``: the first min(N, n) tokens (``--max-tokens N``);
- ``cot-span``:     the whole prompt and the first ⌊r·c⌋ CoT tokens; the rest of the CoT and the answer go;
- ``window``:       a window of k tokens at the ``--keep`` left, middle (starting at ⌊(L - k) / 2⌋) or right end
                    of a span of L tokens (the paper's left/middle/right ablation). ``--window-scope response``: the
                    span is the response (L = m, k = ⌊r·m⌋) and the whole prompt is kept in front of the window;
                    ``sequence``: the span is the whole sequence (L = n, k = max(1, ⌊r·n⌋)), prompt included;
- ``none``:         everything.

r is held as an exact ``Fraction`` parsed from its decimal text, so ⌊r·n⌋ is integer arithmetic: with floats,
0.29 · 100 = 28.999999999999996 would keep 28 tokens instead of 29. The paper preset (``--protocol paper``) instead
rounds as the official code does, ``int(L * r)`` in floating point (``rounding="float"``), and counts L over the
sequence the official code tokenizes, which ends with a generation prompt (``tail`` tokens) that is not written: the
span is computed over n + tail tokens and cut back to the n written ones.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from fractions import Fraction

import numpy as np

from megatron_truncdistill.sections import Section

POLICIES = ("lead-span", "token-budget", "cot-span", "window", "none")
WINDOW_KEEPS = ("left", "middle", "right")
WINDOW_SCOPES = ("response", "sequence")
ROUNDINGS = ("exact", "float")
_FRACTION_POLICIES = ("lead-span", "cot-span", "window")


@dataclass(frozen=True)
class TruncationPolicy:
    """One policy and its parameters, validated by ``make_policy``."""

    kind: str = "lead-span"
    lsp: Fraction | None = Fraction(1)
    max_tokens: int | None = None  # token-budget only
    keep: str | None = None  # window only: left | middle | right
    window_scope: str | None = None  # window only: response | sequence
    rounding: str = "exact"  # "exact": ⌊r·L⌋ in rationals; "float": int(L * float(r)), the official code's rounding
    count_generation_prompt: bool = False  # spans count the (unwritten) generation prompt after the document

    def to_json(self) -> dict:
        return {**asdict(self), "lsp": None if self.lsp is None else str(self.lsp)}


def parse_fraction(text: str | float | Fraction, *, option: str = "--lsp") -> Fraction:
    """``"0.29"`` → 29/100 exactly (a float argument goes through its shortest repr, 0.29 → "0.29").

    Raises ValueError naming ``option`` for text that is not a finite number (``nan``, ``inf``, ``abc``, ``1/0``).
    """
    if isinstance(text, Fraction):
        return text
    try:
        value = Fraction(str(text).strip())
    except (ValueError, ZeroDivisionError):
        raise ValueError(f"{option} {text}: not a number; write a decimal such as 0.5 or a fraction such as 1/2"
                         ) from None
    return value


def _refuse(option: str, kind: str, needs: str) -> ValueError:
    return ValueError(f"{option} conflicts with --truncation {kind} (it is used only by {needs}); drop {option} "
                      "or choose another --truncation")


def _check_options_apply(kind: str, *, lsp, max_tokens, keep, window_scope) -> None:
    """An option the chosen policy ignores is a mistake the user should hear about, not a silent no-op."""
    if lsp is not None and kind not in _FRACTION_POLICIES:
        raise _refuse(f"--lsp {lsp}", kind, "--truncation " + ", ".join(_FRACTION_POLICIES))
    if max_tokens is not None and kind != "token-budget":
        raise _refuse(f"--max-tokens {max_tokens}", kind, "--truncation token-budget")
    if keep is not None and kind != "window":
        raise _refuse(f"--keep {keep}", kind, "--truncation window")
    if window_scope is not None and kind != "window":
        raise _refuse(f"--window-scope {window_scope}", kind, "--truncation window")


def make_policy(kind: str, *, lsp=None, max_tokens: int | None = None, keep: str | None = None,
                window_scope: str | None = None, rounding: str = "exact",
                count_generation_prompt: bool = False) -> TruncationPolicy:
    """Validate a policy; raises ValueError whose message names the option(s) to fix.

    ``None`` means "not given": ``lsp`` then defaults to 1 and ``window_scope`` to ``response``; an option given for
    a policy that does not use it (``--truncation none --lsp 0.5``) is refused.
    """
    if kind not in POLICIES:
        raise ValueError(f"--truncation {kind!r}: expected one of {', '.join(POLICIES)}")
    if rounding not in ROUNDINGS:
        raise ValueError(f"rounding {rounding!r}: expected one of {', '.join(ROUNDINGS)}")
    _check_options_apply(kind, lsp=lsp, max_tokens=max_tokens, keep=keep, window_scope=window_scope)
    common = {"rounding": rounding, "count_generation_prompt": count_generation_prompt}
    if kind == "token-budget":
        if max_tokens is None or max_tokens < 1:
            raise ValueError("--truncation token-budget needs --max-tokens N with N >= 1")
        return TruncationPolicy(kind, None, max_tokens, None, **common)
    if kind == "none":
        return TruncationPolicy(kind, None, None, None, **common)
    r = TruncationPolicy.lsp if lsp is None else parse_fraction(lsp)
    if not 0 < r <= 1:
        raise ValueError(f"--lsp {lsp}: must be in (0, 1]")
    if kind != "window":
        return TruncationPolicy(kind, r, None, None, **common)
    if keep not in WINDOW_KEEPS:
        raise ValueError(f"--truncation window needs --keep {'|'.join(WINDOW_KEEPS)}")
    scope = window_scope or WINDOW_SCOPES[0]
    if scope not in WINDOW_SCOPES:
        raise ValueError(f"--window-scope {scope!r}: expected one of {', '.join(WINDOW_SCOPES)}")
    return TruncationPolicy(kind, r, None, keep, scope, **common)


def _scaled(policy: TruncationPolicy, length: int) -> int:
    """r·length rounded down: exactly, or as ``int(length * r)`` in floating point (the official code)."""
    r = policy.lsp
    if policy.rounding == "float":
        return math.floor(length * float(r))  # == int() for the non-negative values here
    return length * r.numerator // r.denominator


def _window_start(keep: str, span: int, k: int) -> int:
    return {"left": 0, "middle": max(0, (span - k) // 2), "right": max(0, span - k)}[keep]


def kept_ranges(policy: TruncationPolicy, n: int, p: int, c: int, *, tail: int = 0) -> list[tuple[int, int]]:
    """Half-open token ranges to keep from a document of n tokens with p PROMPT and c COT tokens (in that order).

    ``tail``: tokens after the document that whole-sequence spans count but that are not written (the generation
    prompt of ``--protocol paper``); ranges are clipped to the n written tokens.
    """
    if policy.kind == "none":
        return [(0, n)]
    if policy.kind == "token-budget":
        return [(0, min(policy.max_tokens, n))]
    if policy.kind == "cot-span":
        return [(0, p + _scaled(policy, c))]
    if policy.kind == "window" and policy.window_scope == "response":
        m = n - p
        k = _scaled(policy, m)
        start = p + _window_start(policy.keep, m, k)
        return [(0, p), (start, start + k)]
    span = n + tail  # lead-span, or a window over the whole sequence
    k = max(1, _scaled(policy, span))
    start = 0 if policy.kind == "lead-span" else _window_start(policy.keep, span, k)
    return [(min(start, n), min(start + k, n))]


def truncate(policy: TruncationPolicy, tokens: np.ndarray, sections: np.ndarray, *, tail: int = 0
             ) -> tuple[np.ndarray, np.ndarray]:
    """Apply the policy to one document. tokens, sections: [n]; returns the kept [k] views (copies if split)."""
    n = int(sections.size)
    p = int(np.count_nonzero(sections == Section.PROMPT))
    c = int(np.count_nonzero(sections == Section.COT))
    ranges = [(a, b) for a, b in kept_ranges(policy, n, p, c, tail=tail) if b > a]
    if len(ranges) <= 1:
        a, b = ranges[0] if ranges else (0, 0)
        return tokens[a:b], sections[a:b]
    return (np.concatenate([tokens[a:b] for a, b in ranges]), np.concatenate([sections[a:b] for a, b in ranges]))
