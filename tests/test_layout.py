"""Each divisibility rule of the parallel layout: one place, one message naming the option (``layout``)."""

from __future__ import annotations

import pytest

from megatron_truncdistill.errors import ConfigError
from megatron_truncdistill.layout import check_attention_heads, check_batch_sizes, check_layers, data_parallel_size


def test_data_parallel_size():
    assert data_parallel_size(8, tp=2, pp=2) == 2
    with pytest.raises(ConfigError, match=r"world size 6 is not divisible by .* = 2 × 2; launch a multiple of 4"):
        data_parallel_size(6, tp=2, pp=2)


def test_tensor_parallel_must_divide_heads_and_kv_heads():
    check_attention_heads(8, heads=32, kv_heads=8, model="teacher")
    with pytest.raises(ConfigError, match=r"tensor_model_parallel_size=16 must divide the teacher's attention "
                                          r"heads \(32\) and KV heads \(8\)"):
        check_attention_heads(16, heads=32, kv_heads=8, model="teacher")


def test_pipeline_parallel_must_divide_layers():
    check_layers(4, num_layers=36, model="student")
    with pytest.raises(ConfigError, match=r"pipeline_model_parallel_size=5 must divide the student's num_layers \(36\)"):
        check_layers(5, num_layers=36, model="student")


def test_batch_sizes():
    check_batch_sizes(global_batch=16, micro_batch=2, dp=4)
    with pytest.raises(ConfigError, match=r"global_batch_size=16 is not divisible by .* = 3 × 1"):
        check_batch_sizes(global_batch=16, micro_batch=3)
    with pytest.raises(ConfigError, match=r"= 2 × 3"):
        check_batch_sizes(global_batch=16, micro_batch=2, dp=3)
