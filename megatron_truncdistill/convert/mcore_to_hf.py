"""Model checkpoint of this project (converter's or trainer's, any TP×PP) → HF safetensors shards + config.json.

Runs as one process: the model is built once at TP1/PP1 and loaded through dist_checkpointing, which reshards
whatever layout the checkpoint was saved at; only the ``model`` keys are read (a trainer checkpoint's optimizer
state is left on disk). HF tensors are produced one map entry at a time and flushed shard by shard into a staging
directory that replaces the output only once complete (``output_dir``).

The input may be a model checkpoint, one trainer iteration (``iter_*``) or a run's ``checkpoints/`` root, whose
``latest`` is followed as the trainer does. Beside the weights the export carries ``config.json``,
``generation_config.json`` (the base model's stop tokens and sampling defaults), the tokenizer files when asked
for, and ``truncdistill_provenance.json`` (``provenance``).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Iterator

import torch
from megatron.core.models.gpt import GPTModel
from tqdm import tqdm

from megatron_truncdistill.checkpoint.integrity import (
    COMMON_NAME, CONFIG_NAME, DCP_METADATA_NAME, read_json_object, verify_checkpoint)
from megatron_truncdistill.checkpoint.model_checkpoint import (
    META_NAME, ModelMeta, load_model_checkpoint, read_model_meta)
from megatron_truncdistill.checkpoint.train_state import (
    LATEST_FILE, META_FILE as TRAIN_META_NAME, read_training_meta, resolve_checkpoint)
from megatron_truncdistill.convert.hf_io import (
    GENERATION_CONFIG_NAME,
    ConversionError,
    copy_tokenizer_files,
    count_non_finite,
    write_json,
    write_sharded_safetensors,
)
from megatron_truncdistill.convert.hf_names import VocabRows, name_map
from megatron_truncdistill.convert.output_dir import check_output, staged_output
from megatron_truncdistill.convert.provenance import PROVENANCE_NAME, describe_source, export_provenance
from megatron_truncdistill.models.builder import build_gpt_model
from megatron_truncdistill.models.hf_config import ModelArchitecture
from megatron_truncdistill.models.transformer_config import BuildOptions
from megatron_truncdistill.parallel import destroy_parallel, initialize_parallel

DEFAULT_MAX_SHARD_BYTES = 5 * 1024**3  # transformers' default shard size


def mcore_to_hf(ckpt_dir: str | Path, out_dir: str | Path, *, tokenizer_dir: str | Path | None = None,
                overwrite: bool = False, max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
                progress: bool = True) -> ModelMeta:
    """Export ``ckpt_dir`` to a HF directory; needs a torch.distributed world of size 1."""
    out = check_output(out_dir, {"--input": ckpt_dir, "--tokenizer": tokenizer_dir}, overwrite=overwrite)
    if tokenizer_dir is not None and not Path(tokenizer_dir).is_dir():
        raise ConversionError(f"--tokenizer {tokenizer_dir}: no such directory")
    source = resolve_export_source(ckpt_dir)
    meta = read_model_meta(source)
    training = read_training_meta(source) if (source / TRAIN_META_NAME).is_file() else None
    generation_config, generation_source = _generation_config(meta, tokenizer_dir)
    provenance = export_provenance(meta, training, source=source, generation_config_source=generation_source)
    with staged_output(out) as staging:
        staging.mkdir(parents=True)
        _export_weights(source, staging, meta, where=describe_source(source, training),
                        max_shard_bytes=max_shard_bytes, progress=progress)
        write_json(staging / "config.json", export_config(meta))
        if generation_config is not None:
            write_json(staging / GENERATION_CONFIG_NAME, generation_config)
        if tokenizer_dir is not None:
            copy_tokenizer_files(Path(tokenizer_dir), staging)
        write_json(staging / PROVENANCE_NAME, provenance)
    return meta


def resolve_export_source(path: str | Path) -> Path:
    """The checkpoint directory ``--input`` names: itself, or a run's root's ``latest``; verified, not read."""
    path = Path(path)
    if not path.is_dir():
        raise ConversionError(f"--input {path}: no such directory")
    if (path / LATEST_FILE).is_file():
        directory = resolve_checkpoint(path)  # the trainer's rule for a checkpoint root
        if not directory.is_dir():
            raise ConversionError(f"{path / LATEST_FILE} names {directory.name}, which does not exist; pass one of "
                                  f"the iter_* directories in {path}")
    elif any((path / name).exists() for name in (CONFIG_NAME, META_NAME, DCP_METADATA_NAME, COMMON_NAME)):
        directory = path  # a checkpoint (verify_checkpoint names what is missing if it is damaged)
    else:
        raise ConversionError(_not_a_checkpoint(path))
    verify_checkpoint(directory)
    return directory


def _not_a_checkpoint(path: Path) -> str:
    iterations = sorted(p.name for p in path.glob("iter_*") if p.is_dir())
    if iterations:
        return (f"--input {path}: a checkpoint root without a '{LATEST_FILE}' file; pass one of its iterations "
                f"(newest: {path / iterations[-1]})")
    if (path / "checkpoints").is_dir():
        return f"--input {path}: a run directory; pass its checkpoint root, {path / 'checkpoints'}"
    return (f"--input {path}: neither a checkpoint of this project ({CONFIG_NAME}, {META_NAME}) nor a run's "
            f"checkpoint root ('{LATEST_FILE}')")


def _generation_config(meta: ModelMeta, tokenizer_dir: str | Path | None) -> tuple[dict | None, str | None]:
    """The checkpoint's generation config, else the ``--tokenizer`` directory's; with where it came from."""
    if meta.generation_config is not None:
        return meta.generation_config, "checkpoint"
    candidate = Path(tokenizer_dir) / GENERATION_CONFIG_NAME if tokenizer_dir is not None else None
    if candidate is not None and candidate.is_file():
        return read_json_object(candidate, fix="fix or delete it"), str(candidate.resolve())
    print(f"warning: the checkpoint records no {GENERATION_CONFIG_NAME} and --tokenizer gives none: the export has "
          "no stop tokens or sampling defaults (pass --tokenizer BASE_HF_DIR that has one)", file=sys.stderr)
    return None, None


def _export_weights(source: Path, staging: Path, meta: ModelMeta, *, where: str, max_shard_bytes: int,
                    progress: bool) -> None:
    """Build the TP1/PP1 model, load ``source`` into it and stream its HF tensors into ``staging``'s shards."""
    ctx = initialize_parallel(1, 1, device=torch.device("cpu"))  # a host-side tool, on GPU machines too
    try:
        options = BuildOptions(params_dtype=meta.params_dtype, use_te=False, perform_initialization=False)
        model = build_gpt_model(meta.architecture, ctx, padded_vocab_size=meta.padded_vocab_size, options=options)
        load_model_checkpoint([model], source)
        tensors = hf_tensors(model, meta.architecture, dtype=meta.torch_dtype, source=where, progress=progress)
        write_sharded_safetensors(tensors, staging, max_shard_bytes=max_shard_bytes)
    finally:
        destroy_parallel()


