"""Tokenizers behind one small interface: batch encoding with section cuts, decoding, chat rendering, identity.

Two backends:
- ``HFTokenizer``: a local Hugging Face directory holding ``tokenizer.json`` (the fast Rust tokenizer, used directly
  through ``tokenizers`` to skip the ``transformers`` wrapper overhead) and ``tokenizer_config.json`` with the chat
  template, special tokens and, optionally, a separate ``chat_template.jinja``.
- ``SentencePieceTokenizer``: a ``.model`` file; it has no chat template, so turns are rendered by a named chat format
  (``chatml``).

Public API (imported by the preprocessing tool, the trainer and the quickstart):
    tok = load_tokenizer(path, chat_format=None)
    tok.encode_batch(texts, cuts=[(c1, c2), ...]) -> list[Encoded]   # ids [n] and token index of each char cut
    tok.decode(ids) -> str
    tok.render_chat(messages, add_generation_prompt=True) -> str
    tok.vocab_size, tok.eos_id, tok.pad_id, tok.token_id("<think>"), tok.identity()

Chat templates are rendered with jinja2 in a sandbox configured like ``transformers``' ``apply_chat_template``
(trim_blocks, lstrip_blocks, ``raise_exception``, ``tojson``), so the text matches what inference servers render,
without importing ``transformers`` (1.5 s per worker process).
"""

from __future__ import annotations

import hashlib
import json
import os
from abc import ABC, abstractmethod
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Sequence

import numpy as np

from megatron_truncdistill.errors import UserError

CHATML_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
CHAT_FORMATS = {"chatml": CHATML_TEMPLATE}


class TokenizerError(UserError, ValueError):
    """A tokenizer that cannot be used; the message names the path and the fix."""


@dataclass(frozen=True)
class Encoded:
    """One encoded text.

    ids: [n] int64 token ids.
    cuts: for each requested character offset, the index of the first token that starts at or after it (n when none
        does). A token that straddles a cut belongs to the side it starts on.
    """

    ids: np.ndarray
    cuts: tuple[int, ...]


def _sha256_files(paths: Sequence[Path]) -> str:
    h = hashlib.sha256()
    for p in paths:
        h.update(p.name.encode())
        h.update(p.read_bytes())
    return h.hexdigest()


