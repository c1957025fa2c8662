"""Section codes: which part of a reasoning trace a token belongs to.

Written per token by ``tools/preprocess.py`` into ``PREFIX_sections.bin`` (uint8) and read by the trainer to build
the loss mask (``distill.loss_sections``) and to split the KD loss per section for logging.
"""

from enum import IntEnum


class Section(IntEnum):
    """Code stored per token. Values are on disk: never renumber."""

    PROMPT = 0  # system/user turns and template scaffolding before the thinking
    COT = 1  # the thinking, including its open/close markers
    ANSWER = 2  # everything after the thinking, including end-of-turn tokens


SECTION_NAMES = tuple(s.name for s in Section)
NO_SECTION = 255
"""Code of tokens that belong to no section (padding, an appended end-of-document token): they match no
``Section``, so they never carry loss in this trainer and never count in a per-section statistic."""


def parse_sections(names) -> tuple[Section, ...]:
    """Parse ``["COT", "answer"]`` or ``"P+CoT+A"`` into sorted unique sections; unknown names raise ValueError."""
    aliases = {"P": Section.PROMPT, "PROMPT": Section.PROMPT, "COT": Section.COT, "C": Section.COT,
               "A": Section.ANSWER, "ANSWER": Section.ANSWER}
    if isinstance(names, str):
        names = names.replace("+", ",").split(",")
    out = set()
    for raw in names:
        key = str(raw).strip().upper()
        if key not in aliases:
            raise ValueError(f"unknown section {raw!r}: expected any of PROMPT, COT, ANSWER (or P, CoT, A)")
        out.add(aliases[key])
    if not out:
        raise ValueError("at least one section is required")
    return tuple(sorted(out))
