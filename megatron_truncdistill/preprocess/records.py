"""Record layouts → one normalized ``Trace`` (prompt turns, CoT, answer), or a ``Reject`` with a reason.

Layouts (``--format auto`` picks per record, in this order):
- ``conversation``: a ``conversations`` or ``messages`` list of ``{from, value}`` or ``{role, content}`` turns and an
  optional top-level ``system``; the last turn is the assistant's target, earlier turns are the prompt.
- ``prompt-response``: a prompt field plus a response holding ``<think>COT</think>ANSWER``.
- ``fields``: explicit ``--prompt-key/--cot-key/--answer-key`` (the CoT arrives without markers).

Assistant texts are split by ``split_thinking``: Bespoke-Stratos/OpenThoughts/Sky-T1 ``<|begin_of_thought|>`` markers,
``<think>`` markers, responses without the opening ``<think>`` (R1-Distill puts it in the generation prompt) and
thinking that was cut off before ``</think>``.
"""

from __future__ import annotations

from dataclasses import dataclass

PROMPT_KEYS = ("prompt", "problem", "question", "instruction", "input")
RESPONSE_KEYS = ("full_response", "response", "output", "completion", "generation")
ROLE_ALIASES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "model": "assistant",
                "system": "system", "tool": "tool"}
BESPOKE = ("<|begin_of_thought|>", "<|end_of_thought|>", "<|begin_of_solution|>", "<|end_of_solution|>")


@dataclass(frozen=True)
class Trace:
    """A normalized reasoning trace.

    prompt: the turns before the target assistant turn, ``[{"role", "content"}]``, system first when present.
    cot / answer: the thinking and the final answer, stripped of markers and surrounding whitespace.
    thinking_closed: False when the response was cut off inside the thinking (then ``answer`` is empty).
    """

    prompt: tuple[dict, ...]
    cot: str
    answer: str
    thinking_closed: bool


@dataclass(frozen=True)
class Reject:
    """Why a record was not written: a short stable ``reason`` code (counted in the manifest) and a detail."""

    reason: str
    detail: str = ""


@dataclass(frozen=True)
class RecordSpec:
    """How to read records; every field maps to a CLI option of the same name."""

    format: str = "auto"  # auto | conversation | prompt-response | fields
    prompt_key: str | None = None
    response_key: str | None = None
    cot_key: str | None = None
    answer_key: str | None = None
    system_key: str = "system"
    think_open: str = "<think>"
    think_close: str = "</think>"
    implicit_think_open: bool = False  # a response with no marker at all is thinking that was never closed


class _RecordError(Exception):
    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(detail)
        self.reject = Reject(reason, detail)


def _text(row: dict, key: str, *, required: bool = True) -> str:
    value = row.get(key)
    if value is None:
        if required:
            raise _RecordError("missing_field", f"field {key!r} is missing")
        return ""
    if not isinstance(value, str):
        raise _RecordError("wrong_type", f"field {key!r} is {type(value).__name__}, expected string")
    return value


def split_thinking(text: str, spec: RecordSpec) -> tuple[str, str, bool]:
    """Split an assistant text into (cot, answer, thinking_closed); raises _RecordError without any thinking."""
    if BESPOKE[0] in text:
        head, _, rest = text.partition(BESPOKE[0])
        if head.strip():
            raise _RecordError("text_before_thinking", f"{len(head.strip())} chars before {BESPOKE[0]}")
        cot, closed, after = rest.partition(BESPOKE[1])
        if not closed:
            return cot.strip(), "", False
        answer = after.split(BESPOKE[2], 1)[-1].split(BESPOKE[3], 1)[0]
        return cot.strip(), answer.strip(), True
    opened, closed = spec.think_open in text, spec.think_close in text
    if not opened and not closed and not spec.implicit_think_open:
        raise _RecordError("missing_thinking", f"no {spec.think_open} or {spec.think_close} in the response "
                           "(pass --implicit-think-open for R1-Distill responses whose prompt opens the thinking)")
    body, _, answer = text.partition(spec.think_close)  # body is the whole text when thinking never closed
    if spec.think_open in body:
        head, _, body = body.partition(spec.think_open)
        if head.strip():
            raise _RecordError("text_before_thinking", f"{len(head.strip())} chars before {spec.think_open}")
    return body.strip(), answer.strip(), closed


