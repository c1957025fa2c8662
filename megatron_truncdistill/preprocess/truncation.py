"""Truncation policies: which tokens of a tokenized, section-tagged document are kept.

With n tokens, p of them PROMPT, c COT and m = n - p the response (COT + ANSWER), and r the ``--lsp`` fraction:
- ``lead-span``:    the first max(1, floor(r·n)) tokens of the whole sequence, prompt included (the paper's protocol);
- ``token-budget``: the first min(N, n) tokens (``--max-tokens N``);
- ``cot-span``:     the whole prompt and the first floor(r·c) CoT tokens; the rest of the CoT and the answer go;
- ``window``:       the whole prompt and a window of floor(r·m) response tokens at the ``--keep`` left, middle
                    (starting at floor((m - k) / 2)) or right end of the response (the left/middle/right ablation);
- ``none``:         everything.

r is held as an exact ``Fraction`` parsed from its decimal text, so floor(r·n) is integer arithmetic: with floats,
0.29 · 100 = 28.999999999999996 would keep 28 tokens instead of 29.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from megatron_truncdistill.sections import Section

POLICIES = ("lead-span", "token-budget", "cot-span", "window", "none")
WINDOW_KEEPS = ("left", "middle", "right")


@dataclass(frozen=True)
class TruncationPolicy:
    """One policy and its parameters, validated by ``make_policy``."""

    kind: str = "lead-span"
    lsp: Fraction | None = Fraction(1)
    max_tokens: int | None = None
    keep: str | None = None

    def to_json(self) -> dict:
        return {"kind": self.kind, "lsp": None if self.lsp is None else str(self.lsp), "max_tokens": self.max_tokens,
                "keep": self.keep}


def parse_fraction(text: str | float | Fraction) -> Fraction:
    """``"0.29"`` → 29/100 exactly (a float argument goes through its shortest repr, 0.29 → "0.29")."""
    return text if isinstance(text, Fraction) else Fraction(str(text))


def make_policy(kind: str, *, lsp=None, max_tokens: int | None = None, keep: str | None = None) -> TruncationPolicy:
    """Validate a policy; raises ValueError whose message names the option to fix."""
    if kind not in POLICIES:
        raise ValueError(f"--truncation {kind!r}: expected one of {', '.join(POLICIES)}")
    if kind == "token-budget":
        if max_tokens is None or max_tokens < 1:
            raise ValueError("--truncation token-budget needs --max-tokens N with N >= 1")
        return TruncationPolicy(kind, None, max_tokens, None)
    if kind == "none":
        return TruncationPolicy(kind, None, None, None)
    r = parse_fraction(1 if lsp is None else lsp)
    if not 0 < r <= 1:
        raise ValueError(f"--lsp {lsp}: must be in (0, 1]")
    if kind == "window" and keep not in WINDOW_KEEPS:
        raise ValueError(f"--truncation window needs --keep {'|'.join(WINDOW_KEEPS)}")
    return TruncationPolicy(kind, r, None, keep if kind == "window" else None)


def _floor(r: Fraction, n: int) -> int:
    return n * r.numerator // r.denominator


def kept_ranges(policy: TruncationPolicy, n: int, p: int, c: int) -> list[tuple[int, int]]:
    """Half-open token ranges to keep from a document of n tokens with p PROMPT and c COT tokens (in that order)."""
    if policy.kind == "none":
        return [(0, n)]
    if policy.kind == "token-budget":
        return [(0, min(policy.max_tokens, n))]
    if policy.kind == "lead-span":
        return [(0, max(1, _floor(policy.lsp, n)))]
    if policy.kind == "cot-span":
        return [(0, p + _floor(policy.lsp, c))]
    m = n - p
    k = _floor(policy.lsp, m)
    offset = {"left": 0, "middle": (m - k) // 2, "right": m - k}[policy.keep]
    return [(0, p), (p + offset, p + offset + k)]


def truncate(policy: TruncationPolicy, tokens: np.ndarray, sections: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Apply the policy to one document. tokens, sections: [n]; returns the kept [k] views (copies if split)."""
    n = int(sections.size)
    p = int(np.count_nonzero(sections == Section.PROMPT))
    c = int(np.count_nonzero(sections == Section.COT))
    ranges = [(a, b) for a, b in kept_ranges(policy, n, p, c) if b > a]
    if len(ranges) <= 1:
        a, b = ranges[0] if ranges else (0, 0)
        return tokens[a:b], sections[a:b]
    return (np.concatenate([tokens[a:b] for a, b in ranges]), np.concatenate([sections[a:b] for a, b in ranges]))
