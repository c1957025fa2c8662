"""Build what a training run needs from the config: architectures, this stage's models, the data, all checked.

Every refusal names the config key to change (``training.validation`` holds the checks).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from megatron_truncdistill.config import ConfigError, ModelConfig
from megatron_truncdistill.convert.model_checkpoint import read_model_meta
from megatron_truncdistill.models.builder import build_gpt_model, padded_vocab_size
from megatron_truncdistill.models.hf_config import ModelArchitecture, architecture_from_hf
from megatron_truncdistill.models.transformer_config import BuildOptions, Fp8Options
from megatron_truncdistill.parallel import ParallelContext

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class ModelPlan:
    """One model's resolved architecture and the checkpoint metadata it comes with (if loaded)."""

    key: str  # "student" or "teacher": the config section, for error messages
    hf_config: dict
    arch: ModelArchitecture
    meta: object | None  # convert.model_checkpoint.ModelMeta of ``load``


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


def build_options(model: ModelConfig, *, sequence_parallel: bool, initialize: bool) -> BuildOptions:
    fp8 = Fp8Options(format=model.fp8, recipe=model.fp8_recipe,
                     first_last_layers_bf16=model.fp8_first_last_bf16) if model.fp8 else None
    return BuildOptions(params_dtype=DTYPES[model.params_dtype], use_te=model.use_te, fp8=fp8,
                        recompute=model.recompute, sequence_parallel=sequence_parallel,
                        perform_initialization=initialize)


def build_stage(model: ModelConfig, plan: ModelPlan, ctx: ParallelContext, *, padded_vocab: int,
                sequence_parallel: bool):
    """This rank's pipeline stage of one model (random init only when no checkpoint will overwrite it)."""
    options = build_options(model, sequence_parallel=sequence_parallel, initialize=model.load is None)
    try:
        return build_gpt_model(plan.arch, ctx, padded_vocab_size=padded_vocab, options=options)
    except ValueError as err:
        raise ConfigError(f"{plan.key}: {err}") from None


def shared_padded_vocab(real_vocab: int, tp_size: int) -> int:
    """One padded vocabulary for both models, so their TP shards cover the same rows."""
    return padded_vocab_size(real_vocab, tp_size)
