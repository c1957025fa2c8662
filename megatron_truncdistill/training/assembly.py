"""Build a training run from its config, in one place: check, plan, initialize parallelism, build, wire.

``build_training_run(config)`` reads top to bottom as what a run is made of. Every refusal names the config key
to change (``training.validation`` holds the checks that need models, tokenizer or machine; ``layout`` the
divisibility rules); all of them run before the first parameter is allocated.
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch.distributed as dist
from megatron.core.models.gpt import GPTModel

from megatron_truncdistill.checkpoint.model_checkpoint import (
    ModelMeta, load_model_checkpoint, read_model_meta)
from megatron_truncdistill.config import Config, KDObjectiveFields, ModelConfig
from megatron_truncdistill.data.bins import SectionedBins, open_bins
from megatron_truncdistill.data.loader import GlobalSampleOrder, StepBatches, build_sources
from megatron_truncdistill.data.samples import AttentionInput
from megatron_truncdistill.errors import ConfigError
from megatron_truncdistill.flops import DecoderShape, training_flops
from megatron_truncdistill.losses import KDObjectiveConfig
from megatron_truncdistill.mcore_compat import check_megatron_core_version
from megatron_truncdistill.models.builder import build_gpt_model, padded_vocab_size
from megatron_truncdistill.models.hf_config import ModelArchitecture, architecture_from_hf
from megatron_truncdistill.models.transformer_config import BuildOptions
from megatron_truncdistill.parallel import ParallelContext, initialize_parallel
from megatron_truncdistill.runtime import enable_cpu_runtime
from megatron_truncdistill.sections import parse_sections
from megatron_truncdistill.tokenization import ChatTokenizer, load_tokenizer
from megatron_truncdistill.training import validation
from megatron_truncdistill.training.colocated import ColocatedStage, attention_input
from megatron_truncdistill.training.forward_step import ObjectiveSetup, make_forward_step
from megatron_truncdistill.training.loop import TrainingRun
from megatron_truncdistill.training.metrics import MetricsLogger
from megatron_truncdistill.training.optimizer import build_optimizer, wrap_student_ddp
from megatron_truncdistill.training.step import MicroBatching

SEQ_MULTIPLE = 16  # automatic seq_length rounds the longest document up to this


@dataclass(frozen=True)
class ModelPlan:
    """One model's resolved architecture and the checkpoint metadata it comes with (if loaded)."""

    key: str  # "student" or "teacher": the config section, for error messages
    hf_config: dict
    arch: ModelArchitecture
    meta: ModelMeta | None  # of ``load``


def build_training_run(config: Config) -> TrainingRun:
    """Collective: check everything, then build the run and resume it if ``checkpoint.load`` says so."""
    check_megatron_core_version()
    enable_cpu_runtime()
    tokenizer = _user_input(load_tokenizer, config.data.tokenizer, key="data.tokenizer")
    plans = [plan_model(config.student, "student")]
    if config.teacher is not None:
        plans.append(plan_model(config.teacher, "teacher"))
    validation.check_machine(config)
    validation.check_layout(config, plans, world_size=dist.get_world_size())
    validation.check_vocabularies(plans, tokenizer)
    par = config.parallel
    ctx = initialize_parallel(par.tensor_model_parallel_size, par.pipeline_model_parallel_size,
                              seed=config.train.seed)
    bins = [_user_input(open_bins, p, tokenizer=tokenizer) for p in config.data.prefixes]
    seq_length = config.data.seq_length or _auto_seq_length(bins)
    padded = padded_vocab_size(tokenizer.vocab_size, ctx.tp_size)  # one padded size for both models
    student, teacher = _build_models(config, plans, ctx, padded=padded, real_vocab=tokenizer.vocab_size)
    ddp = wrap_student_ddp([student], transformer_config=student.config,
                           use_distributed_optimizer=config.optimizer.use_distributed_optimizer)
    optimizer, scheduler = build_optimizer(ddp, config.optimizer, train_steps=config.train.train_steps,
                                           params_dtype=student.config.params_dtype)
    stage = ColocatedStage(ddp[0], teacher, is_last_stage=ctx.is_last_stage, **_attention_inputs(config))
    train_batches, valid_batches = _batches(config, bins, ctx, seq_length=seq_length,
                                            cu_seqlens=AttentionInput.THD in stage.attention_inputs)
    setup = ObjectiveSetup(config=objective_config(config), tp_group=ctx.tp_group, vocab_size=tokenizer.vocab_size,
                           fused=config.distill.fused, sequence_parallel=config.parallel.sequence_parallel)
    run = TrainingRun(
        config=config, ctx=ctx, stage=stage, ddp=ddp, optimizer=optimizer, scheduler=scheduler,
        train_batches=train_batches, valid_batches=valid_batches,
        forward_step=make_forward_step(setup, device=ctx.device),
        batching=MicroBatching(train_batches.num_microbatches, config.train.micro_batch_size, seq_length),
        flops_per_step=_flops_per_step(config, plans, seq_length, padded),
        student_meta=_student_meta(config, plans[0], tokenizer, padded),
        logger=MetricsLogger(config.logging.run_dir, enabled=dist.get_rank() == 0,
                             tensorboard=config.logging.tensorboard, log_interval=config.logging.log_interval))
    run.start()
    return run


def _user_input(load, *args, key: str | None = None, **kwargs):
    """``load(*args)``; a missing or malformed input file is the user's to fix (``ConfigError``)."""
    try:
        return load(*args, **kwargs)
    except (FileNotFoundError, ValueError) as err:
        message = str(err)
        raise ConfigError(message if key is None or message.startswith(key) else f"{key}: {message}") from None