def compile_chat_template(template: str):
    """Compile a chat template the way ``transformers`` does; a ``{% generation %}`` block renders its body."""
    import jinja2
    from jinja2.ext import Extension, loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class _Generation(Extension):
        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(["name:endgeneration"], drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

        def _body(self, caller):
            return caller()

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[_Generation, loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env.from_string(template)


class ChatTokenizer(ABC):
    """What preprocessing and training need from a tokenizer. Subclasses set the attributes in ``__init__``."""

    kind: str
    path: str
    vocab_size: int  # ids are in [0, vocab_size), added/special tokens included
    eos_id: int | None
    pad_id: int | None
    chat_template: str | None
    chat_template_source: str  # "tokenizer_config.json", "chat_template.jinja", "chatml", ...
    _vocab_files: tuple[Path, ...]
    _template_vars: dict

    @abstractmethod
    def encode_batch(self, texts: Sequence[str], cuts: Sequence[Sequence[int]] | None = None) -> list[Encoded]:
        """Encode without adding BOS/EOS (chat templates write their own specials into the text)."""

    @abstractmethod
    def decode(self, ids: Sequence[int]) -> str:
        """Decode ids to text, special tokens included."""

    @abstractmethod
    def token_id(self, text: str) -> int | None:
        """The id of ``text`` when it is exactly one token of the vocabulary, else None."""

    def render_chat(self, messages: Sequence[dict], *, add_generation_prompt: bool) -> str:
        """Render ``[{"role", "content"}, ...]`` with the chat template; raises TokenizerError without one."""
        if self.chat_template is None:
            raise TokenizerError(f"{self.path}: tokenizer has no chat template; pass --chat-format chatml")
        if getattr(self, "_compiled", None) is None:
            self._compiled = compile_chat_template(self.chat_template)
        return self._compiled.render(messages=list(messages), add_generation_prompt=add_generation_prompt,
                                     **self._template_vars)

    def identity(self) -> dict:
        """Everything a consumer needs to tell whether token ids were made by this tokenizer.

        ``files_sha256`` hashes only the files that define the id mapping (``tokenizer.json`` or the ``.model``), so
        a copy at another path compares equal; the chat template is hashed separately because it changes the text,
        not the ids.
        """
        template = self.chat_template or ""
        return {
            "kind": self.kind,
            "path": self.path,
            "files_sha256": _sha256_files(self._vocab_files),
            "vocab_size": self.vocab_size,
            "eos_id": self.eos_id,
            "pad_id": self.pad_id,
            "think_ids": [self.token_id("<think>"), self.token_id("</think>")],
            "chat_template_source": self.chat_template_source,
            "chat_template_sha256": hashlib.sha256(template.encode()).hexdigest() if template else None,
        }


def _read_config(config_file: Path) -> dict:
    """``tokenizer_config.json`` as a dict ({} when absent); a damaged file is a TokenizerError naming it."""
    if not config_file.is_file():
        return {}
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise TokenizerError(f"{config_file}: not valid JSON ({err}); restore the file from the model's "
                             "repository") from err
    if not isinstance(config, dict):
        raise TokenizerError(f"{config_file}: holds a {type(config).__name__}, expected a JSON object")
    return config


def _token_content(value) -> str | None:
    """tokenizer_config.json writes special tokens as strings or as ``{"content": ...}`` dicts."""
    if isinstance(value, dict):
        return value.get("content")
    return value


class HFTokenizer(ChatTokenizer):
    """A local Hugging Face tokenizer directory, encoded with the Rust ``tokenizers`` library."""

    def __init__(self, path: str | os.PathLike, *, chat_format: str | None = None) -> None:
        from tokenizers import Tokenizer

        root = Path(path)
        tok_file = root / "tokenizer.json"
        if not tok_file.is_file():
            raise TokenizerError(f"{root}: no tokenizer.json; pass a Hugging Face tokenizer directory or a .model file")
        config = _read_config(root / "tokenizer_config.json")
        self.kind, self.path = "hf", str(root.resolve())
        try:
            self._tok = Tokenizer.from_file(str(tok_file))
        except Exception as err:  # the Rust library raises a bare Exception for every parse error
            raise TokenizerError(f"{tok_file}: not a valid tokenizer.json ({err}); restore the file from the "
                                 "model's repository") from err
        self._vocab_files = (tok_file,)
        self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)
        specials = {k: _token_content(config.get(k)) for k in ("bos_token", "eos_token", "pad_token", "unk_token")}
        self._template_vars = {k: v for k, v in specials.items() if v is not None}
        self.eos_id = self.token_id(specials["eos_token"]) if specials["eos_token"] else None
        self.pad_id = self.token_id(specials["pad_token"]) if specials["pad_token"] else None
        self.chat_template, self.chat_template_source = self._find_template(root, config, chat_format)

    @staticmethod
    def _find_template(root: Path, config: dict, chat_format: str | None) -> tuple[str | None, str]:
        if chat_format is not None:
            return CHAT_FORMATS[chat_format], chat_format
        jinja_file = root / "chat_template.jinja"
        if jinja_file.is_file():
            try:
                return jinja_file.read_text(encoding="utf-8"), jinja_file.name
            except UnicodeDecodeError as err:
                raise TokenizerError(f"{jinja_file}: not UTF-8 text ({err}); restore the file") from err
        template = config.get("chat_template")
        if isinstance(template, list):  # named templates: [{"name": "default", "template": ...}, ...]
            template = {t.get("name"): t.get("template") for t in template}.get("default")
        return (template, "tokenizer_config.json") if isinstance(template, str) else (None, "none")

    def encode_batch(self, texts: Sequence[str], cuts: Sequence[Sequence[int]] | None = None) -> list[Encoded]:
        encodings = self._tok.encode_batch(list(texts), add_special_tokens=False)
        out = []
        for i, enc in enumerate(encodings):
            ids = np.asarray(enc.ids, dtype=np.int64)
            doc_cuts = tuple(self._cut(enc, c, len(texts[i]), ids.size) for c in cuts[i]) if cuts else ()
            out.append(Encoded(ids, doc_cuts))
        return out

    @staticmethod
    def _cut(enc, char: int, text_len: int, n: int) -> int:
        """First token starting at or after ``char``: O(1) Python work per cut instead of converting all offsets."""
        if char >= text_len:
            return n
        t = enc.char_to_token(char)
        if t is None:  # the character produced no token (normalizer dropped it): fall back to all start offsets
            starts = np.fromiter((o[0] for o in enc.offsets), dtype=np.int64, count=n)
            return int(np.searchsorted(starts, char, side="left"))
        return t if enc.token_to_chars(t)[0] >= char else t + 1

    def decode(self, ids: Sequence[int]) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=False)

    def token_id(self, text: str) -> int | None:
        ids = self._tok.encode(text, add_special_tokens=False).ids
        return ids[0] if len(ids) == 1 else None


