"""Start-up checks that need more than the config: models, tokenizer, bins and the machine. Each names its key."""

from __future__ import annotations

import torch

from megatron_truncdistill.config import Config, ModelConfig
from megatron_truncdistill.errors import ConfigError
from megatron_truncdistill.layout import check_attention_heads, check_batch_sizes, check_layers, data_parallel_size
from megatron_truncdistill.models.layer_spec import resolve_use_te, transformer_engine_available


def uses_transformer_engine(model: ModelConfig) -> bool:
    """Whether this model's layers will be Transformer Engine's (decides how it takes packed documents)."""
    return resolve_use_te(model.use_te, fp8=model.fp8 is not None)


def thd_models(config: Config) -> list[str]:
    """The models that take packed documents as THD sequences (packing with Transformer Engine layers)."""
    models = {"student": config.student, "teacher": config.teacher}
    return [k for k, m in models.items() if m is not None and config.data.packing and uses_transformer_engine(m)]


def check_layout(config: Config, plans: list, *, world_size: int) -> None:
    """TP must divide heads and KV heads, PP the layer counts of both models, TP×PP the world size (``layout``)."""
    tp = config.parallel.tensor_model_parallel_size
    pp = config.parallel.pipeline_model_parallel_size
    dp = data_parallel_size(world_size, tp=tp, pp=pp)
    for plan in plans:
        check_attention_heads(tp, heads=plan.arch.num_attention_heads, kv_heads=plan.arch.num_query_groups,
                              model=plan.key)
        check_layers(pp, num_layers=plan.arch.num_layers, model=plan.key)
    t = config.train
    thd = thd_models(config)
    if thd and t.micro_batch_size != 1:
        raise ConfigError(f"train.micro_batch_size={t.micro_batch_size}: packed documents go to Transformer Engine "
                          f"({' and '.join(thd)}) as one THD sequence per micro-batch; use micro_batch_size=1 with "
                          "data.packing")
    check_batch_sizes(global_batch=t.global_batch_size, micro_batch=t.micro_batch_size, dp=dp)


def check_machine(config: Config) -> None:
    """Options this machine cannot run: sequence parallel on CPU, FP8 without TE or without FP8 tensor cores."""
    on_gpu = torch.cuda.is_available()
    if config.parallel.sequence_parallel and not on_gpu:
        raise ConfigError("parallel.sequence_parallel: needs GPUs with Transformer Engine or apex (the local layer "
                          "spec's norms cannot run sequence-parallel); turn it off on CPU")
    for key in ("student", "teacher"):
        model = getattr(config, key)
        if model is None or model.fp8 is None:
            continue
        if not transformer_engine_available():
            raise ConfigError(f"{key}.fp8={model.fp8}: FP8 runs through Transformer Engine, which is not installed "
                              "(use the NGC PyTorch container or pip install 'megatron-truncdistill[gpu]')")
        if not on_gpu or torch.cuda.get_device_capability() < (8, 9):
            raise ConfigError(f"{key}.fp8={model.fp8}: this device has no FP8 tensor cores (needs compute "
                              "capability ≥ 8.9: Ada, Hopper or newer)")


def check_vocabularies(plans: list, tokenizer) -> None:
    """Both models must embed every tokenizer id, and checkpoints must come from the data's tokenizer."""
    ident = tokenizer.identity()
    for plan in plans:
        if plan.arch.vocab_size < tokenizer.vocab_size:
            raise ConfigError(f"{plan.key}: the model has {plan.arch.vocab_size} vocabulary rows but the tokenizer "
                              f"{tokenizer.path} has {tokenizer.vocab_size} ids")
        made = getattr(plan.meta, "tokenizer", None) if plan.meta is not None else None
        if made and made.get("files_sha256") != ident["files_sha256"]:
            raise ConfigError(f"{plan.key}.load: checkpoint was made with tokenizer {made.get('path')} (vocab "
                              f"{made.get('vocab_size')}) but data.tokenizer is {tokenizer.path} (vocab "
                              f"{tokenizer.vocab_size}); teacher, student and data must share one tokenizer")
