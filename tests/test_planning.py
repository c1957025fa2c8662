"""The planner's FLOP formula against an independent FLOP counter, and its token predictions against real bins."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from megatron.core.datasets.indexed_dataset import IndexedDataset
from torch.utils.flop_counter import FlopCounterMode

from distill_setup import make_tiny_bins, preprocess_main
from megatron_truncdistill.flops import DecoderShape, attention_flops, dense_flops_per_token, forward_flops
from megatron_truncdistill.planning import Layout, predict, truncate_lengths

TINY = {"model_type": "qwen3", "architectures": ["Qwen3ForCausalLM"], "num_hidden_layers": 3, "hidden_size": 64,
        "intermediate_size": 96, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 24,
        "vocab_size": 200, "max_position_embeddings": 128, "rms_norm_eps": 1e-6, "rope_theta": 10000.0,
        "tie_word_embeddings": False}


def test_forward_flops_match_torch_flop_counter_on_transformers_qwen3():
    """torch's FlopCounterMode counts every matmul of a real HF Qwen3 forward (eager attention: the full s×s)."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    model = Qwen3ForCausalLM(Qwen3Config(**TINY, attn_implementation="eager")).eval()
    seq = 37
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.randint(0, 200, (1, seq)))
    shape = DecoderShape.from_hf(TINY)
    expected_full_square = seq * dense_flops_per_token(shape) + attention_flops(shape, seq, causal=False)
    assert counter.get_total_flops() == expected_full_square
    # the causal count keeps exactly the unmasked query-key pairs
    assert forward_flops(shape, seq) == expected_full_square - attention_flops(shape, seq, causal=False) + \
        attention_flops(shape, seq, causal=True)


def test_hand_count_for_a_tiny_shape():
    shape = DecoderShape(num_layers=1, hidden_size=2, ffn_hidden_size=3, num_attention_heads=1,
                         num_query_groups=1, head_dim=2, vocab_size=5)
    # qkv 2*2*2*3=24, out 2*1*2*2=8, mlp 2*3*2*3=36, logits 2*2*5=20 -> 88 per token; attention 4*1*2*(3*4/2)=48
    assert forward_flops(shape, 3) == 3 * 88 + 48


def _lengths(prefix: str) -> np.ndarray:
    dataset = IndexedDataset(prefix + "_tokens")
    return np.array(dataset.sequence_lengths, dtype=np.int64)  # copy before the memory map closes


def test_predicted_tokens_equal_the_preprocessor_output(tmp_path):
    prefix, tokenizer = make_tiny_bins(tmp_path, records=40)
    lengths = _lengths(prefix)
    main = preprocess_main()
    for lsp in ("0.5", "0.3"):
        out = str(tmp_path / f"lsp{lsp}")
        assert main(["--input", str(tmp_path / "corpus.jsonl"), "--output-prefix", out, "--tokenizer", tokenizer,
                     "--lsp", lsp, "--no-progress"]) == 0
        actual = _lengths(out)
        np.testing.assert_array_equal(truncate_lengths(lengths, float(lsp)), actual)
        rows = predict(lengths, DecoderShape.from_hf(TINY), None, Layout(), lsps=(float(lsp),))
        assert rows[0].tokens == int(actual.sum())


def test_prediction_scales_and_cli_writes_outputs(tmp_path):
    from importlib.util import module_from_spec, spec_from_file_location
    from pathlib import Path

    prefix, _ = make_tiny_bins(tmp_path, records=24)
    spec = spec_from_file_location("plan_cli", Path(__file__).resolve().parents[1] / "tools" / "plan_truncation.py")
    cli = module_from_spec(spec)
    spec.loader.exec_module(cli)
    assert cli.main(["--prefix", prefix, "--student", "qwen3-0.6b", "--teacher", "qwen3-1.7b", "--device", "h100",
                     "--global-batch-size", "8", "--output-dir", str(tmp_path / "plan")]) == 0
    rows = json.loads((tmp_path / "plan" / "plan.json").read_text())
    assert [r["lsp"] for r in rows] == pytest.approx([0.1 * i for i in range(1, 11)])
    half, full = rows[4], rows[9]
    assert 0.45 < half["student_train_flops"] / full["student_train_flops"] < 0.5  # attention is superlinear
    assert half["step_time_s"] < full["step_time_s"] and (tmp_path / "plan" / "plan.png").stat().st_size > 1000
