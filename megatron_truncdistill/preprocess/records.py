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
RECORD_FORMATS = ("auto", "conversation", "prompt-response", "fields")


@dataclass(frozen=True)
class Trace:
    """A normalized reasoning trace.

    prompt: the turns before the target assistant turn, ``[{"role", "content"}]`` (assistant turns may also hold
        ``tool_calls``), system first when present.
    cot / answer: the thinking and the final answer, without markers (trimmed as ``RecordSpec.parsing`` says).
    thinking_closed: False when the response was cut off inside the thinking (then ``answer`` is empty).
    """

    prompt: tuple[dict, ...]
    cot: str
    answer: str
    thinking_closed: bool

    @property
    def has_tool_calls(self) -> bool:
        return any("tool_calls" in message for message in self.prompt)


@dataclass(frozen=True)
class Reject:
    """Why a record was not written: a short stable ``reason`` code (counted in the manifest) and a detail."""

    reason: str
    detail: str = ""


@dataclass(frozen=True)
class RecordSpec:
    """How to read records; every field but the protocol's (``drop_system``, ``parsing``) has a CLI option."""

    format: str = "auto"  # one of RECORD_FORMATS
    prompt_key: str | None = None
    response_key: str | None = None
    cot_key: str | None = None
    answer_key: str | None = None
    system_key: str = "system"
    think_open: str = "<think>"
    think_close: str = "</think>"
    implicit_think_open: bool = False  # a response with no marker at all is thinking that was never closed
    drop_system: bool = False  # the top-level system field and system turns are not rendered (--protocol paper)
    # "default": CoT and answer lose surrounding whitespace; Bespoke markers are cut out. "official" (--protocol
    # paper): the official pipeline's text: Bespoke markers mapped by its string replacements, then CoT and answer
    # cut as Qwen3's chat template (the paper's models) cuts an assistant message: newlines trimmed, nothing else.
    parsing: str = "default"


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


def _check_one_block(text: str, open_marker: str, close_marker: str) -> None:
    """A response holds at most one thinking block, opened before it is closed; anything else is rejected.

    Tagging a second block as ANSWER would teach the student to think again after answering, and a closing marker
    before the opening one leaves no consistent split: neither has a faithful section layout.
    """
    opens, closes = text.count(open_marker), text.count(close_marker)
    if opens > 1 or closes > 1:
        raise _RecordError("multiple_thinking_blocks", f"{opens} × {open_marker} and {closes} × {close_marker}; "
                           "a response must hold one thinking block")
    if opens and closes and text.index(close_marker) < text.index(open_marker):
        raise _RecordError("misordered_thinking_markers", f"{close_marker} at char {text.index(close_marker)} "
                           f"comes before {open_marker} at char {text.index(open_marker)}")


def official_marker_mapping(text: str, spec: RecordSpec) -> str:
    """The official pipeline's rewrite of Bespoke-Stratos/OpenThoughts/Sky-T1 markers into thinking markers.

    The solution markers are removed only together with the blank line on their inner side (other spacings stay in
    the text, as they do there); the thought markers become ``spec.think_open``/``think_close``.
    """
    text = text.replace(BESPOKE[2] + "\n\n", "").replace("\n\n" + BESPOKE[3], "")
    return text.replace(BESPOKE[0], spec.think_open).replace(BESPOKE[1], spec.think_close)


def _split_bespoke(text: str, spec: RecordSpec) -> tuple[str, str, bool]:
    """``<|begin_of_thought|>COT<|end_of_thought|><|begin_of_solution|>ANSWER<|end_of_solution|>``, default parsing."""
    _check_one_block(text, BESPOKE[0], BESPOKE[1])
    if spec.think_open in text or spec.think_close in text:
        raise _RecordError("multiple_thinking_blocks", f"both {BESPOKE[0]} and {spec.think_open} markers")
    head, opened, rest = text.partition(BESPOKE[0])
    if not opened:  # only the end marker: the thinking was opened by the prompt, as with a bare </think>
        head, rest = "", text
    if head.strip():
        raise _RecordError("text_before_thinking", f"{len(head.strip())} chars before {BESPOKE[0]}")
    cot, closed, after = rest.partition(BESPOKE[1])
    if not closed:
        return cot.strip(), "", False
    answer = after.split(BESPOKE[2], 1)[-1].split(BESPOKE[3], 1)[0]
    return cot.strip(), answer.strip(), True


