"""Records → tokens + section codes, one chunk at a time: the work each worker process does.

Kept free of torch and megatron-core so a spawned worker starts in about a second. Per chunk:
parse → normalize → render (chat template) → one ``encode_batch`` → sections from two cut indices → filters →
truncation. The tokenizer call dominates; everything else is O(1) Python work per document plus numpy slicing.
"""

from __future__ import annotations

import functools
import json
import os
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from megatron_truncdistill.preprocess.readers import RawRecord
from megatron_truncdistill.preprocess.records import RecordSpec, Reject, Trace, normalize
from megatron_truncdistill.preprocess.rendering import (AssistantLayout, Rendered, generation_prompt_tokens,
                                                       probe_layout, render_trace)
from megatron_truncdistill.preprocess.truncation import TruncationPolicy, truncate
from megatron_truncdistill.sections import NO_SECTION, Section
from megatron_truncdistill.tokenization import ChatTokenizer, TokenizerError, load_tokenizer

_SECTION_CODES = np.array([Section.PROMPT, Section.COT, Section.ANSWER], dtype=np.uint8)


@dataclass(frozen=True)
class FilterConfig:
    """Filters applied before truncation; each rejection is counted under its reason in the manifest."""

    max_source_tokens: int | None = None  # reject documents longer than this (the paper keeps < 4,096)
    require_closed_thinking: bool = False  # reject traces cut off before the closing marker
    min_tokens: int = 1
    min_cot_tokens: int = 0  # COT section tokens, markers included
    min_answer_tokens: int = 0
    max_record_chars: int = 4_000_000  # rendered text longer than this is rejected before the tokenizer sees it


@dataclass(frozen=True)
class Job:
    """Everything a worker needs; small and picklable (workers load their own tokenizer from the path)."""

    tokenizer: str
    chat_format: str | None
    spec: RecordSpec
    policy: TruncationPolicy
    filters: FilterConfig
    append_eod: bool = False  # one end-of-document token after each document (Megatron-LM's --append-eod)
    eod_token: str | None = None  # its text; None: the tokenizer's EOS token


@dataclass
class Stats:
    """Counts merged over chunks in input order. Token counts are [3] indexed by Section, for written documents."""

    read: int = 0
    written: int = 0
    rejected: Counter = field(default_factory=Counter)
    tokens_before: np.ndarray = field(default_factory=lambda: np.zeros(3, dtype=np.int64))
    tokens_after: np.ndarray = field(default_factory=lambda: np.zeros(3, dtype=np.int64))
    source_lengths: Counter = field(default_factory=Counter)  # bucket b counts lengths in [2^(b-1), 2^b)
    written_lengths: Counter = field(default_factory=Counter)

    def merge(self, other: "Stats") -> None:
        self.read += other.read
        self.written += other.written
        self.rejected.update(other.rejected)
        self.tokens_before += other.tokens_before
        self.tokens_after += other.tokens_after
        self.source_lengths.update(other.source_lengths)
        self.written_lengths.update(other.written_lengths)


@dataclass
class ChunkResult:
    """Output of one chunk. tokens/sections: [sum(lengths)] documents back to back; lengths: [docs]."""

    tokens: np.ndarray
    sections: np.ndarray
    lengths: np.ndarray
    rejects: list[dict]
    stats: Stats


def parse_payload(record: RawRecord):
    """A JSONL line → its JSON value, or a Reject for bytes that are not UTF-8 or not JSON."""
    if not isinstance(record.payload, bytes):
        return record.payload
    try:
        text = record.payload.decode("utf-8")
    except UnicodeDecodeError as err:
        return Reject("invalid_utf8", f"byte {err.start} of the line is not UTF-8")
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        return Reject("malformed_json", f"{err.msg} at column {err.colno}")


@functools.lru_cache(maxsize=4)
def _cached_tokenizer(path: str, chat_format: str | None, mtime_ns: int) -> ChatTokenizer:
    return load_tokenizer(path, chat_format=chat_format)


