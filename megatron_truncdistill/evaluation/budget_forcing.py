"""Budget forcing (s1, Muennighoff et al. 2025): close an unfinished thinking and read the answer greedily.

A generation that has not emitted the end-of-thinking marker within its token budget (it ran out of tokens, or
stopped early without closing) gets ``FORCE_TEXT`` appended once; decoding then continues greedily for a few
tokens, enough for a number. Generations that closed their thinking on their own are left untouched, so the
protocol never changes a model's natural answer; it only gives every model the same chance to answer at the end
of the budget.
"""

from __future__ import annotations

from dataclasses import dataclass

from megatron_truncdistill.evaluation.greedy import greedy_generate

THINK_END = "</think>"
FORCE_TEXT = "\n</think>\n\nAnswer: "


@dataclass
class ForcedGenerations:
    generations: list[list[int]]
    """New ids per prompt: the model's own tokens, then (when forced) the forced text and its continuation."""
    forced: list[bool]
    """Whether each generation needed forcing."""


def needs_forcing(text: str, *, think_end: str = THINK_END) -> bool:
    """True when the thinking was never closed in ``text`` (the generated continuation only)."""
    return think_end not in text


def budget_force(model, tokenizer, prompt_ids: list[list[int]], generations: list[list[int]], *,
                 force_text: str = FORCE_TEXT, answer_tokens: int = 12, stop_ids: set[int]) -> ForcedGenerations:
    """Append ``force_text`` to every generation that did not close its thinking and continue greedily.

    ``prompt_ids[i] + generations[i]`` is what the model has seen and written; the forced continuation runs for
    at most ``answer_tokens`` new tokens (or until a stop id) with the KV-cached ``greedy_generate``.
    """
    forced = [needs_forcing(tokenizer.decode(g)) for g in generations]
    force_ids = tokenizer.encode_batch([force_text])[0].ids.tolist()
    todo = [i for i, f in enumerate(forced) if f]
    contexts = [prompt_ids[i] + generations[i] + force_ids for i in todo]
    tails = greedy_generate(model, contexts, max_new_tokens=answer_tokens, stop_ids=stop_ids,
                            vocab_size=tokenizer.vocab_size) if todo else []
    out = [list(g) for g in generations]
    for i, tail in zip(todo, tails):
        out[i] = out[i] + force_ids + tail
    return ForcedGenerations(generations=out, forced=forced)
