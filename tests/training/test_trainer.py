"""The distillation trainer end to end on CPU ranks: layout equivalence, frozen teacher, the loss function's mask,
resume, signals, metrics, bf16."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from distill_setup import read_metrics as _metrics
from distill_setup import train_losses as _train
from distill_setup import trainer_config as _config
from gloo_ranks import run_gloo_ranks
from megatron_truncdistill.train import run_training

REPO = Path(__file__).resolve().parents[2]


def test_tp2pp2_and_dp2_reproduce_tp1_losses(tiny, tmp_path):
    reference = _train(_config(tiny, tmp_path / "tp1"), 1)
    assert len(reference) == 3
    tp2pp2 = _train(_config(tiny, tmp_path / "tp2pp2", "parallel.tensor_model_parallel_size=2",
                            "parallel.pipeline_model_parallel_size=2"), 4)
    dp2 = _train(_config(tiny, tmp_path / "dp2"), 2)
    np.testing.assert_allclose(tp2pp2, reference, rtol=1e-5)
    np.testing.assert_allclose(dp2, reference, rtol=1e-5)


def _frozen_teacher_and_learning_student(config):
    """Rank function: train, then report teacher/student parameter changes and gradient state."""
    from megatron_truncdistill.train import _StopFlag
    from megatron_truncdistill.training.assembly import build_training_run

    run = build_training_run(config)
    teacher = run.stage.teacher
    student = run.ddp[0].module
    before_t = {k: v.detach().clone() for k, v in teacher.state_dict().items() if isinstance(v, torch.Tensor)}
    before_s = {k: v.detach().clone() for k, v in student.named_parameters()}
    run.train(_StopFlag())
    report = {
        "teacher_identical": all(torch.equal(before_t[k], v) for k, v in teacher.state_dict().items() if k in before_t),
        "teacher_grads": [n for n, p in teacher.named_parameters() if p.grad is not None or p.requires_grad],
        "teacher_training_mode": teacher.training,
        "teacher_in_optimizer": any(p is q for g in run.optimizer.param_groups for p in g["params"]
                                    for q in teacher.parameters()),
        "student_changed": sum(not torch.equal(before_s[n], p) for n, p in student.named_parameters()),
        "student_params": len(before_s),
    }
    run.close()
    return report


def test_teacher_frozen_student_learns(tiny, tmp_path):
    config = _config(tiny, tmp_path / "run", "train.train_steps=12", "optimizer.warmup_fraction=0.0", "optimizer.lr=5e-3")
    report = run_gloo_ranks(_frozen_teacher_and_learning_student, 1, config, timeout=240)[0]
    assert report["teacher_identical"] and report["teacher_grads"] == []
    assert report["teacher_training_mode"] is False and report["teacher_in_optimizer"] is False
    assert report["student_changed"] == report["student_params"]
    losses = [r["loss"] for r in _metrics(tmp_path / "run")]
    assert np.mean(losses[-3:]) < 0.9 * np.mean(losses[:3]), losses


def _hidden_grads_by_section(config):
    """Rank function: one micro-batch through the trainer's own forward step and the loss function it hands to
    megatron-core; |d loss / d student final hidden state| per position, grouped by the label's section."""
    from megatron_truncdistill.sections import NO_SECTION
    from megatron_truncdistill.sections import Section
    from megatron_truncdistill.training.assembly import build_training_run

    run = build_training_run(config)
    batch = run.train_batches.step(0)[0]
    (student_hidden, teacher_hidden), loss_func = run.forward_step(iter([batch]), run.stage)
    leaf = student_hidden.detach().requires_grad_(True)  # [s, b, h]
    loss_sum, num_tokens, stats = loss_func((leaf, teacher_hidden))
    loss_sum.backward()
    per_token = leaf.grad.abs().sum(-1).transpose(0, 1)  # [s, b, h] -> [b, s]
    out = {s.name: float(per_token[batch.sections == s].max()) for s in Section}
    out["PAD"] = float(per_token[batch.sections == NO_SECTION].max())
    out.update(num_tokens=int(num_tokens), mask_tokens=int(batch.loss_mask.sum()),
               kd_sums=[float(stats[f"section_kd_sum_{s.name.lower()}"]) for s in Section])
    run.close()
    return out


@pytest.mark.parametrize("fused", [False, True], ids=["logits", "fused"])
def test_trainers_loss_function_passes_the_loss_mask_through(tiny, tmp_path, fused):
    config = _config(tiny, tmp_path / "run", "distill.loss_sections=[COT]", f"distill.fused={fused}")
    grads = run_gloo_ranks(_hidden_grads_by_section, 1, config, timeout=120)[0]
    assert grads["PROMPT"] == 0.0 and grads["ANSWER"] == 0.0 and grads["PAD"] == 0.0, grads
    assert grads["COT"] > 0.0
    assert grads["num_tokens"] == grads["mask_tokens"] > 0
    assert all(v > 0 for v in grads["kd_sums"]), "per-section KD is still reported for every section"


