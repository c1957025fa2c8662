"""``PREFIX.manifest.json``: what was made, from what, with which tokenizer; read back by the trainer.

The trainer calls ``load_manifest(prefix)`` and ``check_tokenizer(manifest, tokenizer)`` before training so data made
with another tokenizer is refused instead of silently producing garbage ids. Field reference: README.md here.
"""

from __future__ import annotations

import json
import platform
import socket
import subprocess
from pathlib import Path

from megatron_truncdistill.sections import SECTION_NAMES
from megatron_truncdistill.tokenization import ChatTokenizer

MANIFEST_VERSION = 1


def manifest_path(prefix: str | Path) -> Path:
    """``PREFIX.manifest.json``; a path that already names a manifest is returned unchanged."""
    prefix = str(prefix)
    return Path(prefix if prefix.endswith(".manifest.json") else f"{prefix}.manifest.json")


def load_manifest(prefix: str | Path) -> dict:
    """Read a manifest; raises FileNotFoundError/ValueError with a message naming the file."""
    path = manifest_path(prefix)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no manifest; the data was not made by tools/preprocess.py or the run "
                                "did not finish (rerun it)")
    manifest = json.loads(path.read_text(encoding="utf-8"))
    if manifest.get("version") != MANIFEST_VERSION:
        raise ValueError(f"{path}: manifest version {manifest.get('version')}, expected {MANIFEST_VERSION}")
    return manifest


def tokenizer_identity(tok: ChatTokenizer) -> dict:
    """Identity stored in the manifest and compared by ``check_tokenizer`` (see ChatTokenizer.identity)."""
    return tok.identity()


def check_tokenizer(manifest: dict, tok: ChatTokenizer) -> None:
    """Raise ValueError when ``tok`` would map ids differently from the tokenizer the data was made with."""
    made, have = manifest["tokenizer"], tokenizer_identity(tok)
    for key in ("files_sha256", "vocab_size"):
        if made[key] != have[key]:
            raise ValueError(f"data was tokenized with {made['path']} ({key}={made[key]}) but the tokenizer is "
                             f"{have['path']} ({key}={have[key]}); preprocess again with this tokenizer")


def _histogram(buckets) -> list[dict]:
    """Counter of bit lengths → rows ``{"min", "max_exclusive", "count"}``: power-of-two length buckets."""
    return [{"min": 0 if b == 0 else 1 << (b - 1), "max_exclusive": 1 << b, "count": buckets[b]}
            for b in sorted(buckets)]


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).parent)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def counts_section(stats) -> dict:
    """Counts and token totals of a run (``stats``: document.Stats)."""
    return {
        "counts": {"read": stats.read, "written": stats.written, "rejected": sum(stats.rejected.values()),
                   "rejected_by_reason": dict(sorted(stats.rejected.items()))},
        "tokens_before_truncation": dict(zip(SECTION_NAMES, stats.tokens_before.tolist())),
        "tokens_after_truncation": dict(zip(SECTION_NAMES, stats.tokens_after.tolist())),
        "length_histogram": {"source": _histogram(stats.source_lengths),
                             "written": _histogram(stats.written_lengths)},
    }


def build_manifest(*, inputs: list[dict], tok: ChatTokenizer, settings: dict, stats, wall_s: float,
                   workers: int, token_dtype: str) -> dict:
    """Assemble the manifest; ``settings`` holds the layout, record spec, policy and filters as JSON."""
    total_tokens = int(stats.tokens_before.sum())
    return {
        "version": MANIFEST_VERSION,
        "inputs": inputs,
        "tokenizer": tokenizer_identity(tok),
        "token_dtype": token_dtype,
        "section_codes": {name: code for code, name in enumerate(SECTION_NAMES)},
        **settings,
        **counts_section(stats),
        "run": {"wall_s": round(wall_s, 3), "workers": workers, "docs_per_s": round(stats.read / wall_s, 2),
                "tokens_per_s": round(total_tokens / wall_s, 1), "host": socket.gethostname(),
                "platform": platform.platform(), "git_commit": _git_commit()},
    }