def cached_tokenizer(path: str, chat_format: str | None) -> ChatTokenizer:
    """Parse a tokenizer once per process: runs in one process (tests, benchmarks, the probe before the pool) would
    otherwise re-parse ~11 MB of tokenizer.json (~0.6 s) each time. The mtime in the key notices a replaced file."""
    return _cached_tokenizer(path, chat_format, os.stat(path).st_mtime_ns if os.path.exists(path) else 0)


def resolve_eod(tok: ChatTokenizer, job: Job, layout: AssistantLayout) -> tuple[str, int] | None:
    """(text, id) of the token appended after each document, or None; fatal problems raise TokenizerError.

    Megatron-LM's GPTDataset finds document boundaries by this id (``reset_attention_mask``, ``eod_mask_loss``), so
    it must not occur inside documents: a token the chat template itself writes (Qwen3's EOS ``<|im_end|>`` ends
    every turn) is refused, since every turn end would become a document boundary.
    """
    if not job.append_eod:
        return None
    if job.eod_token is None:
        if tok.eos_id is None:
            raise TokenizerError(f"{tok.path}: --append-eod: the tokenizer names no EOS token; pass --eod-token TEXT")
        text, eod = tok.decode([tok.eos_id]), tok.eos_id
    else:
        text, eod = job.eod_token, tok.token_id(job.eod_token)
        if eod is None:
            raise TokenizerError(f"--eod-token {text!r}: not a single token of {tok.path}; pass one special token")
    scaffolding = tok.render_chat([{"role": "user", "content": "u"}], add_generation_prompt=True) + (
        layout.open_text + "c" + layout.close_text + "a" + layout.turn_end)
    if eod in tok.encode_batch([scaffolding])[0].ids:
        other = tok.decode([tok.pad_id]) if tok.pad_id is not None and tok.pad_id != eod else None
        raise TokenizerError(f"--append-eod: {text!r} (id {eod}) is written by the chat template into every document, "
                             "so Megatron-LM's reset_attention_mask would cut documents at each turn; pass --eod-token "
                             + (f"{other!r} (the pad token)" if other else "with a token the template does not write"))
    return text, eod