def _conversation(row: dict, spec: RecordSpec) -> Trace:
    key = "conversations" if "conversations" in row else "messages"
    turns = row.get(key)
    if not isinstance(turns, list) or not turns:
        raise _RecordError("wrong_type", f"field {key!r} must be a non-empty list of turns")
    messages = list(_system_turn(row, spec))
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict):
            raise _RecordError("wrong_type", f"{key}[{i}] is {type(turn).__name__}, expected object")
        role = turn.get("role", turn.get("from"))
        content = turn.get("content", turn.get("value"))
        if role not in ROLE_ALIASES or not isinstance(content, str):
            raise _RecordError("wrong_type", f"{key}[{i}] needs role/from in {sorted(ROLE_ALIASES)} and string "
                               "content/value")
        messages.append({"role": ROLE_ALIASES[role], "content": content})
    if messages[-1]["role"] != "assistant":
        raise _RecordError("no_assistant_turn", f"the last turn of {key!r} is {messages[-1]['role']!r}")
    return _trace(tuple(messages[:-1]), messages[-1]["content"], spec)


def _trace(prompt: tuple[dict, ...], response: str, spec: RecordSpec) -> Trace:
    if not any(m["role"] == "user" and m["content"].strip() for m in prompt):
        raise _RecordError("empty_prompt", "no non-empty user turn before the response")
    if not response.strip():
        raise _RecordError("empty_response", "the response is empty")
    cot, answer, closed = split_thinking(response, spec)
    return Trace(prompt, cot, answer, closed)


def _system_turn(row: dict, spec: RecordSpec) -> tuple[dict, ...]:
    system = _text(row, spec.system_key, required=False)
    return ({"role": "system", "content": system},) if system.strip() else ()


def _user_turns(row: dict, prompt: str, spec: RecordSpec) -> tuple[dict, ...]:
    return _system_turn(row, spec) + ({"role": "user", "content": prompt},)


def _first_key(row: dict, explicit: str | None, candidates: tuple[str, ...], what: str) -> str:
    if explicit is not None:
        return explicit
    for key in candidates:
        if key in row:
            return key
    raise _RecordError("unknown_layout", f"no {what} field (looked for {', '.join(candidates)}; pass --{what}-key)")


def _prompt_response(row: dict, spec: RecordSpec) -> Trace:
    prompt = _text(row, _first_key(row, spec.prompt_key, PROMPT_KEYS, "prompt"))
    response = _text(row, _first_key(row, spec.response_key, RESPONSE_KEYS, "response"))
    return _trace(_user_turns(row, prompt, spec), response, spec)


def _fields(row: dict, spec: RecordSpec) -> Trace:
    prompt = _text(row, _first_key(row, spec.prompt_key, PROMPT_KEYS, "prompt"))
    cot = _text(row, spec.cot_key).strip()
    answer = _text(row, spec.answer_key, required=False).strip() if spec.answer_key else ""
    if not prompt.strip():
        raise _RecordError("empty_prompt", f"field {spec.prompt_key or 'prompt'!r} is empty")
    if not cot and not answer:
        raise _RecordError("empty_response", f"fields {spec.cot_key!r} and {spec.answer_key!r} are empty")
    return Trace(_user_turns(row, prompt, spec), cot, answer, True)


def detect_layout(row: dict, spec: RecordSpec) -> str:
    """The layout of one record: the forced ``spec.format``, or the first that fits ``row``'s keys."""
    if spec.format != "auto":
        return spec.format
    if spec.cot_key is not None:
        return "fields"
    if "conversations" in row or "messages" in row:
        return "conversation"
    return "prompt-response"


def normalize(row, spec: RecordSpec) -> Trace | Reject:
    """Map one parsed record to a Trace, or a Reject naming why it cannot be used."""
    if not isinstance(row, dict):
        return Reject("not_an_object", f"record is {type(row).__name__}, expected a JSON object")
    layout = detect_layout(row, spec)
    parse = {"conversation": _conversation, "prompt-response": _prompt_response, "fields": _fields}[layout]
    try:
        return parse(row, spec)
    except _RecordError as err:
        return err.reject
