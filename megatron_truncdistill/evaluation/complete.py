"""``evaluate.py complete``: one completion of one prompt, for a quick look at an export or a run checkpoint.

The same path as ``generate`` (chat template with thinking enabled, the model's stop tokens, a checkpoint
exported on the fly, the transformers backend on an explicit device), without a benchmark or a cache.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from megatron_truncdistill.evaluation.backends import Sampling, TransformersBackend, resolve_device
from megatron_truncdistill.evaluation.benchmarks import Problem
from megatron_truncdistill.evaluation.export import hf_model_dir
from megatron_truncdistill.evaluation.generate import log, render_prompts, stop_token_ids
from megatron_truncdistill.errors import UserError


def complete(model: str | Path, prompt: str, *, sampling: Sampling, tokenizer: str | None = None,
             device: str | None = None, dtype: str = "auto") -> str:
    """The model's answer to ``prompt`` as the user turn (special tokens such as ``<think>`` kept visible)."""
    from transformers import AutoTokenizer

    sampling.validate()
    if not Path(model).exists():
        raise UserError(f"--model {model}: not found (a HF model directory or a checkpoint)")
    with tempfile.TemporaryDirectory(prefix="truncdistill_complete_") as scratch, \
            hf_model_dir(model, tokenizer=tokenizer, scratch=Path(scratch), log=log) as model_dir:
        tok = AutoTokenizer.from_pretrained(Path(tokenizer) if tokenizer else model_dir)
        ids = render_prompts(tok, [Problem("prompt", "--prompt", 0, prompt, None)], "{problem}")
        stop_ids = stop_token_ids(model_dir, tok)
        backend = TransformersBackend(model_dir, device=resolve_device(device), dtype=dtype, batch_size=1)
        pad_id = tok.pad_token_id if tok.pad_token_id is not None else min(stop_ids)
        (sample,), = backend.sample(ids, sampling, stop_ids=stop_ids, pad_id=pad_id, seed=sampling.seed)
        return tok.decode(sample.token_ids, skip_special_tokens=False)
