"""Per-step metrics: ``metrics.jsonl`` (one JSON object per step), TensorBoard scalars and a console line."""

from __future__ import annotations

import json
import math
import resource
import sys
from pathlib import Path

import torch

from megatron_truncdistill.sections import Section


def peak_memory_bytes() -> int:
    """Peak device memory on GPU; peak resident set size of this process on CPU."""
    if torch.cuda.is_available():
        return int(torch.cuda.max_memory_allocated())
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # Linux reports KiB


def _ratio(num: float, den: float) -> float | None:
    return num / den if den else None


def step_record(stats: dict[str, float], *, step: int, step_time_s: float, flops_per_step: dict[str, float],
                world_size: int, peak_tflops: float | None) -> dict:
    """Turn a step's summed statistics into the logged record (means over loss tokens; per-section KD means)."""
    tokens = stats["num_tokens"]
    total_flops = flops_per_step["student"] + flops_per_step["teacher"]
    tflops_per_device = total_flops / step_time_s / world_size / 1e12
    record = {
        "step": step,
        "loss": _ratio(stats["loss_sum"], tokens),
        "kd_loss": _ratio(stats["kd_sum"], tokens),
        "ce_loss": _ratio(stats["ce_sum"], tokens),
        **{f"kd_{s.name.lower()}": _ratio(stats[f"section_kd_sum_{s.name.lower()}"],
                                          stats[f"section_tokens_{s.name.lower()}"]) for s in Section},
        "lr": stats["lr"],
        "grad_norm": stats["grad_norm"],
        "tokens": int(tokens),
        "tokens_per_s": tokens / step_time_s,
        "step_time_s": step_time_s,
        "tflops_per_device": tflops_per_device,
        "tflops_student": flops_per_step["student"] / step_time_s / world_size / 1e12,
        "tflops_teacher": flops_per_step["teacher"] / step_time_s / world_size / 1e12,
        "mfu": tflops_per_device / peak_tflops if peak_tflops else None,
        "peak_mem_bytes": peak_memory_bytes(),
        "skipped": bool(stats["skipped"]),
        "non_finite": stats["non_finite"],
    }
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in record.items()}


class MetricsLogger:
    """Writes on one rank only (the caller passes ``enabled``); every other rank's logger does nothing."""

    def __init__(self, run_dir: str | Path, *, enabled: bool, tensorboard: bool, log_interval: int = 1) -> None:
        """``log_interval``: steps between console lines and TensorBoard points (metrics.jsonl gets every step)."""
        self.enabled = enabled
        self.log_interval = log_interval
        self._jsonl = None
        self._tb = None
        if not enabled:
            return
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        self._jsonl = open(run_dir / "metrics.jsonl", "a", buffering=1)
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(run_dir / "tensorboard"))

    def log(self, record: dict, *, total_steps: int | None = None) -> None:
        if not self.enabled:
            return
        self._jsonl.write(json.dumps(record) + "\n")
        step = record["step"]
        is_last = total_steps is not None and step >= total_steps
        if "valid_loss" not in record and step % self.log_interval and not is_last:
            return
        if self._tb is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
                    self._tb.add_scalar(f"train/{key}" if not key.startswith("valid") else key, value, step)
        print(_console_line(record, total_steps), file=sys.stdout, flush=True)

    def close(self) -> None:
        if self._jsonl is not None:
            self._jsonl.close()
        if self._tb is not None:
            self._tb.close()


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _console_line(r: dict, total_steps: int | None) -> str:
    if "valid_loss" in r:
        return f"step {r['step']:>6} | valid loss {_fmt(r['valid_loss'], '.4f')}"
    eta = ""
    if total_steps and r.get("step_time_s"):
        eta = f" | ETA {max(total_steps - r['step'], 0) * r['step_time_s']:.0f}s"
    skipped = f" | SKIPPED (non-finite {r['non_finite']})" if r.get("skipped") and r.get("non_finite") else ""
    return (f"step {r['step']:>6}{'/' + str(total_steps) if total_steps else ''}{skipped} "
            f"| loss {_fmt(r['loss'], '.4f')} "
            f"| kd {_fmt(r['kd_loss'], '.4f')} | ce {_fmt(r['ce_loss'], '.4f')} | kd cot {_fmt(r['kd_cot'], '.4f')} "
            f"| lr {r['lr']:.2e} | gnorm {_fmt(r['grad_norm'], '.3f')} | {r['tokens_per_s']:.0f} tok/s "
            f"| {r['step_time_s']:.2f}s/step | {r['tflops_per_device']:.3f} TFLOP/s/dev | mem "
            f"{r['peak_mem_bytes'] / 2**30:.2f} GiB{eta}")
