"""megatron-core forward of converted tiny Qwen3/Qwen2/Llama models equals transformers' logits at every layout.

fp32 throughout; the bound is relative to the largest logit (1e-5, observed ~5e-7). PP runs megatron-core's own
forward-only pipeline schedule (activations sent stage to stage over gloo p2p).
"""

import numpy as np
import pytest

import mcore_jobs
from gloo_ranks import run_gloo_ranks
from tiny_hf import TINY_MODELS, reference_logits, sample_tokens, tiny_checkpoints

NAMES = list(TINY_MODELS)


def _assert_close(actual: np.ndarray, expected: np.ndarray, what: str) -> None:
    assert actual.shape == expected.shape, what
    rel = np.abs(actual - expected).max() / np.abs(expected).max()
    assert rel < 1e-5, f"{what}: relative max error {rel:.2e}"


@pytest.mark.parametrize("tp,pp", [(1, 1), (2, 1), (1, 2), (2, 2)], ids=["tp1", "tp2", "pp2", "tp2pp2"])
def test_logits_match_transformers(tp, pp):
    ckpts = [str(tiny_checkpoints()[name][1]) for name in NAMES]
    results = run_gloo_ranks(mcore_jobs.forward_logits, tp * pp, ckpts, sample_tokens(), tp, pp, timeout=120)
    (logits,) = [r for r in results if r is not None]  # the last stage's TP rank 0
    for name, got in zip(NAMES, logits):
        _assert_close(got, reference_logits(name), f"{name} at TP{tp}×PP{pp}")


def test_larger_padded_vocab_changes_nothing():
    """Teacher and student share one padded size: extra zero rows load and leave the real logits unchanged."""
    ckpt = str(tiny_checkpoints()["qwen3"][1])
    results = run_gloo_ranks(mcore_jobs.forward_logits, 2, [ckpt], sample_tokens(), 2, 1, 1024, timeout=120)
    _assert_close(results[0][0], reference_logits("qwen3"), "qwen3 padded to 1024 rows at TP2")


def test_llama3_rope_scaling_matches_transformers():
    """megatron's scaled inverse frequencies equal transformers' (short test sequences barely probe them)."""
    hf_dir, ckpt = tiny_checkpoints()["llama31"]
    (mcore_freqs,) = run_gloo_ranks(mcore_jobs.rope_inv_freq, 1, str(ckpt), timeout=60)
    from transformers import AutoModelForCausalLM

    hf_freqs = AutoModelForCausalLM.from_pretrained(hf_dir).model.rotary_emb.inv_freq.numpy()
    plain = 1.0 / 500000.0 ** (np.arange(0, 16, 2) / 16)
    assert not np.allclose(hf_freqs, plain), "the test model must actually scale some frequencies"
    np.testing.assert_allclose(mcore_freqs, hf_freqs, rtol=1e-6)
