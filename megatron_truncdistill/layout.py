"""The parallel layout's divisibility rules: each checked in one place, with one message naming the option.

Config validation, the model builder, megatron's group set-up and the data loader all call these, so an
impossible layout gets the same message wherever it is caught first (ideally at start-up, before any rank
allocates anything).
"""

from __future__ import annotations

from megatron_truncdistill.errors import ConfigError


def data_parallel_size(world_size: int, *, tp: int, pp: int) -> int:
    """DP = world / (TP × PP); the world must be a multiple of the model-parallel grid."""
    if world_size % (tp * pp):
        raise ConfigError(f"parallel: world size {world_size} is not divisible by tensor_model_parallel_size × "
                          f"pipeline_model_parallel_size = {tp} × {pp}; launch a multiple of {tp * pp} processes")
    return world_size // (tp * pp)


def check_attention_heads(tp: int, *, heads: int, kv_heads: int, model: str) -> None:
    """Each TP rank holds whole query groups: TP must divide the attention heads and the KV heads."""
    if heads % tp or kv_heads % tp:
        raise ConfigError(f"parallel.tensor_model_parallel_size={tp} must divide the {model}'s attention heads "
                          f"({heads}) and KV heads ({kv_heads})")


def check_layers(pp: int, *, num_layers: int, model: str) -> None:
    """Pipeline stages hold equal numbers of layers: PP must divide the layer count."""
    if num_layers % pp:
        raise ConfigError(f"parallel.pipeline_model_parallel_size={pp} must divide the {model}'s num_layers "
                          f"({num_layers})")


def check_batch_sizes(*, global_batch: int, micro_batch: int, dp: int = 1) -> None:
    """A step is a whole number of micro-batches on every data-parallel rank."""
    if global_batch % (micro_batch * dp):
        raise ConfigError(f"train.global_batch_size={global_batch} is not divisible by train.micro_batch_size × "
                          f"data-parallel size = {micro_batch} × {dp}")
