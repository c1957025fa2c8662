"""NaN/Inf is caught at the step it appears, on every rank alike; the run stops (default) or skips the update, and
no checkpoint ever holds non-finite weights."""

from __future__ import annotations

import contextlib
import io
import math

import pytest
import torch

from distill_setup import read_metrics, tiny_config, trainer_config
from gloo_ranks import run_gloo_ranks


def _main(argv):
    """Rank function: the CLI's ``main`` on this rank; (exit code, stderr)."""
    from megatron_truncdistill.train import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(argv)
    return code, err.getvalue()


def _cli_args(tiny, tmp_path, *overrides):
    trainer_config(tiny, tmp_path / "run", *overrides)  # writes run.yaml beside the run directory
    return ["--config", str(tmp_path / "run.yaml"), f"student.load={tiny['student']}",
            f"teacher.load={tiny['teacher']}", *overrides]


def _latest(run_dir) -> str:
    return (run_dir / "checkpoints" / "latest").read_text().strip()


def test_huge_lr_stops_at_the_first_nan_step_with_one_line(tiny, tmp_path):
    args = _cli_args(tiny, tmp_path, "optimizer.lr=1e6", "optimizer.warmup_fraction=0", "train.train_steps=4",
                     "checkpoint.save_interval=1")
    code, stderr = run_gloo_ranks(_main, 1, args, timeout=120)[0]
    records = read_metrics(tmp_path / "run")
    bad = next(r for r in records if r["non_finite"])
    assert code == 2 and stderr.count("\n") == 1, stderr
    assert stderr.startswith(f"error: step {bad['step']}: {bad['non_finite']} is nan (non-finite)"), stderr
    assert records[-1] is bad and bad["step"] > 1 and not any(r["non_finite"] for r in records[:-1])
    assert _latest(tmp_path / "run") == f"iter_{bad['step'] - 1:07d}", "the NaN step is never saved"
    assert not (tmp_path / "run" / "checkpoints" / f"iter_{bad['step']:07d}").exists()


def test_skip_policy_drops_the_update_and_trains_on(tiny, tmp_path):
    config = trainer_config(tiny, tmp_path / "run", "optimizer.lr=1e6", "optimizer.warmup_fraction=0",
                            "train.train_steps=4", "train.non_finite=skip")
    from megatron_truncdistill.train import run_training

    run_gloo_ranks(run_training, 1, config, timeout=120)
    records = read_metrics(tmp_path / "run")
    skipped = [r for r in records if r["skipped"]]
    assert [r["step"] for r in records] == [1, 2, 3, 4] and not records[0]["skipped"] and skipped, records
    assert all(r["non_finite"] for r in skipped) and all(math.isfinite(r["loss"]) for r in skipped[1:]), \
        "a skipped update leaves the weights as they were"
    assert _latest(tmp_path / "run") == "iter_0000004", "weights stayed finite, so the final save happens"


def _stop_message(config):
    """Rank function: the NonFiniteStepError each rank raises (ranks must agree on step and term)."""
    from megatron_truncdistill.training.loop import NonFiniteStepError
    from megatron_truncdistill.train import run_training

    try:
        run_training(config)
    except NonFiniteStepError as err:
        return str(err)
    return "no error"


def test_tiny_temperature_stops_every_pipeline_rank_at_step_one(tiny, tmp_path):
    config = trainer_config(tiny, tmp_path / "run", "distill.temperature=1e-40",
                            "parallel.pipeline_model_parallel_size=2")
    first, last = run_gloo_ranks(_stop_message, 2, config, timeout=120)
    assert first == last and first.startswith("step 1: kd_sum is nan"), (first, last)


def test_huge_init_range_stops_at_step_one(tiny, tmp_path):
    config = tiny_config(prefix=tiny["prefix"], tokenizer=tiny["tokenizer"], run_dir=str(tmp_path / "run"),
                         overrides=[f"teacher.load={tiny['teacher']}", "student.architecture.initializer_range=1e30"])
    message = run_gloo_ranks(_stop_message, 1, config, timeout=120)[0]
    assert message.startswith("step 1: ") and "non-finite" in message, message


def _save_with_a_nan_weight(config):
    """Rank function: a finite save, then one NaN weight: the save is refused and ``latest`` is untouched."""
    from megatron_truncdistill.checkpoint.train_state import NonFiniteWeightsError
    from megatron_truncdistill.training.assembly import build_training_run

    run = build_training_run(config)
    run.save()  # iter_0000000
    run.step = 1
    with torch.no_grad():
        next(run.ddp[0].module.parameters()).view(-1)[0] = math.nan
    try:
        run.save()
        message = "saved"
    except NonFiniteWeightsError as err:
        message = str(err)
    run.close()
    return message


def test_a_checkpoint_with_nan_weights_is_never_written(tiny, tmp_path):
    config = trainer_config(tiny, tmp_path / "run")
    message = run_gloo_ranks(_save_with_a_nan_weight, 1, config, timeout=120)[0]
    assert "refusing to write" in message and "1 student weights are NaN/Inf" in message, message
    assert _latest(tmp_path / "run") == "iter_0000000"
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["iter_0000000", "latest"]


def test_unknown_policy_is_refused_by_its_key(tiny, tmp_path):
    from megatron_truncdistill.errors import ConfigError

    with pytest.raises(ConfigError, match=r"train\.non_finite: 'maybe' is not one of stop, skip"):
        trainer_config(tiny, tmp_path / "run", "train.non_finite=maybe")
