"""Fixtures for the evaluation tests: one tiny random Qwen3 (real tokenizer) per session."""

from __future__ import annotations

import pytest

from evaluation.tiny_qwen3 import save_tiny_qwen3


@pytest.fixture(scope="session")
def tiny_qwen3_dir(qwen3_tokenizer_dir, tmp_path_factory):
    return save_tiny_qwen3(tmp_path_factory.mktemp("tiny_qwen3"), qwen3_tokenizer_dir)


@pytest.fixture(scope="session")
def eval_dir(shared_data):
    return shared_data / "eval"
