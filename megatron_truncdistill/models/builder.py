"""The one function that builds a pipeline stage of a Qwen3/Qwen2/Llama GPTModel (teacher and student alike)."""

from __future__ import annotations

import torch
from megatron.core.models.gpt import GPTModel

from megatron_truncdistill.layout import check_attention_heads, check_layers
from megatron_truncdistill.models.hf_config import ModelArchitecture
from megatron_truncdistill.models.layer_spec import gpt_layer_spec, resolve_use_te
from megatron_truncdistill.models.transformer_config import BuildOptions, transformer_config
from megatron_truncdistill.parallel import ParallelContext


def padded_vocab_size(vocab_size: int, tp_size: int, divisible_by: int = 128) -> int:
    """Round ``vocab_size`` up to a multiple of ``divisible_by × tp_size`` (megatron's convention).

    Each TP rank then holds an equal, GEMM-friendly slice of the embedding and output layer. Padded rows are
    never predicted: the loss masks logits at ids ≥ the real vocabulary.
    """
    multiple = divisible_by * tp_size
    return -(-vocab_size // multiple) * multiple


def build_gpt_model(arch: ModelArchitecture, ctx: ParallelContext, *, padded_vocab_size: int,
                    options: BuildOptions = BuildOptions(), model: str = "model") -> GPTModel:
    """This rank's stage of ``arch``: layers of pipeline stage ``ctx.pp_rank``, TP-sharded over ``ctx.tp_group``.

    The first stage holds the embedding, the last the final norm and the output layer (a separate copy of the
    embedding when the weights are tied and PP > 1, kept equal by megatron-core). Logits come out vocab-parallel,
    ``[b, s, padded_vocab_size / tp]``; columns ≥ the real vocabulary must be masked by the loss.
    megatron-core reads the stage's layer offset from its parallel state, which ``ctx`` describes. ``model``
    names the model ("student", "teacher") in layout errors. The model is returned on ``ctx.device`` (on GPUs
    megatron-core already allocates it there; on CPU initialization it is moved).
    """
    if padded_vocab_size % ctx.tp_size:
        raise ValueError(f"padded vocabulary size {padded_vocab_size} is not divisible by "
                         f"tensor_model_parallel_size={ctx.tp_size}")
    use_te = resolve_use_te(options.use_te, fp8=options.fp8 is not None)
    check_attention_heads(ctx.tp_size, heads=arch.num_attention_heads, kv_heads=arch.num_query_groups, model=model)
    check_layers(ctx.pp_size, num_layers=arch.num_layers, model=model)
    config = transformer_config(arch, options, tp_size=ctx.tp_size, pp_size=ctx.pp_size, use_te=use_te,
                                device=ctx.device)
    gpt = GPTModel(
        config=config,
        transformer_layer_spec=gpt_layer_spec(arch, use_te=use_te),
        vocab_size=padded_vocab_size,
        max_sequence_length=arch.max_position_embeddings,
        pre_process=ctx.is_first_stage,
        post_process=ctx.is_last_stage,
        parallel_output=True,
        share_embeddings_and_output_weights=arch.tie_word_embeddings,
        position_embedding_type="rope",
        rotary_base=arch.rope_theta,
        rope_scaling=arch.rope_scaling_factor is not None,
        rope_scaling_factor=arch.rope_scaling_factor or 8.0,  # unused when rope_scaling is False
    )
    _params_to_dtype(gpt, options.torch_dtype)
    return gpt.to(ctx.device)


def _params_to_dtype(model: GPTModel, dtype: torch.dtype) -> None:
    """Give every parameter the model dtype, as HF checkpoints and Transformer Engine layers have it.

    The local spec's ``torch.nn.RMSNorm`` ignores ``params_dtype`` and keeps fp32 weights in a bf16 model;
    megatron-core's mixed-precision optimizer then cannot checkpoint them (its sharded state dict maps only the
    float16 parameters: "Param id N does not match any model sharded param"). Buffers (RoPE frequencies) stay.
    """
    for param in model.parameters():
        if param.dtype != dtype:
            param.data = param.data.to(dtype)