def _attention_inputs(config: Config) -> dict[str, AttentionInput | None]:
    """How each model takes packed documents, decided per model from its own layer implementation."""
    def decide(model):
        te = validation.uses_transformer_engine(model)
        return attention_input(packing=config.data.packing, transformer_engine=te)

    return {"student_attention": decide(config.student),
            "teacher_attention": decide(config.teacher) if config.teacher is not None else None}


def _hf_config(model: ModelConfig, key: str) -> dict:
    if model.hf_config is not None:
        path = Path(model.hf_config)
        path = path / "config.json" if path.is_dir() else path
        if not path.is_file():
            raise ConfigError(f"{key}.hf_config: {path} does not exist")
        return json.loads(path.read_text())
    if model.architecture is not None:
        return dict(model.architecture)
    return read_model_meta(model.load).hf_config


def plan_model(model: ModelConfig, key: str) -> ModelPlan:
    """Resolve the architecture (hf_config, inline, or the checkpoint's) and read the checkpoint's metadata."""
    meta = None
    if model.load is not None:
        try:
            meta = read_model_meta(model.load)
        except (FileNotFoundError, ValueError) as err:
            raise ConfigError(f"{key}.load: {err}") from None
    hf = _hf_config(model, key)
    try:
        arch = architecture_from_hf(hf)
    except ValueError as err:
        raise ConfigError(f"{key}.hf_config: {err}") from None
    return ModelPlan(key, hf, arch, meta)


def build_stage(model: ModelConfig, plan: ModelPlan, ctx: ParallelContext, *, padded_vocab: int,
                sequence_parallel: bool) -> GPTModel:
    """This rank's pipeline stage of one model, on ``ctx.device`` (random init only when no checkpoint will
    overwrite it). The student is built for megatron-core's per-token loss (``training.step``)."""
    options = BuildOptions.from_fields(model, sequence_parallel=sequence_parallel,
                                       perform_initialization=model.load is None,
                                       calculate_per_token_loss=plan.key == "student")
    try:
        return build_gpt_model(plan.arch, ctx, padded_vocab_size=padded_vocab, options=options, model=plan.key)
    except ValueError as err:
        raise ConfigError(f"{plan.key}: {err}") from None


def _build_models(config: Config, plans: list[ModelPlan], ctx: ParallelContext, *, padded: int,
                  real_vocab: int) -> tuple[GPTModel, GPTModel | None]:
    sp = config.parallel.sequence_parallel
    student = build_stage(config.student, plans[0], ctx, padded_vocab=padded, sequence_parallel=sp)
    if config.student.load:
        load_model_checkpoint([student], config.student.load, real_vocab_size=real_vocab)
    teacher = None
    if config.teacher is not None:
        teacher = build_stage(config.teacher, plans[1], ctx, padded_vocab=padded, sequence_parallel=sp)
        if config.teacher.load:
            load_model_checkpoint([teacher], config.teacher.load, real_vocab_size=real_vocab)
        elif dist.get_rank() == 0:
            warnings.warn("teacher.load is not set: the teacher has random weights (smoke tests only)", stacklevel=1)
    return student, teacher


def _auto_seq_length(bins: list[SectionedBins]) -> int:
    longest = max(int(b.document_lengths.max()) for b in bins if len(b))
    return -(-longest // SEQ_MULTIPLE) * SEQ_MULTIPLE


def _batches(config: Config, bins: list[SectionedBins], ctx: ParallelContext, *, seq_length: int,
             cu_seqlens: bool) -> tuple[StepBatches, StepBatches | None]:
    d, t = config.data, config.train
    sections = parse_sections(config.distill.loss_sections)

    def batches(split: str) -> StepBatches:
        sources = build_sources(bins, split=split, valid_fraction=d.valid_fraction, seq_length=seq_length,
                                packing=d.packing)
        order = GlobalSampleOrder(sources, weights=d.weights, seed=t.seed + (0 if split == "train" else 1),
                                  blend_size=sum(len(s.plans) for s in sources))
        return StepBatches(order, global_batch=t.global_batch_size, micro_batch=t.micro_batch_size,
                           dp_rank=ctx.dp_rank, dp_size=ctx.dp_size, seq_length=seq_length, loss_sections=sections,
                           packing=d.packing, cu_seqlens=cu_seqlens)

    valid = batches("valid") if t.eval_interval > 0 and d.valid_fraction > 0 else None
    return batches("train"), valid


def objective_config(config: Config) -> KDObjectiveConfig:
    """The loss's configuration: the distill section's objective fields (CE alone without a teacher)."""
    fields = {f.name: getattr(config.distill, f.name) for f in dataclasses.fields(KDObjectiveFields)}
    if config.teacher is None:
        fields["kd_weight"] = 0.0
    return KDObjectiveConfig(**fields, inplace_backward=True)  # the loss owns the logits it is given


def _student_meta(config: Config, plan: ModelPlan, tokenizer: ChatTokenizer, padded: int) -> ModelMeta:
    """What the trainer's checkpoints say about the student, so the converter can export any of them."""
    return ModelMeta(hf_config=plan.hf_config, vocab_size=tokenizer.vocab_size, padded_vocab_size=padded,
                     params_dtype=config.student.params_dtype, tokenizer=tokenizer.identity())


def _flops_per_step(config: Config, plans: list[ModelPlan], seq_length: int, padded: int) -> dict[str, float]:
    shapes = [DecoderShape.from_hf(dict(p.hf_config, vocab_size=padded)) for p in plans]
    per_sequence = training_flops(shapes[0], shapes[1] if len(shapes) > 1 else None, seq_length,
                                  recompute=config.student.recompute == "full")
    return {k: v * config.train.global_batch_size for k, v in per_sequence.items()}
