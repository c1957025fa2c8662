"""The trainer tests' shared inputs: tiny bins and initial checkpoints, built once per session."""

from __future__ import annotations

import pytest

from distill_setup import prepare_trainer_inputs


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    return prepare_trainer_inputs(tmp_path_factory.mktemp("trainer"))
