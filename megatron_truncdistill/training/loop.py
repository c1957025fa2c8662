"""A built distillation run and its step loop: ``train`` runs steps, validates, saves and stops on request.

``training.assembly.build_training_run`` builds a ``TrainingRun``; this module only runs it. A step whose loss
terms or gradient norm are not finite is never applied (``training.step``); ``train.non_finite`` decides whether
the run then stops (``NonFiniteStepError``, one line naming the step and the term) or skips that update.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist
import yaml
from megatron.core.distributed import DistributedDataParallel
from megatron.core.optimizer import MegatronOptimizer
from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

from megatron_truncdistill.checkpoint.model_checkpoint import ModelMeta, model_meta_files
from megatron_truncdistill.checkpoint.train_state import load_training_checkpoint, save_training_checkpoint
from megatron_truncdistill.config import Config
from megatron_truncdistill.data.loader import StepBatches
from megatron_truncdistill.errors import ConfigError, UserError
from megatron_truncdistill.flops import device_peak_tflops
from megatron_truncdistill.losses import STAT_NAMES
from megatron_truncdistill.parallel import ParallelContext, destroy_parallel
from megatron_truncdistill.runtime import device_check_active
from megatron_truncdistill.training.colocated import ColocatedStage
from megatron_truncdistill.training.metrics import MetricsLogger, step_record
from megatron_truncdistill.training.step import MicroBatching, forward_backward, sum_step_stats, train_step


class NonFiniteStepError(UserError):
    """A step's loss term or gradient norm was NaN/Inf and ``train.non_finite`` is "stop"."""


@dataclass
class TrainingRun:
    """Everything one rank holds for a run, and where the run stands (``step``, ``consumed_samples``)."""

    config: Config
    ctx: ParallelContext
    stage: ColocatedStage
    ddp: list[DistributedDataParallel]
    optimizer: MegatronOptimizer
    scheduler: OptimizerParamScheduler
    train_batches: StepBatches
    valid_batches: StepBatches | None
    forward_step: Callable
    batching: MicroBatching
    flops_per_step: dict[str, float]
    student_meta: ModelMeta
    logger: MetricsLogger
    step: int = 0
    consumed_samples: int = 0

    def start(self) -> None:
        """Say what the run is about to do and where it writes, write the resolved config, then resume if asked."""
        if dist.get_rank() == 0:
            run_dir = Path(self.config.logging.run_dir)
            run_dir.mkdir(parents=True, exist_ok=True)
            resolved = dict(self.config.to_dict(), resolved={"seq_length": self.batching.seq_length})
            (run_dir / "config.yaml").write_text(yaml.safe_dump(resolved, sort_keys=False))
        if self.config.checkpoint.load:
            try:
                point = load_training_checkpoint(self.config.checkpoint.load, ddp_chunks=self.ddp,
                                                 optimizer=self.optimizer, scheduler=self.scheduler, ctx=self.ctx)
            except FileNotFoundError as err:
                raise ConfigError(f"checkpoint.load: {err}") from None
            self.step, self.consumed_samples = point.step, point.consumed_samples
        if dist.get_rank() == 0:
            print(self._plan_line(Path(self.config.logging.run_dir)), flush=True)

    def _plan_line(self, run_dir: Path) -> str:
        c = self.ctx
        checked = " under the CPU device check (host and device tensors told apart)" if device_check_active() else ""
        return (f"[train] steps {self.step + 1}..{self.config.train.train_steps}, {dist.get_world_size()} ranks "
                f"(TP{c.tp_size} PP{c.pp_size} DP{c.dp_size}) on {c.device}{checked}; metrics and config in "
                f"{run_dir}, checkpoints in {self.checkpoint_root}")

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
            if stop.agreed(self.ctx.device):
                self.save()
                return dict(record, stopped_early=True)
            if self._due(self.config.checkpoint.save_interval) and self.step < total:
                self.save()
        self.save()
        return record

    def _due(self, interval: int) -> bool:
        return interval > 0 and self.step % interval == 0

    def _train_one_step(self) -> dict:
        batches = self.train_batches.step(self.consumed_samples)  # host batches; forward_step moves each
        start = time.perf_counter()
        stats = train_step(self.stage, self.ddp, self.optimizer, self.scheduler,
                           forward_step_func=self.forward_step, data_iterator=iter(batches),
                           batching=self.batching, stat_names=STAT_NAMES, ctx=self.ctx)
        elapsed = time.perf_counter() - start
        self.step += 1
        self.consumed_samples += self.config.train.global_batch_size
        peak = device_peak_tflops(torch.cuda.get_device_name()) if torch.cuda.is_available() else None
        record = step_record(stats, step=self.step, step_time_s=elapsed, flops_per_step=self.flops_per_step,
                             world_size=dist.get_world_size(), peak_tflops=peak)
        record["input_tokens"] = self._global_input_tokens(batches)
        if stats["non_finite"] is not None and self.config.train.non_finite == "stop":
            self.logger.log(record, total_steps=self.config.train.train_steps)
            raise NonFiniteStepError(self._non_finite_message(stats))
        return record

    def _non_finite_message(self, stats: dict) -> str:
        term = stats["non_finite"]
        return (f"step {self.step}: {term} is {stats[term]} (non-finite); stopped before the optimizer applied it "
                f"and nothing of this step was saved (lower optimizer.lr, check distill.temperature and the "
                f"initial weights, or set train.non_finite=skip to drop such steps and go on)")

    def _global_input_tokens(self, batches) -> int:
        """Non-padding tokens fed to the models this step, over data-parallel ranks (all TP/PP ranks agree)."""
        count = torch.tensor([float(sum(b.real_tokens for b in batches))], dtype=torch.float64,
                             device=self.ctx.device)
        dist.all_reduce(count, group=self.ctx.dp_group)
        return int(count.item())  # this is a CPU-GPU sync point

    def validate(self) -> float:
        """Mean objective over ``train.eval_batches`` global batches of the validation split (no grad)."""
        totals = {"loss_sum": 0.0, "num_tokens": 0.0}
        gbs = self.config.train.global_batch_size
        for i in range(self.config.train.eval_batches):
            outputs = forward_backward(self.stage, forward_step_func=self.forward_step,
                                       data_iterator=iter(self.valid_batches.step(i * gbs)), batching=self.batching,
                                       ctx=self.ctx, forward_only=True)
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
