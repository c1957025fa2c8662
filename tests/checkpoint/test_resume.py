"""Trainer-state checkpoints (model, optimizer, schedule, RNG) resume exactly, also at another TP×PP×DP layout.

The tiny GPT goes through megatron-core's own schedule, DDP and optimizer (tests/tiny_gpt.py), from one set of
weights built at TP1/PP1.
"""

from functools import partial

import numpy as np
import pytest

from gloo_ranks import run_gloo_ranks
from tiny_gpt import save_initial_weights, train_tiny_gpt


@pytest.fixture(scope="module")
def init_dir(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("tiny_gpt") / "init")
    run_gloo_ranks(save_initial_weights, 1, path, timeout=120)
    return path


def _run(tp, pp, world, init_dir, **kw):
    return run_gloo_ranks(partial(train_tiny_gpt, tp, pp, init_dir=init_dir, **kw), world, timeout=180)[-1]


def _losses(tp, pp, world, init_dir, **kw):
    return _run(tp, pp, world, init_dir, **kw)["losses"]


@pytest.mark.parametrize("distributed_optimizer", [False, True], ids=["adam", "distopt"])
def test_tp2pp2_checkpoint_resumes_at_tp1(init_dir, tmp_path, distributed_optimizer):
    kw = dict(distributed_optimizer=distributed_optimizer)
    uninterrupted = _losses(1, 1, 1, init_dir, steps=range(0, 4), **kw)
    first = _losses(2, 2, 4, init_dir, steps=range(0, 2), save_dir=str(tmp_path / "ckpt"), **kw)
    resumed = _losses(1, 1, 1, init_dir, steps=range(2, 4), resume_dir=str(tmp_path / "ckpt"), **kw)
    np.testing.assert_allclose(first + resumed, uninterrupted, rtol=1e-5)


def test_dropout_is_reproducible_and_resumes_exactly(init_dir, tmp_path):
    run = partial(_losses, 2, 1, 2, init_dir, dropout=0.1)
    a, b = run(steps=range(0, 4)), run(steps=range(0, 4))
    assert a == b, "same seed and layout must give bit-identical losses with dropout"
    no_dropout = _losses(2, 1, 2, init_dir, steps=range(0, 4))
    assert a != no_dropout, "dropout 0.1 must change the losses"
    head = run(steps=range(0, 2), save_dir=str(tmp_path / "ckpt"))
    tail = run(steps=range(2, 4), resume_dir=str(tmp_path / "ckpt"))
    assert head + tail == a, "resuming restores the RNG streams exactly"


def test_distributed_optimizer_resume_keeps_one_adam_step_per_parameter(init_dir, tmp_path):
    """Upstream bug: the load shares one step tensor across parameters (step 2 -> 2 + n_params after a step)."""
    _run(2, 1, 4, init_dir, steps=range(0, 2), save_dir=str(tmp_path / "ckpt"), distributed_optimizer=True)
    resumed = _run(2, 1, 4, init_dir, steps=range(2, 3), resume_dir=str(tmp_path / "ckpt"),
                   distributed_optimizer=True)
    assert resumed["adam_steps"] == [3.0] and not resumed["steps_shared"]
