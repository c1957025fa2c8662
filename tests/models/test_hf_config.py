"""HF config parsing, vocabulary padding and build-option refusals (single process, no torch.distributed)."""

import pytest
import torch

from megatron_truncdistill.models.builder import padded_vocab_size
from megatron_truncdistill.models.hf_config import architecture_from_hf
from megatron_truncdistill.models.layer_spec import resolve_use_te, transformer_engine_available
from megatron_truncdistill.models.transformer_config import BuildOptions, transformer_config
from tiny_hf import tiny_config

# The released Qwen3-8B config.json, as written by transformers 4.x (rope_theta at top level).
QWEN3_8B = {
    "architectures": ["Qwen3ForCausalLM"], "attention_bias": False, "head_dim": 128, "hidden_act": "silu",
    "hidden_size": 4096, "intermediate_size": 12288, "max_position_embeddings": 40960, "model_type": "qwen3",
    "num_attention_heads": 32, "num_hidden_layers": 36, "num_key_value_heads": 8, "rms_norm_eps": 1e-06,
    "rope_scaling": None, "rope_theta": 1000000, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
    "use_sliding_window": False, "vocab_size": 151936,
}


def test_qwen3_8b_release_config():
    arch = architecture_from_hf(QWEN3_8B)
    assert (arch.num_layers, arch.hidden_size, arch.ffn_hidden_size) == (36, 4096, 12288)
    assert (arch.num_attention_heads, arch.num_query_groups, arch.head_dim, arch.queries_per_group) == (32, 8, 128, 4)
    assert arch.qk_layernorm and not arch.qkv_bias and not arch.tie_word_embeddings
    assert arch.rope_theta == 1e6 and arch.rope_scaling_factor is None


@pytest.mark.parametrize("family,qk_norm,qkv_bias", [("qwen3", True, False), ("qwen2", False, True),
                                                     ("llama", False, False)])
def test_transformers5_configs(family, qk_norm, qkv_bias):
    arch = architecture_from_hf(tiny_config(family, tied=True).to_dict())
    assert (arch.qk_layernorm, arch.qkv_bias, arch.tie_word_embeddings) == (qk_norm, qkv_bias, True)
    assert arch.head_dim == (32 if family == "qwen3" else 16)


def test_llama31_rope_scaling_in_both_config_flavours():
    new = tiny_config("llama", tied=False).to_dict()  # transformers 5: rope_parameters
    old = {k: v for k, v in new.items() if k != "rope_parameters"}
    old.update(rope_theta=500000.0, rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                                   "high_freq_factor": 4.0, "original_max_position_embeddings": 8192})
    for config in (new, old):
        arch = architecture_from_hf(config)
        assert (arch.rope_theta, arch.rope_scaling_factor) == (500000.0, 8.0)


@pytest.mark.parametrize("change,named", [
    ({"model_type": "mistral", "architectures": ["MistralForCausalLM"]}, "MistralForCausalLM"),
    ({"hidden_act": "gelu"}, "hidden_act"),
    ({"use_sliding_window": True}, "use_sliding_window"),
    ({"attention_bias": True}, "attention_bias"),
    ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "rope_type='yarn'"),
    ({"rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 2.0}}, "low_freq_factor"),
    ({"num_key_value_heads": 5}, "num_key_value_heads=5"),
])
def test_unsupported_options_are_named(change, named):
    with pytest.raises(ValueError, match=named):
        architecture_from_hf({**QWEN3_8B, **change})


def test_padded_vocab_size():
    assert padded_vocab_size(151936, 1) == 151936  # Qwen3-8B rows are already a multiple of 128
    assert padded_vocab_size(151936, 2) == 152064  # = Qwen3-4B's row count: one padded size for both
    assert padded_vocab_size(151669, 4) == 152064  # the tokenizer's real vocabulary


def test_config_math_options():
    config = transformer_config(architecture_from_hf(QWEN3_8B), BuildOptions(params_dtype="bfloat16",
                                recompute="full"), tp_size=2, pp_size=2, use_te=False)
    assert config.normalization == "RMSNorm" and config.gated_linear_unit and not config.add_bias_linear
    assert config.kv_channels == 128 and config.num_query_groups == 8 and config.qk_layernorm
    assert config.bf16 and config.pipeline_dtype == torch.bfloat16 and config.recompute_granularity == "full"


@pytest.mark.skipif(transformer_engine_available(), reason="checks the refusal when TE is absent")
def test_fp8_without_transformer_engine_is_refused():
    with pytest.raises(ValueError, match="FP8 was requested but transformer_engine is not installed"):
        resolve_use_te(None, fp8=True)
    assert resolve_use_te(None, fp8=False) is False
