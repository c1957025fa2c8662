"""A tiny megatron-core GPT language model trained through the project's step, for layout-equivalence tests.

Everything a rank needs is here so a test can run ``train_tiny_gpt`` on any TP×PP×DP grid of forked gloo ranks.
"""

from __future__ import annotations


import torch
from megatron.core.distributed import finalize_model_grads
from megatron.core.models.gpt import GPTModel
from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
from megatron.core.transformer import TransformerConfig

from megatron_truncdistill.config import OptimizerConfig
from megatron_truncdistill.checkpoint.dist_io import load_sharded, save_sharded
from megatron_truncdistill.checkpoint.train_state import load_training_checkpoint, save_training_checkpoint
from megatron_truncdistill.parallel import destroy_parallel, initialize_parallel
from megatron_truncdistill.training.optimizer import build_optimizer, wrap_student_ddp
from megatron_truncdistill.training.step import MicroBatching, train_step

VOCAB, SEQ, HIDDEN, LAYERS = 256, 32, 64, 4
GLOBAL_BATCH, MICRO_BATCH = 8, 2


def tiny_config(tp: int, pp: int, *, dropout: float = 0.0) -> TransformerConfig:
    return TransformerConfig(
        num_layers=LAYERS, hidden_size=HIDDEN, num_attention_heads=4, use_cpu_initialization=True,
        tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp, pipeline_dtype=torch.float32,
        hidden_dropout=dropout, attention_dropout=dropout, calculate_per_token_loss=True,
        gradient_accumulation_fusion=False, bias_dropout_fusion=False, masked_softmax_fusion=False,
        apply_rope_fusion=False, bias_activation_fusion=False, persist_layer_norm=False)


def tiny_model(config: TransformerConfig, ctx) -> GPTModel:
    return GPTModel(config=config, transformer_layer_spec=get_gpt_layer_local_spec(), vocab_size=VOCAB,
                    max_sequence_length=SEQ, pre_process=ctx.is_first_stage, post_process=ctx.is_last_stage)


def save_initial_weights(directory: str) -> None:
    """Rank function (world 1): build at TP1/PP1 and save, so every layout starts from identical weights."""
    ctx = initialize_parallel(1, 1, seed=11)
    model = tiny_model(tiny_config(1, 1), ctx)
    save_sharded({"model": model.sharded_state_dict()}, directory)
    destroy_parallel()


def _step_batches(step: int, ctx) -> list[torch.Tensor]:
    """This DP rank's micro-batches of the global batch of ``step`` (the same global batch on every layout)."""
    gen = torch.Generator().manual_seed(1000 + step)
    start = torch.randint(0, VOCAB, (GLOBAL_BATCH, 1), generator=gen)
    stride = torch.randint(1, 4, (GLOBAL_BATCH, 1), generator=gen)
    tokens = (start + stride * torch.arange(SEQ + 1)) % VOCAB  # [B, s+1] learnable arithmetic progressions
    per_rank = GLOBAL_BATCH // ctx.dp_size
    mine = tokens[ctx.dp_rank * per_rank:(ctx.dp_rank + 1) * per_rank]
    return list(mine.split(MICRO_BATCH))  # each [b, s+1]


def _loss_func(loss_per_token: torch.Tensor):
    total = loss_per_token.float().sum()
    count = torch.tensor(loss_per_token.numel(), dtype=torch.int)
    return total, count, {"loss_sum": total.detach(), "tokens": count.float()}


def _forward_step(data_iterator, model):
    tokens = next(data_iterator)  # [b, s+1]
    position_ids = torch.arange(SEQ).unsqueeze(0).expand(tokens.shape[0], -1)
    output = model(tokens[:, :-1], position_ids, None, labels=tokens[:, 1:])  # last stage: loss [b, s]
    return output, _loss_func


def train_tiny_gpt(tp: int, pp: int, *, init_dir: str, steps: range, distributed_optimizer: bool = False,
                   dropout: float = 0.0, resume_dir: str | None = None, save_dir: str | None = None) -> dict:
    """Rank function: load (or resume), train ``steps``, optionally save.

    Returns ``losses`` (per-step mean loss) and ``adam_steps`` (each parameter's Adam step count and whether any
    two parameters share one step tensor, the megatron-core load bug the optimizer module works around).
    """
    ctx = initialize_parallel(tp, pp, seed=5)
    config = tiny_config(tp, pp, dropout=dropout)
    model = tiny_model(config, ctx)
    model.load_state_dict(load_sharded({"model": model.sharded_state_dict()}, init_dir)["model"])
    ddp = wrap_student_ddp([model], transformer_config=config, use_distributed_optimizer=distributed_optimizer)
    config.no_sync_func, config.finalize_model_grads_func = ddp[0].no_sync, finalize_model_grads  # megatron's own
    settings = OptimizerConfig(lr=1e-3, warmup_fraction=0.25, use_distributed_optimizer=distributed_optimizer)
    optimizer, scheduler = build_optimizer(ddp, settings, train_steps=8, params_dtype=torch.float32)
    if resume_dir:
        point = load_training_checkpoint(resume_dir, ddp_chunks=ddp, optimizer=optimizer, scheduler=scheduler,
                                         ctx=ctx)
        assert point.step == steps.start, (point, steps)
    batching = MicroBatching(GLOBAL_BATCH // ctx.dp_size // MICRO_BATCH, MICRO_BATCH, SEQ)
    losses = []
    for step in steps:
        stats = train_step(ddp[0], ddp, optimizer, scheduler, forward_step_func=_forward_step,
                           data_iterator=iter(_step_batches(step, ctx)), batching=batching,
                           stat_names=("loss_sum", "tokens"), ctx=ctx)
        losses.append(stats["loss_sum"] / stats["tokens"])
    if save_dir:
        save_training_checkpoint(save_dir, step=steps.stop, consumed_samples=steps.stop * GLOBAL_BATCH,
                                 ddp_chunks=ddp, optimizer=optimizer, scheduler=scheduler, ctx=ctx)
    adam_states = [st for inner in getattr(optimizer, "chained_optimizers", [optimizer])
                   for st in inner.optimizer.state.values() if "step" in st]
    adam_steps = sorted({float(st["step"]) for st in adam_states})
    shared = len({id(st["step"]) for st in adam_states}) < len(adam_states)
    destroy_parallel()
    return {"losses": losses, "adam_steps": adam_steps, "steps_shared": shared}