def hf_tensors(model: GPTModel, arch: ModelArchitecture, *, dtype: torch.dtype, source: str = "the checkpoint",
               progress: bool = True) -> Iterator[tuple[str, torch.Tensor]]:
    """(HF name, tensor) for every entry of the name map, unpacked from the TP1/PP1 ``model``'s parameters.

    Everything is written in ``dtype``: megatron's local-spec norms keep fp32 weights even in a bf16 model (torch
    RMSNorm ignores params_dtype), while HF checkpoints use one dtype throughout. A tensor with NaN/Inf entries
    (a diverged run) is refused, naming it and ``source``.
    """
    params = dict(model.named_parameters())
    for mcore_name, rule in tqdm(name_map(arch), desc="mcore→hf", unit="tensor", disable=not progress):
        tensor = params[mcore_name].detach()
        bad = count_non_finite(tensor)
        if bad:
            raise ConversionError(f"{source}: tensor {mcore_name} has {bad} non-finite values (NaN/Inf); refusing "
                                  "to export a diverged model (export an earlier checkpoint)")
        tensor = tensor.to("cpu", dtype)  # safetensors are written from host memory
        if isinstance(rule, str):
            yield rule, tensor
        elif isinstance(rule, VocabRows):
            yield rule.name, _hf_vocab_rows(tensor, arch.vocab_size)
        else:
            yield from rule.to_hf(tensor, arch).items()


def _hf_vocab_rows(padded: torch.Tensor, hf_rows: int) -> torch.Tensor:
    """[V_padded, h] → [V_hf, h]: drop padding rows, or zero-fill when the trainer padded below the HF count."""
    if padded.shape[0] >= hf_rows:
        return padded[:hf_rows]
    fill = torch.zeros(hf_rows - padded.shape[0], padded.shape[1], dtype=padded.dtype, device=padded.device)
    return torch.cat([padded, fill])  # [V_hf, h]; the extra rows are beyond the real vocabulary


def export_config(meta: ModelMeta) -> dict:
    """The source config.json with the architecture class and the exported dtype filled in."""
    config = dict(meta.hf_config, architectures=[meta.architecture.hf_architecture])
    dtype_keys = [k for k in ("dtype", "torch_dtype") if k in config] or ["torch_dtype"]
    for key in dtype_keys:
        config[key] = meta.params_dtype
    return config
