"""megatron-core's own schedule, DDP and optimizer give the same losses at every TP×PP×DP layout on CPU ranks.

All layouts start from one set of weights built at TP1/PP1 and loaded through dist_checkpointing (PP stages
consume the RNG differently, so equal seeds alone would not give equal weights).
"""

from functools import partial

import numpy as np
import pytest

from gloo_ranks import run_gloo_ranks
from tiny_gpt import save_initial_weights, train_tiny_gpt

LAYOUTS = [  # (tp, pp, world)
    (2, 1, 2), (1, 2, 2), (2, 2, 4), (2, 1, 4), (1, 2, 4),
]
STEPS = range(0, 3)


@pytest.fixture(scope="module")
def init_dir(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("tiny_gpt") / "init")
    run_gloo_ranks(save_initial_weights, 1, path, timeout=120)
    return path


def _run(tp, pp, world, init_dir, **kw):
    return run_gloo_ranks(partial(train_tiny_gpt, tp, pp, init_dir=init_dir, **kw), world, timeout=180)[-1]


def _losses(tp, pp, world, init_dir, **kw):
    return _run(tp, pp, world, init_dir, **kw)["losses"]


@pytest.mark.slow
@pytest.mark.parametrize("distributed_optimizer", [False, True], ids=["adam", "distopt"])
def test_every_layout_matches_tp1(init_dir, distributed_optimizer):
    reference = _losses(1, 1, 1, init_dir, steps=STEPS, distributed_optimizer=distributed_optimizer)
    assert reference[-1] < reference[0], "the tiny model should learn within three steps"
    for tp, pp, world in LAYOUTS:
        got = _losses(tp, pp, world, init_dir, steps=STEPS, distributed_optimizer=distributed_optimizer)
        np.testing.assert_allclose(got, reference, rtol=1e-5, err_msg=f"TP{tp} PP{pp} DP{world // (tp * pp)}")
