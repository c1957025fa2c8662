"""Render a Trace as the student sees it at inference, with the character offsets of its sections.

The prompt turns go through the tokenizer's chat template with ``add_generation_prompt=True``, exactly what an
inference server sends before the model starts writing. The assistant turn is then appended by us with the layout
the template uses for a final assistant turn, learned once by ``probe_layout``:

    text = render(prompt, add_generation_prompt=True) + open_text + cot + close_text + answer + turn_end
           |----------------- PROMPT ----------------|------- COT --------------|---- ANSWER ----------|

Appending, rather than rendering the whole conversation, is what keeps the CoT with templates that strip it
(DeepSeek-R1's drops everything up to ``</think>`` from assistant turns, Qwen3's from all but the last turn): for
those the probe sees the CoT vanish and the canonical ``<think>\\nCOT\\n</think>\\n\\nANSWER`` layout is used, which
is what such models generate. ``AssistantLayout.template_keeps_thinking`` records which case applied.

The COT section starts at the opening marker, even when the generation prompt already holds it (R1-Distill
templates end with ``<think>\\n``), and ends right after the closing marker.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from megatron_truncdistill.preprocess.records import Reject, Trace
from megatron_truncdistill.tokenization import ChatTokenizer, TokenizerError

_PROBE_USER, _PROBE_COT, _PROBE_ANSWER = "Probe-user-q7Z", "Probe-cot-q7Z", "Probe-answer-q7Z"


class TemplateError(ValueError):
    """The chat template cannot render traces faithfully; the message says why and what to pass instead."""


@dataclass(frozen=True)
class AssistantLayout:
    """Text the appended assistant turn is built from; stored in the manifest."""

    open_text: str  # after the generation prompt, before the CoT ("<think>\n"; "" when the prompt already opens it)
    close_text: str  # between CoT and answer ("\n</think>\n\n")
    turn_end: str  # after the answer ("<|im_end|>\n")
    think_open: str  # marker where the COT section starts
    think_close: str  # marker after which the ANSWER section starts
    template_keeps_thinking: bool  # False: the template strips the CoT, the canonical layout is appended instead

    def to_json(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Rendered:
    """A rendered trace: ``text[:cot_start]`` is PROMPT, ``[cot_start:answer_start]`` COT, the rest ANSWER."""

    text: str
    cot_start: int
    answer_start: int


def _render_probe(tok: ChatTokenizer, think_open: str, think_close: str) -> tuple[str, str]:
    user = [{"role": "user", "content": _PROBE_USER}]
    assistant = {"role": "assistant", "content": f"{think_open}\n{_PROBE_COT}\n{think_close}\n\n{_PROBE_ANSWER}"}
    try:
        prompt = tok.render_chat(user, add_generation_prompt=True)
        full = tok.render_chat(user + [assistant], add_generation_prompt=False)
    except TokenizerError:
        raise
    except Exception as err:  # jinja errors of every kind: the template is unusable as a whole
        raise TemplateError(f"{tok.path}: chat template fails on a plain user/assistant chat ({err}); "
                            "pass --chat-format chatml") from err
    if _PROBE_USER not in prompt or _PROBE_ANSWER not in full:
        raise TemplateError(f"{tok.path}: chat template does not render the user or assistant content; "
                            "pass --chat-format chatml")
    return prompt, full


def probe_layout(tok: ChatTokenizer, *, think_open: str = "<think>", think_close: str = "</think>") -> AssistantLayout:
    """Learn how the template writes a final assistant turn by rendering a probe chat once."""
    prompt, full = _render_probe(tok, think_open, think_close)
    turn_end = full[full.index(_PROBE_ANSWER) + len(_PROBE_ANSWER):]
    cot_at = full.find(_PROBE_COT)
    if cot_at >= 0 and full[:cot_at].startswith(prompt):
        # The template keeps the thinking of a final assistant turn: copy its exact spacing around the markers.
        close_text = full[cot_at + len(_PROBE_COT):full.index(_PROBE_ANSWER)]
        if think_close not in close_text:
            raise TemplateError(f"{tok.path}: chat template drops {think_close} between CoT and answer; "
                                "pass --chat-format chatml")
        return AssistantLayout(full[len(prompt):cot_at], close_text, turn_end, think_open, think_close, True)
    # The template strips the thinking (or rewrites the assistant header): append the canonical layout.
    opens_in_prompt = prompt.rstrip().endswith(think_open)
    return AssistantLayout("" if opens_in_prompt else f"{think_open}\n", f"\n{think_close}\n\n", turn_end,
                           think_open, think_close, cot_at >= 0)


def generation_prompt_tokens(tok: ChatTokenizer) -> int:
    """Tokens the template's generation prompt adds after a complete conversation.

    The official pipeline renders every trace with ``add_generation_prompt=True``, so its sequences end with this
    prompt (Qwen3: ``<|im_start|>assistant\\n``, 3 tokens) and its lead spans and windows are counted over it.
    Raises TemplateError when the prompt is not a separately tokenized suffix (then no per-document count exists).
    """
    chat = [{"role": "user", "content": _PROBE_USER},
            {"role": "assistant", "content": f"<think>\n{_PROBE_COT}\n</think>\n\n{_PROBE_ANSWER}"}]
    full = tok.render_chat(chat, add_generation_prompt=False)
    with_prompt = tok.render_chat(chat, add_generation_prompt=True)
    if not with_prompt.startswith(full):
        raise TemplateError(f"{tok.path}: the generation prompt is not a suffix of the rendered chat; "
                            "--protocol paper cannot count it: use --protocol default")
    full_ids, with_ids, tail_ids = (e.ids.tolist() for e in tok.encode_batch([full, with_prompt,
                                                                              with_prompt[len(full):]]))
    if with_ids != full_ids + tail_ids:
        raise TemplateError(f"{tok.path}: the generation prompt's tokens depend on the text before it; "
                            "--protocol paper cannot count it: use --protocol default")
    return len(tail_ids)


def _prompt_text(tok: ChatTokenizer, trace: Trace) -> str | Reject:
    """The prompt turns with the generation prompt; a template that ignores ``tool_calls`` is refused per record."""
    prompt = tok.render_chat(list(trace.prompt), add_generation_prompt=True)
    if trace.has_tool_calls:
        bare = [{k: v for k, v in m.items() if k != "tool_calls"} for m in trace.prompt]
        if tok.render_chat(bare, add_generation_prompt=True) == prompt:
            return Reject("tool_calls_not_rendered", "an assistant turn has tool_calls but the chat template "
                          "ignores them (they would be silently lost); use a template that renders tool calls")
    return prompt


def render_trace(tok: ChatTokenizer, layout: AssistantLayout, trace: Trace) -> Rendered | Reject:
    """Render one trace; a trace whose thinking never closed ends after its CoT (no close marker, no turn end)."""
    prompt = _prompt_text(tok, trace)
    if isinstance(prompt, Reject):
        return prompt
    cot_body = prompt + layout.open_text
    if layout.think_open in layout.open_text:
        cot_start = len(prompt) + layout.open_text.index(layout.think_open)
    else:  # the generation prompt ends with the opening marker (plus whitespace): the COT section starts there
        found = prompt.rfind(layout.think_open)
        cot_start = found if found >= 0 and not prompt[found + len(layout.think_open):].strip() else len(prompt)
    if not trace.thinking_closed:
        text = cot_body + trace.cot
        return Rendered(text, cot_start, len(text))
    head = cot_body + trace.cot + layout.close_text
    answer_start = head.rindex(layout.think_close) + len(layout.think_close)
    return Rendered(head + trace.answer + layout.turn_end, cot_start, answer_start)