def _launch(config_args, run_dir, *, log):
    cmd = [sys.executable, "-m", "megatron_truncdistill.train", *config_args, f"logging.run_dir={run_dir}"]
    return subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def _wait_for_step(run_dir, step, proc, timeout=180):
    deadline = time.monotonic() + timeout
    path = Path(run_dir) / "metrics.jsonl"
    while time.monotonic() < deadline:
        if path.is_file() and any(json.loads(l).get("step", 0) >= step for l in path.read_text().splitlines()):
            return
        if proc.poll() is not None:
            raise AssertionError(f"trainer exited with {proc.returncode} before step {step}")
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    raise AssertionError(f"no step {step} within {timeout}s")


def _yaml_args(tiny, tmp_path, *overrides):
    config = _config(tiny, tmp_path / "unused", *overrides)  # writes a YAML next to the run dir
    return ["--config", str(tmp_path / "unused.yaml"), f"student.load={tiny['student']}",
            f"teacher.load={tiny['teacher']}", *overrides], config


@pytest.mark.slow
def test_sigkill_then_resume_matches_uninterrupted(tiny, tmp_path):
    overrides = ("train.train_steps=6", "checkpoint.save_interval=2")
    args, config = _yaml_args(tiny, tmp_path, *overrides)
    uninterrupted = _train(_config(tiny, tmp_path / "full", *overrides), 1)
    killed_dir = tmp_path / "killed"
    with open(tmp_path / "killed.log", "w") as log:
        proc = _launch(args, killed_dir, log=log)
        _wait_for_step(killed_dir, 3, proc)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    latest = (killed_dir / "checkpoints" / "latest").read_text().strip()
    resumed_dir = tmp_path / "resumed"
    resume = _config(tiny, resumed_dir, *overrides, f"checkpoint.load={killed_dir / 'checkpoints'}",
                     f"checkpoint.save={resumed_dir / 'checkpoints'}")
    run_gloo_ranks(run_training, 1, resume, timeout=240)
    resumed = {r["step"]: r["loss"] for r in _metrics(resumed_dir)}
    first_resumed = int(latest.split("_")[1]) + 1
    assert sorted(resumed) == list(range(first_resumed, 7))
    np.testing.assert_allclose([resumed[s] for s in sorted(resumed)], uninterrupted[first_resumed - 1:], rtol=1e-5)


@pytest.mark.slow
def test_sigterm_saves_and_exits_zero(tiny, tmp_path):
    args, _ = _yaml_args(tiny, tmp_path, "train.train_steps=500")
    run_dir = tmp_path / "term"
    with open(tmp_path / "term.log", "w") as log:
        proc = _launch(args, run_dir, log=log)
        _wait_for_step(run_dir, 2, proc)
        os.killpg(proc.pid, signal.SIGTERM)
        code = proc.wait(timeout=120)
    assert code == 0, (tmp_path / "term.log").read_text()[-2000:]
    last_step = max(r["step"] for r in _metrics(run_dir))
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == f"iter_{last_step:07d}"
    assert not list((run_dir / "checkpoints").glob("*.partial"))


METRIC_KEYS = {"step", "loss", "kd_loss", "ce_loss", "kd_prompt", "kd_cot", "kd_answer", "lr", "grad_norm", "tokens",
               "input_tokens", "tokens_per_s", "step_time_s", "tflops_per_device", "tflops_student",
               "tflops_teacher", "mfu", "peak_mem_bytes", "skipped", "non_finite"}


def test_metrics_validation_tensorboard_and_resolved_config(tiny, tmp_path):
    config = _config(tiny, tmp_path / "run", "train.train_steps=4", "train.eval_interval=2", "train.eval_batches=1",
                     "data.valid_fraction=0.1", "logging.tensorboard=true")
    run_gloo_ranks(run_training, 1, config, timeout=240)
    records = _metrics(tmp_path / "run")
    steps = [r for r in records if "loss" in r]
    assert [r["step"] for r in steps] == [1, 2, 3, 4] and set(steps[0]) == METRIC_KEYS
    assert steps[0]["mfu"] is None and steps[0]["tflops_teacher"] > 0 and steps[0]["kd_cot"] > 0
    valid = [r for r in records if "valid_loss" in r]
    assert [r["step"] for r in valid] == [2, 4] and all(0 < r["valid_loss"] < 10 for r in valid)
    assert list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))
    resolved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert resolved["train"]["eval_interval"] == 2 and resolved["resolved"]["seq_length"] > 0
