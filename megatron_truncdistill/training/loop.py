"""The distillation run: everything built once (``TrainingRun.create``), then the step loop (``train``)."""

from __future__ import annotations

import dataclasses
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
import yaml

from megatron_truncdistill.checkpoint.train_state import load_training_checkpoint, save_training_checkpoint
from megatron_truncdistill.config import Config, KDObjectiveFields
from megatron_truncdistill.convert.model_checkpoint import ModelMeta, load_model_checkpoint, model_meta_files
from megatron_truncdistill.data.bins import open_bins
from megatron_truncdistill.data.loader import GlobalSampleOrder, StepBatches, build_sources
from megatron_truncdistill.flops import DecoderShape, device_peak_tflops, training_flops
from megatron_truncdistill.losses import STAT_NAMES, KDObjectiveConfig
from megatron_truncdistill.parallel import ParallelContext, destroy_parallel, initialize_parallel
from megatron_truncdistill.runtime import enable_cpu_runtime
from megatron_truncdistill.sections import parse_sections
from megatron_truncdistill.tokenization import load_tokenizer
from megatron_truncdistill.training import validation
from megatron_truncdistill.training.colocated import ColocatedStage
from megatron_truncdistill.training.metrics import MetricsLogger, step_record
from megatron_truncdistill.training.objective_step import ObjectiveSetup, make_forward_step
from megatron_truncdistill.training.optimizer import (
    build_optimizer, install_grad_finalizer, wrap_student_ddp)
from megatron_truncdistill.training.setup import DTYPES, build_stage, plan_model, shared_padded_vocab
from megatron_truncdistill.training.step import MicroBatching, forward_backward, sum_step_stats, train_step

SEQ_MULTIPLE = 16  # automatic seq_length rounds the longest document up to this


@dataclass
class TrainingRun:
    config: Config
    ctx: ParallelContext
    stage: ColocatedStage
    ddp: list
    optimizer: object
    scheduler: object
    train_batches: StepBatches
    valid_batches: StepBatches | None
    forward_step: object
    batching: MicroBatching
    hidden_size: int
    flops_per_step: dict
    student_meta: ModelMeta
    logger: MetricsLogger
    step: int = 0
    consumed_samples: int = 0

    @classmethod
    def create(cls, config: Config) -> "TrainingRun":
        enable_cpu_runtime()
        tokenizer = load_tokenizer(config.data.tokenizer)
        plans = [plan_model(config.student, "student")]
        if config.teacher is not None:
            plans.append(plan_model(config.teacher, "teacher"))
        validation.check_machine(config)
        validation.check_layout(config, plans, world_size=dist.get_world_size())
        validation.check_vocabularies(plans, tokenizer)
        par = config.parallel
        ctx = initialize_parallel(par.tensor_model_parallel_size, par.pipeline_model_parallel_size,
                                  seed=config.train.seed)
        return cls._assemble(config, ctx, tokenizer, plans)

    @classmethod
    def _assemble(cls, config: Config, ctx: ParallelContext, tokenizer, plans: list) -> "TrainingRun":
        bins = [open_bins(p, tokenizer=tokenizer) for p in config.data.prefixes]
        seq_length = config.data.seq_length or _auto_seq_length(bins)
        padded = shared_padded_vocab(tokenizer.vocab_size, ctx.tp_size)
        student, teacher = _build_models(config, plans, ctx, padded=padded, real_vocab=tokenizer.vocab_size)
        ddp = wrap_student_ddp([student], transformer_config=student.config,
                               use_distributed_optimizer=config.optimizer.use_distributed_optimizer)
        install_grad_finalizer(student.config, ddp)
        optimizer, scheduler = build_optimizer(ddp, config.optimizer, train_steps=config.train.train_steps,
                                               params_dtype=DTYPES[config.student.params_dtype])
        train_batches, valid_batches = _data(config, bins, ctx, seq_length=seq_length)
        setup = ObjectiveSetup(config=_objective_config(config), tp_group=ctx.tp_group,
                               vocab_size=tokenizer.vocab_size, fused=config.distill.fused,
                               sequence_parallel=config.parallel.sequence_parallel)
        hidden = plans[0].arch.hidden_size + (plans[1].arch.hidden_size if teacher is not None else 0)
        meta = ModelMeta(hf_config=plans[0].hf_config, vocab_size=tokenizer.vocab_size, padded_vocab_size=padded,
                         params_dtype=config.student.params_dtype, tokenizer=tokenizer.identity())
        stage = ColocatedStage(ddp[0], teacher, is_last_stage=ctx.is_last_stage,
                               packed_thd=config.data.packing and validation.uses_transformer_engine(config))
        run = cls(config=config, ctx=ctx, stage=stage,
                  ddp=ddp, optimizer=optimizer, scheduler=scheduler, train_batches=train_batches,
                  valid_batches=valid_batches, forward_step=make_forward_step(setup),
                  batching=MicroBatching(train_batches.num_microbatches, config.train.micro_batch_size, seq_length),
                  hidden_size=hidden, flops_per_step=_flops_per_step(config, plans, seq_length, padded),
                  student_meta=meta, logger=MetricsLogger(config.logging.run_dir, enabled=dist.get_rank() == 0,
                                                          tensorboard=config.logging.tensorboard))
        run._start()
        return run

    def _start(self) -> None:
        """Write the resolved config, then resume if asked."""
        if dist.get_rank() == 0:
            run_dir = Path(self.config.logging.run_dir)
            run_dir.mkdir(parents=True, exist_ok=True)
            resolved = dict(self.config.to_dict(), resolved={"seq_length": self.batching.seq_length})
            (run_dir / "config.yaml").write_text(yaml.safe_dump(resolved, sort_keys=False))
        if self.config.checkpoint.load:
            point = load_training_checkpoint(self.config.checkpoint.load, ddp_chunks=self.ddp,
                                             optimizer=self.optimizer, scheduler=self.scheduler, ctx=self.ctx)
            self.step, self.consumed_samples = point.step, point.consumed_samples

    @property
    def checkpoint_root(self) -> Path:
        return Path(self.config.checkpoint.save or Path(self.config.logging.run_dir) / "checkpoints")

    def train(self, stop) -> dict:
        total = self.config.train.train_steps
        record = {}
        while self.step < total:
            record = self._train_one_step()
            self.logger.log(record, total_steps=total)
            if self._due(self.config.train.eval_interval) and self.valid_batches is not None:
                self.logger.log({"step": self.step, "valid_loss": self.validate()})
            if stop.agreed():
                self.save()
                return dict(record, stopped_early=True)
            if self._due(self.config.checkpoint.save_interval) and self.step < total:
                self.save()
        self.save()
        return record

    def _due(self, interval: int) -> bool:
        return interval > 0 and self.step % interval == 0

    def _train_one_step(self) -> dict:
        batches = self.train_batches.step(self.consumed_samples)
        start = time.perf_counter()
        stats = train_step([self.stage], self.ddp, self.optimizer, self.scheduler,
                           forward_step_func=self.forward_step, data_iterator=iter(batches),
                           batching=self.batching, hidden_size=self.hidden_size, stat_names=STAT_NAMES, ctx=self.ctx)
        elapsed = time.perf_counter() - start
        self.step += 1
        self.consumed_samples += self.config.train.global_batch_size
        peak = device_peak_tflops(torch.cuda.get_device_name()) if torch.cuda.is_available() else None
        record = step_record(stats, step=self.step, step_time_s=elapsed, flops_per_step=self.flops_per_step,
                             world_size=dist.get_world_size(), peak_tflops=peak)
        record["input_tokens"] = self._global_input_tokens(batches)
        return record

    def _global_input_tokens(self, batches) -> int:
        """Non-padding tokens fed to the models this step, over data-parallel ranks (all TP/PP ranks agree)."""
        count = torch.tensor([float(sum(b.real_tokens for b in batches))], dtype=torch.float64)
        dist.all_reduce(count, group=self.ctx.dp_group)
        return int(count.item())

    def validate(self) -> float:
        """Mean objective over ``train.eval_batches`` global batches of the validation split (no grad)."""
        totals = {"loss_sum": 0.0, "num_tokens": 0.0}
        gbs = self.config.train.global_batch_size
        for i in range(self.config.train.eval_batches):
            outputs = forward_backward([self.stage], forward_step_func=self.forward_step,
                                       data_iterator=iter(self.valid_batches.step(i * gbs)), batching=self.batching,
                                       hidden_size=self.hidden_size, forward_only=True)
            stats = sum_step_stats(outputs, ("loss_sum", "num_tokens"), self.ctx)
            totals = {k: totals[k] + stats[k] for k in totals}
        return totals["loss_sum"] / max(totals["num_tokens"], 1.0)

    def save(self) -> Path:
        return save_training_checkpoint(self.checkpoint_root, step=self.step, consumed_samples=self.consumed_samples,
                                        ddp_chunks=self.ddp, optimizer=self.optimizer, scheduler=self.scheduler,
                                        ctx=self.ctx, extra_files=model_meta_files(self.student_meta))

    def close(self) -> None:
        self.logger.close()
        destroy_parallel()


