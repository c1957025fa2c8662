"""The one home of megatron-core internals: version gate on every shim, pyproject's range equal to what is verified."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
import torch

from megatron_truncdistill import mcore_compat

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def unverified_version(monkeypatch):
    import megatron.core

    monkeypatch.setattr(megatron.core, "__version__", "0.18.0")
    mcore_compat.check_megatron_core_version.cache_clear()
    yield
    mcore_compat.check_megatron_core_version.cache_clear()


@pytest.mark.parametrize("shim", [
    lambda: mcore_compat.check_megatron_core_version(),
    lambda: mcore_compat.init_distributed_optimizer_states(object()),
    lambda: mcore_compat.keep_restored_adam_step(object()),
    lambda: mcore_compat.use_in_process_checkpoint_results_queue(),
    lambda: mcore_compat.final_hidden_states(object()).__enter__(),
    lambda: mcore_compat.step_if_finite(object()),
])
def test_every_shim_refuses_an_unverified_megatron_core(unverified_version, shim):
    with pytest.raises(RuntimeError, match=r"megatron-core 0\.18\.0 is not verified .*mcore_compat\.py"):
        shim()


def test_pyproject_range_is_what_is_verified():
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    (spec,) = [d for d in deps if d.startswith("megatron-core")]
    low, high = re.fullmatch(r"megatron-core>=([\d.]+),<([\d.]+)", spec.split("#")[0].strip()).groups()
    assert any(low.startswith(prefix) for prefix in mcore_compat.SUPPORTED_MCORE), spec
    major, minor = (int(x) for x in mcore_compat.SUPPORTED_MCORE[-1].rstrip(".").split("."))
    assert high == f"{major}.{minor + 1}", f"{spec}: the upper bound admits unverified releases"


def test_final_hidden_states_shadows_the_output_layer_for_one_call_only():
    class OutputLayer(torch.nn.Module):
        def forward(self, hidden, weight=None, runtime_gather_output=None):
            return hidden * 2, None

    class Model:
        output_layer = OutputLayer()

    model, hidden = Model(), torch.ones(3, 1, 4)
    with mcore_compat.final_hidden_states(model):
        assert torch.equal(model.output_layer(hidden)[0], hidden)
    assert torch.equal(model.output_layer(hidden)[0], hidden * 2)
