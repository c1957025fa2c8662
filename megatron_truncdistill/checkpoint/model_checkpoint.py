"""Model-only megatron-core checkpoints: the layout the converter writes and the trainer reads and writes (README.md).

A checkpoint is a directory holding a ``dist_checkpointing`` (torch_dist) checkpoint of the state dict
``{"model": model.sharded_state_dict()}`` plus ``truncdistill_model.json`` (``ModelMeta``). Because the tensors
are stored under layout-free keys, any TP×PP layout can load what any other layout saved. Loading asks only for
the ``model`` keys, so a trainer checkpoint (model + optimizer + ...) loads here unchanged.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from megatron.core.models.gpt import GPTModel

from megatron_truncdistill.checkpoint.dist_io import load_sharded, save_sharded
from megatron_truncdistill.checkpoint.integrity import CheckpointError, read_json_object
from megatron_truncdistill.dtypes import torch_dtype
from megatron_truncdistill.models.hf_config import ModelArchitecture, architecture_from_hf

META_NAME = "truncdistill_model.json"
META_FORMAT_VERSION = 1
MODEL_KEY = "model"


@dataclass(frozen=True)
class ModelMeta:
    """What a checkpoint's tensors alone do not say: the source model and the vocabulary bookkeeping."""

    hf_config: dict[str, Any]
    """The source HF ``config.json`` (exported back verbatim, but for ``dtype``)."""
    vocab_size: int
    """The real vocabulary (the tokenizer's, or the HF row count when no tokenizer was given)."""
    padded_vocab_size: int
    """Embedding/output rows stored in this checkpoint; rows ≥ ``vocab_size`` are padding."""
    params_dtype: str
    """"float32" or "bfloat16": the dtype the tensors were saved in."""
    tokenizer: dict[str, Any] | None = None
    """Tokenizer identity (``ChatTokenizer.identity()``), compared against the bins' manifest by the trainer."""
    generation_config: dict[str, Any] | None = None
    """The source ``generation_config.json``, written back on export."""
    format_version: int = META_FORMAT_VERSION
    extra: dict[str, Any] = field(default_factory=dict)
    """Free-form provenance (e.g. the trainer step); ignored by the loaders."""

    @property
    def architecture(self) -> ModelArchitecture:
        return architecture_from_hf(self.hf_config)

    @property
    def torch_dtype(self) -> torch.dtype:
        return torch_dtype(self.params_dtype)


def read_model_meta(directory: str | Path) -> ModelMeta:
    """The ``ModelMeta`` of a checkpoint directory (no tensors are read); a missing or damaged file is refused.

    Raises ``CheckpointError`` naming ``truncdistill_model.json`` when it is missing, is not JSON, has other
    fields or another format version, or describes an architecture this project cannot build.
    """
    path = Path(directory) / META_NAME
    if not path.is_file():
        raise CheckpointError(f"{directory} is not a model checkpoint of this project: {META_NAME} is missing")
    payload = read_json_object(path)
    if payload.get("format_version") != META_FORMAT_VERSION:
        raise CheckpointError(f"{path}: format_version {payload.get('format_version')} (expected "
                              f"{META_FORMAT_VERSION})")
    payload.pop("architecture", None)  # informational copy, derived from hf_config
    try:
        meta = ModelMeta(**payload)
    except TypeError as err:  # a missing or unknown field
        raise CheckpointError(f"{path}: damaged ({err})") from None
    try:
        meta.architecture
    except (ValueError, KeyError) as err:  # hf_config is the source config.json, copied verbatim
        raise CheckpointError(f"{path}: hf_config describes no model this project builds: {err}") from None
    return meta


def model_meta_files(meta: ModelMeta) -> dict[str, str]:
    """``{file name: text}`` to pass as ``save_sharded(..., extra_files=...)`` so the JSON appears atomically."""
    payload = dataclasses.asdict(meta)
    payload["architecture"] = meta.architecture.hf_architecture  # for humans and tools reading the JSON
    return {META_NAME: json.dumps(payload, indent=2, sort_keys=True) + "\n"}


def model_sharded_state_dict(model_chunks: Sequence[GPTModel]) -> dict:
    """``{"model": ...}`` for this rank's stage; the trainer adds its optimizer etc. under other keys."""
    if len(model_chunks) != 1:
        raise NotImplementedError("virtual pipeline stages (several model chunks per rank) are not supported")
    return {MODEL_KEY: model_chunks[0].sharded_state_dict()}


def save_model_checkpoint(model_chunks: Sequence[GPTModel], directory: str | Path, meta: ModelMeta) -> None:
    """Collective over all ranks: save this stage's model tensors and the meta JSON into a new ``directory``.

    Atomic (dist_io writes a ``.partial`` directory and renames it), so a reader never sees tensors without meta.
    """
    save_sharded(model_sharded_state_dict(model_chunks), directory, extra_files=model_meta_files(meta))


def load_model_checkpoint(model_chunks: Sequence[GPTModel], directory: str | Path, *,
                          real_vocab_size: int | None = None) -> ModelMeta:
    """Collective: fill this stage's parameters from a checkpoint saved at any TP×PP layout; returns its meta.

    The model may have a different padded vocabulary than the checkpoint (teacher and student padded to one
    size): megatron-core zero-fills and copies the overlapping rows. Refused: a checkpoint with fewer rows than
    ``real_vocab_size`` (real tokens would have no embedding), or one of another architecture.
    """
    meta = read_model_meta(directory)
    real = meta.vocab_size if real_vocab_size is None else real_vocab_size
    if meta.padded_vocab_size < real:
        raise CheckpointError(f"{directory}: checkpoint has {meta.padded_vocab_size} vocabulary rows, fewer than the "
                         f"real vocabulary ({real})")
    _check_same_shapes(model_chunks[0], meta.architecture, directory)
    loaded = load_sharded(model_sharded_state_dict(model_chunks), directory)
    # Most tensors were read into the parameters in place, but factory-built ones (SwiGLU fc1 at TP > 1) come
    # back as new tensors; load_state_dict copies them all.
    model_chunks[0].load_state_dict(loaded[MODEL_KEY])
    return meta


def _check_same_shapes(model: GPTModel, arch: ModelArchitecture, directory) -> None:
    """A clear error instead of dist_checkpointing's shape assertion when teacher/student paths get swapped."""
    config = model.config
    pairs = {
        "num_layers": (config.num_layers, arch.num_layers),
        "hidden_size": (config.hidden_size, arch.hidden_size),
        "ffn_hidden_size": (config.ffn_hidden_size, arch.ffn_hidden_size),
        "num_attention_heads": (config.num_attention_heads, arch.num_attention_heads),
        "num_query_groups": (config.num_query_groups, arch.num_query_groups),
        "kv_channels": (config.kv_channels, arch.head_dim),
    }
    for name, (model_value, saved) in pairs.items():
        if model_value != saved:
            raise CheckpointError(f"{directory}: checkpoint {name}={saved} but the model has {name}={model_value}")