class SentencePieceTokenizer(ChatTokenizer):
    """A SentencePiece ``.model``; chat turns are rendered by a named format since the model carries no template."""

    def __init__(self, path: str | os.PathLike, *, chat_format: str | None = None) -> None:
        import sentencepiece

        model = Path(path)
        if chat_format is None:
            raise TokenizerError(f"{model}: a SentencePiece model has no chat template; pass --chat-format chatml")
        self.kind, self.path = "sentencepiece", str(model.resolve())
        try:
            self._sp = sentencepiece.SentencePieceProcessor(model_file=str(model))
        except (OSError, RuntimeError) as err:
            raise TokenizerError(f"{model}: not a valid SentencePiece model ({err}); restore the file") from err
        self._vocab_files = (model,)
        self.vocab_size = self._sp.get_piece_size()
        self.eos_id = self._sp.eos_id() if self._sp.eos_id() >= 0 else None
        self.pad_id = self._sp.pad_id() if self._sp.pad_id() >= 0 else None
        self.chat_template, self.chat_template_source = CHAT_FORMATS[chat_format], chat_format
        self._template_vars = {}

    def encode_batch(self, texts: Sequence[str], cuts: Sequence[Sequence[int]] | None = None) -> list[Encoded]:
        out = []
        for i, (ids, starts) in enumerate(self._encode_with_starts(list(texts))):
            # SentencePiece has no char_to_token: search the [n] start offsets for each cut (two per document).
            doc_cuts = tuple(int(c) for c in np.searchsorted(starts, cuts[i], side="left")) if cuts else ()
            out.append(Encoded(ids, doc_cuts))
        return out

    def _encode_with_starts(self, texts: list[str]) -> list[tuple[np.ndarray, np.ndarray]]:
        """[(ids [n], char start offsets [n])] via ``return_type="offset_mapping"`` (sentencepiece >= 0.2.1)."""
        results = self._sp.encode(texts, return_type="offset_mapping")
        return [(np.asarray(r["ids"], dtype=np.int64),
                 np.fromiter((o[0] for o in r["offsets"]), dtype=np.int64, count=len(r["ids"]))) for r in results]

    def decode(self, ids: Sequence[int]) -> str:
        return self._sp.decode([int(i) for i in ids])

    def token_id(self, text: str) -> int | None:
        pid = self._sp.piece_to_id(text)
        return pid if self._sp.id_to_piece(pid) == text and pid != self._sp.unk_id() else None


def load_tokenizer(path: str | os.PathLike, *, chat_format: str | None = None) -> ChatTokenizer:
    """Load a HF tokenizer directory or a SentencePiece ``.model``; ``chat_format`` overrides the chat template."""
    p = Path(path)
    if chat_format is not None and chat_format not in CHAT_FORMATS:
        raise TokenizerError(f"unknown chat format {chat_format!r}: expected one of {sorted(CHAT_FORMATS)}")
    if p.is_dir():
        return HFTokenizer(p, chat_format=chat_format)
    if p.is_file() and p.suffix == ".model":
        return SentencePieceTokenizer(p, chat_format=chat_format)
    if p.is_file() and p.name == "tokenizer.json":
        return HFTokenizer(p.parent, chat_format=chat_format)
    raise TokenizerError(f"{p}: not found or not a tokenizer; pass a HF tokenizer directory or a SentencePiece .model")
