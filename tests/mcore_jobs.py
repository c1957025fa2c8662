"""Rank functions for run_gloo_ranks: convert, load at a TP×PP layout, forward, save, export.

Each returns numpy arrays (picklable) so the pytest process compares against transformers.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from megatron.core.pipeline_parallel import get_forward_backward_func

from megatron_truncdistill.convert.hf_to_mcore import hf_to_mcore
from megatron_truncdistill.convert.mcore_to_hf import mcore_to_hf
from megatron_truncdistill.checkpoint.model_checkpoint import load_model_checkpoint, read_model_meta, save_model_checkpoint
from megatron_truncdistill.models.builder import build_gpt_model
from megatron_truncdistill.models.transformer_config import BuildOptions
from megatron_truncdistill.parallel import destroy_parallel, initialize_parallel


def convert_all(pairs):
    """hf-to-mcore for every (hf_dir, ckpt_dir) in one world-of-one process."""
    for hf_dir, ckpt_dir in pairs:
        hf_to_mcore(hf_dir, ckpt_dir, progress=False)


def export(ckpt_dir, hf_dir):
    mcore_to_hf(ckpt_dir, hf_dir, progress=False, max_shard_bytes=64 * 1024)


def load_stage(ckpt_dir, ctx, *, padded_vocab=None):
    """Build this rank's stage from the checkpoint's meta and load its weights."""
    meta = read_model_meta(ckpt_dir)
    options = BuildOptions(params_dtype="float32", perform_initialization=False)
    model = build_gpt_model(meta.architecture, ctx, padded_vocab_size=padded_vocab or meta.padded_vocab_size,
                            options=options)
    load_model_checkpoint([model], ckpt_dir)
    return model.eval(), meta


def forward_logits(ckpt_dirs, tokens, tp, pp, padded_vocab=None):
    """Full-vocabulary logits ``[b, s, V_hf]`` of each checkpoint at TP×PP (returned by the last stage's rank 0)."""
    ctx = initialize_parallel(tp, pp)
    results = []
    for ckpt_dir in ckpt_dirs:
        model, meta = load_stage(ckpt_dir, ctx, padded_vocab=padded_vocab)
        logits = _pipeline_forward(model, torch.from_numpy(tokens))
        if logits is not None:
            gathered = [torch.empty_like(logits) for _ in range(ctx.tp_size)]
            dist.all_gather(gathered, logits.contiguous(), group=ctx.tp_group)
            full = torch.cat(gathered, dim=-1)  # [b, s, V/tp] × tp → [b, s, V_padded]
            results.append(full[..., : meta.architecture.vocab_size].numpy())
    destroy_parallel()
    return results if ctx.is_last_stage and ctx.tp_rank == 0 else None


def _pipeline_forward(model, tokens):
    """megatron-core's own forward-only schedule (p2p between stages); the last stage's vocab-parallel logits."""
    b, s = tokens.shape
    captured = []

    def loss_func(logits):
        captured.append(logits.detach())
        return logits.sum() * 0.0, {}

    def forward_step(data_iterator, model):
        batch = next(data_iterator)
        positions = torch.arange(s).unsqueeze(0).expand(b, s)  # [b, s]
        return model(batch, positions, attention_mask=None), loss_func

    with torch.no_grad():
        get_forward_backward_func()(forward_step_func=forward_step, data_iterator=iter([tokens]), model=[model],
                                    num_microbatches=1, seq_length=s, micro_batch_size=b, forward_only=True)
    return captured[0] if captured else None


def resave(ckpt_dir, out_dir, tp, pp):
    """Load at TP×PP and save again from that layout (what a trainer checkpoint looks like)."""
    ctx = initialize_parallel(tp, pp)
    model, meta = load_stage(ckpt_dir, ctx)
    save_model_checkpoint([model], out_dir, meta)
    destroy_parallel()


def rope_inv_freq(ckpt_dir):
    """The RoPE inverse frequencies megatron-core built for the checkpoint's architecture."""
    ctx = initialize_parallel(1, 1)
    model, _ = load_stage(ckpt_dir, ctx)
    destroy_parallel()
    return model.rotary_pos_emb.inv_freq.numpy()


def export_all(pairs):
    for ckpt_dir, hf_dir in pairs:
        export(ckpt_dir, hf_dir)


def resave_as_trainer(ckpt_dirs, out_dirs, tp, pp):
    """Load each checkpoint at TP×PP and save it the way the trainer does: model keys + optimizer state."""
    from megatron.core.dist_checkpointing import ShardedTensor

    from megatron_truncdistill.checkpoint.dist_io import save_sharded
    from megatron_truncdistill.checkpoint.model_checkpoint import model_meta_files, model_sharded_state_dict

    ctx = initialize_parallel(tp, pp)
    for ckpt_dir, out_dir in zip(ckpt_dirs, out_dirs):
        model, meta = load_stage(ckpt_dir, ctx)
        state = model_sharded_state_dict([model])
        moment = torch.full((4,), float(dist.get_rank()))  # stands in for Adam moments: one shard per rank
        state["optimizer"] = {"exp_avg": ShardedTensor.from_rank_offsets(
            "optimizer.exp_avg", moment, (0, dist.get_rank(), dist.get_world_size()))}
        save_sharded(state, out_dir, extra_files=model_meta_files(meta))
    destroy_parallel()


def cli(argv):
    """Run the converter CLI in this rank; returns (exit code, stderr text)."""
    import contextlib
    import io

    from megatron_truncdistill.convert.cli import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(argv)
    return code, err.getvalue()


def load_with_real_vocab(ckpt_dir, real_vocab_size):
    ctx = initialize_parallel(1, 1)
    meta = read_model_meta(ckpt_dir)
    model = build_gpt_model(meta.architecture, ctx, padded_vocab_size=1024 * 1024,
                            options=BuildOptions(perform_initialization=False))
    try:
        load_model_checkpoint([model], ckpt_dir, real_vocab_size=real_vocab_size)
    finally:
        destroy_parallel()


def load_into_other_architecture(ckpt_dir, other_ckpt_dir):
    """Build the model described by ``other_ckpt_dir`` and try to load ``ckpt_dir`` into it."""
    ctx = initialize_parallel(1, 1)
    try:
        meta = read_model_meta(other_ckpt_dir)
        model = build_gpt_model(meta.architecture, ctx, padded_vocab_size=meta.padded_vocab_size,
                                options=BuildOptions(perform_initialization=False))
        load_model_checkpoint([model], ckpt_dir)
    finally:
        destroy_parallel()