class DocumentProcessor:
    """Holds a tokenizer and the chat layout; ``process`` turns a chunk of raw records into written docs + rejects."""

    def __init__(self, job: Job) -> None:
        self.job = job
        self.tok = cached_tokenizer(job.tokenizer, job.chat_format)
        self.layout = probe_layout(self.tok, think_open=job.spec.think_open, think_close=job.spec.think_close)
        # tokens whole-sequence spans count after each document (the official generation prompt), not written
        self.tail = generation_prompt_tokens(self.tok) if job.policy.count_generation_prompt else 0
        self.eod = resolve_eod(self.tok, job, self.layout)

    def _render(self, record: RawRecord) -> Rendered | Reject:
        row = parse_payload(record)
        trace = row if isinstance(row, Reject) else normalize(row, self.job.spec)
        if isinstance(trace, Reject):
            return trace
        assert isinstance(trace, Trace)
        if self.job.filters.require_closed_thinking and not trace.thinking_closed:
            return Reject("unclosed_thinking", "the response ends before the thinking is closed")
        try:
            rendered = render_trace(self.tok, self.layout, trace)
        except Exception as err:  # a template's raise_exception or a jinja error on this record's turns
            return Reject("chat_template_error", str(err))
        if isinstance(rendered, Reject):
            return rendered
        if len(rendered.text) > self.job.filters.max_record_chars:
            return Reject("record_too_long", f"{len(rendered.text)} rendered chars > --max-record-chars")
        return _valid_unicode(rendered)

    def _filter(self, n: int, counts: np.ndarray) -> Reject | None:
        f = self.job.filters
        if f.max_source_tokens is not None and n > f.max_source_tokens:
            return Reject("over_max_source_tokens", f"{n} tokens > --max-source-tokens {f.max_source_tokens}")
        if n < f.min_tokens:
            return Reject("under_min_tokens", f"{n} tokens < --min-tokens {f.min_tokens}")
        if counts[Section.COT] < f.min_cot_tokens:
            return Reject("under_min_cot_tokens", f"{counts[Section.COT]} CoT tokens < --min-cot-tokens")
        if counts[Section.ANSWER] < f.min_answer_tokens:
            return Reject("under_min_answer_tokens", f"{counts[Section.ANSWER]} answer tokens < --min-answer-tokens")
        return None

    def process(self, records: list[RawRecord]) -> ChunkResult:
        stats, rejects = Stats(read=len(records)), []
        rendered = [self._render(r) for r in records]
        todo = [i for i, r in enumerate(rendered) if isinstance(r, Rendered)]
        encoded = self.tok.encode_batch([rendered[i].text for i in todo],
                                        [(rendered[i].cot_start, rendered[i].answer_start) for i in todo])
        outcome: dict[int, Reject | tuple[np.ndarray, np.ndarray]] = {
            i: r for i, r in enumerate(rendered) if isinstance(r, Reject)}
        for i, enc in zip(todo, encoded):
            n, (cot_at, answer_at) = enc.ids.size, enc.cuts
            counts = np.array([cot_at, answer_at - cot_at, n - answer_at])  # [3] tokens per section
            outcome[i] = self._filter(n, counts) or self._keep(enc.ids, counts, stats)
        tokens, sections, lengths = [], [], []
        for i, record in enumerate(records):
            out = outcome[i]
            if isinstance(out, Reject):
                stats.rejected[out.reason] += 1
                rejects.append({**record.where(), "reason": out.reason, "detail": out.detail})
            else:
                tokens.append(out[0])
                sections.append(out[1])
                lengths.append(out[0].size)
        stats.written = len(lengths)
        return ChunkResult(_concat(tokens, np.int32), _concat(sections, np.uint8),
                           np.asarray(lengths, dtype=np.int64), rejects, stats)

    def _keep(self, ids: np.ndarray, counts: np.ndarray, stats: Stats) -> Reject | tuple[np.ndarray, np.ndarray]:
        sections = np.repeat(_SECTION_CODES, counts)  # [n] uint8, sections are contiguous and in order
        kept_ids, kept_sections = truncate(self.job.policy, ids, sections, tail=self.tail)
        if kept_ids.size == 0:
            return Reject("empty_after_truncation", f"the {self.job.policy.kind} policy keeps no token")
        if self.eod is not None and np.any(kept_ids == self.eod[1]):
            return Reject("eod_in_document", f"the text holds the end-of-document token {self.eod[0]!r}; "
                          "it would split the document in Megatron-LM's GPTDataset")
        stats.tokens_before += counts
        stats.tokens_after += np.bincount(kept_sections, minlength=3)
        if self.eod is not None:
            kept_ids = np.append(kept_ids, self.eod[1])  # [k + 1]
            kept_sections = np.append(kept_sections, np.uint8(NO_SECTION))
        stats.source_lengths[int(ids.size).bit_length()] += 1
        stats.written_lengths[int(kept_ids.size).bit_length()] += 1
        return kept_ids, kept_sections


def _valid_unicode(rendered: Rendered) -> Rendered | Reject:
    """JSON may escape half a UTF-16 pair (``"\\ud800"``): such a string cannot be encoded for the tokenizer, and
    must cost one reject, not the run. Encoding is ~1,000× cheaper than tokenizing the same text."""
    try:
        rendered.text.encode("utf-8")
    except UnicodeEncodeError as err:
        return Reject("invalid_utf8", f"lone surrogate U+{ord(rendered.text[err.start]):04X} (half of a \\u escaped "
                      "UTF-16 pair) in the record's text; fix the escape")
    return rendered


def _concat(arrays: list[np.ndarray], dtype) -> np.ndarray:
    return np.concatenate(arrays).astype(dtype, copy=False) if arrays else np.zeros(0, dtype=dtype)