def _auto_seq_length(bins: list) -> int:
    longest = max(int(b.document_lengths.max()) for b in bins if len(b))
    return -(-longest // SEQ_MULTIPLE) * SEQ_MULTIPLE


def _build_models(config: Config, plans: list, ctx: ParallelContext, *, padded: int, real_vocab: int):
    sp = config.parallel.sequence_parallel
    student = build_stage(config.student, plans[0], ctx, padded_vocab=padded, sequence_parallel=sp)
    student.config.calculate_per_token_loss = True  # loss = Σ tokens; grads divided by the global token count
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


def _data(config: Config, bins: list, ctx: ParallelContext, *, seq_length: int):
    d, t = config.data, config.train
    sections = parse_sections(config.distill.loss_sections)

    def batches(split: str):
        sources = build_sources(bins, split=split, valid_fraction=d.valid_fraction, seq_length=seq_length,
                                packing=d.packing)
        order = GlobalSampleOrder(sources, weights=d.weights, seed=t.seed + (0 if split == "train" else 1),
                                  blend_size=sum(len(s.plans) for s in sources))
        return StepBatches(order, global_batch=t.global_batch_size, micro_batch=t.micro_batch_size,
                           dp_rank=ctx.dp_rank, dp_size=ctx.dp_size, seq_length=seq_length, loss_sections=sections,
                           packing=d.packing)

    train = batches("train")
    valid = None
    if t.eval_interval > 0 and d.valid_fraction > 0:
        valid = batches("valid")
    return train, valid


def _objective_config(config: Config) -> KDObjectiveConfig:
    fields = {f.name: getattr(config.distill, f.name) for f in dataclasses.fields(KDObjectiveFields)}
    if config.teacher is None:
        fields["kd_weight"] = 0.0
    return KDObjectiveConfig(**fields, inplace_backward=True)  # the loss owns the logits it is given


def _flops_per_step(config: Config, plans: list, seq_length: int, padded: int) -> dict:
    shapes = [DecoderShape.from_hf(dict(p.hf_config, vocab_size=padded)) for p in plans]
    per_sequence = training_flops(shapes[0], shapes[1] if len(shapes) > 1 else None, seq_length,
                                  recompute=config.student.recompute == "full")
    return {k: v * config.train.global_batch_size for k, v in per_sequence.items()}