def split_thinking(text: str, spec: RecordSpec) -> tuple[str, str, bool]:
    """Split an assistant text into (cot, answer, thinking_closed); raises _RecordError for unusable responses."""
    official = spec.parsing == "official"
    if official:
        text = official_marker_mapping(text, spec)
    elif BESPOKE[0] in text or BESPOKE[1] in text:
        cot, answer, closed = _split_bespoke(text, spec)
        return _nonempty(cot, answer, closed)
    opened, closed = spec.think_open in text, spec.think_close in text
    if not opened and not closed and not spec.implicit_think_open:
        raise _RecordError("missing_thinking", f"no {spec.think_open} or {spec.think_close} in the response "
                           "(pass --implicit-think-open for R1-Distill responses whose prompt opens the thinking)")
    _check_one_block(text, spec.think_open, spec.think_close)
    body, _, answer = text.partition(spec.think_close)  # body is the whole text when thinking never closed
    if spec.think_open in body:
        head, _, body = body.partition(spec.think_open)
        if head.strip():
            raise _RecordError("text_before_thinking", f"{len(head.strip())} chars before {spec.think_open}")
    if official:  # what Qwen3's template keeps of an assistant message: newlines trimmed, other whitespace kept
        return _nonempty(body.strip("\n"), answer.lstrip("\n"), closed)
    return _nonempty(body.strip(), answer.strip(), closed)


def _nonempty(cot: str, answer: str, closed: bool) -> tuple[str, str, bool]:
    if not cot.strip() and not answer.strip():
        raise _RecordError("empty_response", "the response holds thinking markers but no thinking and no answer")
    return cot, answer, closed


def _tool_calls(turn: dict, where: str) -> dict:
    """``tool_calls`` of an assistant turn, passed to the chat template (which renders them or is refused later)."""
    calls = turn.get("tool_calls")
    if calls is None:
        return {}
    if not isinstance(calls, list) or not all(isinstance(c, dict) for c in calls):
        raise _RecordError("wrong_type", f"{where}.tool_calls must be a list of objects")
    return {"tool_calls": calls} if calls else {}


def _turn(turn, where: str, spec: RecordSpec) -> dict:
    """One ``{from, value}`` / ``{role, content}`` turn → ``{"role", "content"[, "tool_calls"]}``."""
    if not isinstance(turn, dict):
        raise _RecordError("wrong_type", f"{where} is {type(turn).__name__}, expected object")
    role = turn.get("role", turn.get("from"))
    content = turn.get("content", turn.get("value"))
    if role not in ROLE_ALIASES or not isinstance(content, str):
        raise _RecordError("wrong_type", f"{where} needs role/from in {sorted(ROLE_ALIASES)} and string content/value")
    message = {"role": ROLE_ALIASES[role], "content": content}
    if message["role"] == "assistant":
        if spec.parsing == "official":  # earlier assistant turns get the same marker rewrite as the target turn
            message["content"] = official_marker_mapping(content, spec)
        message.update(_tool_calls(turn, where))
    return message


def _conversation(row: dict, spec: RecordSpec) -> Trace:
    key = "conversations" if "conversations" in row else "messages"
    turns = row.get(key)
    if not isinstance(turns, list) or not turns:
        raise _RecordError("wrong_type", f"field {key!r} must be a non-empty list of turns")
    messages = list(_system_turn(row, spec))
    messages += [_turn(turn, f"{key}[{i}]", spec) for i, turn in enumerate(turns)]
    if spec.drop_system:
        messages = [m for m in messages if m["role"] != "system"]
    if not messages or messages[-1]["role"] != "assistant":
        raise _RecordError("no_assistant_turn", f"the last turn of {key!r} is "
                           f"{messages[-1]['role'] if messages else 'system'!r}")
    target = messages[-1]
    if "tool_calls" in target:
        raise _RecordError("tool_calls_in_response", f"the last turn of {key!r} calls tools; the target turn is "
                           "written as thinking + answer, so a tool-calling turn cannot be a target")
    return _trace(tuple(messages[:-1]), target["content"], spec)


def _trace(prompt: tuple[dict, ...], response: str, spec: RecordSpec) -> Trace:
    if not any(m["role"] == "user" and m["content"].strip() for m in prompt):
        raise _RecordError("empty_prompt", "no non-empty user turn before the response")
    if not response.strip():
        raise _RecordError("empty_response", "the response is empty")
    cot, answer, closed = split_thinking(response, spec)
    return Trace(prompt, cot, answer, closed)


def _system_turn(row: dict, spec: RecordSpec) -> tuple[dict, ...]:
    if spec.drop_system:
        return ()
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
