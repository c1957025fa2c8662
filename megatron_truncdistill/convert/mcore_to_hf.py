"""Model checkpoint of this project (converter's or trainer's, any TP×PP) → HF safetensors shards + config.json.

Runs as one process: the model is built once at TP1/PP1 and loaded through dist_checkpointing, which reshards
whatever layout the checkpoint was saved at; only the ``model`` keys are read (a trainer checkpoint's optimizer
state is left on disk). HF tensors are produced one map entry at a time and flushed shard by shard.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Iterator

import torch
from megatron.core.models.gpt import GPTModel
from tqdm import tqdm

from megatron_truncdistill.convert.hf_io import (
    ConversionError,
    copy_tokenizer_files,
    prepare_output_dir,
    write_json,
    write_sharded_safetensors,
)
from megatron_truncdistill.convert.hf_names import VocabRows, name_map
from megatron_truncdistill.checkpoint.model_checkpoint import ModelMeta, load_model_checkpoint, read_model_meta
from megatron_truncdistill.models.builder import build_gpt_model
from megatron_truncdistill.models.transformer_config import BuildOptions
from megatron_truncdistill.models.hf_config import ModelArchitecture
from megatron_truncdistill.parallel import destroy_parallel, initialize_parallel

DEFAULT_MAX_SHARD_BYTES = 5 * 1024**3  # transformers' default shard size


def mcore_to_hf(ckpt_dir: str | Path, out_dir: str | Path, *, tokenizer_dir: str | Path | None = None,
                overwrite: bool = False, max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
                progress: bool = True) -> ModelMeta:
    """Export ``ckpt_dir`` to a HF directory; needs a torch.distributed world of size 1."""
    try:
        meta = read_model_meta(ckpt_dir)
    except FileNotFoundError as err:
        raise ConversionError(str(err)) from None
    arch = meta.architecture
    out = Path(out_dir)
    if tokenizer_dir is not None and not Path(tokenizer_dir).is_dir():
        raise ConversionError(f"tokenizer directory {tokenizer_dir} not found")
    if out.exists() and not overwrite:
        raise ConversionError(f"output directory {out} exists; pass --overwrite to replace it")
    staging = out.with_name(out.name + ".partial")  # replaces ``out`` only once complete
    prepare_output_dir(staging, overwrite=True, create=True)
    ctx = initialize_parallel(1, 1, device=torch.device("cpu"))  # a host-side tool, on GPU machines too
    try:
        options = BuildOptions(params_dtype=meta.params_dtype, use_te=False, perform_initialization=False)
        model = build_gpt_model(arch, ctx, padded_vocab_size=meta.padded_vocab_size, options=options)
        load_model_checkpoint([model], ckpt_dir)
        tensors = hf_tensors(model, arch, dtype=meta.torch_dtype, progress=progress)
        write_sharded_safetensors(tensors, staging, max_shard_bytes=max_shard_bytes)
    finally:
        destroy_parallel()
    _write_side_files(staging, meta, tokenizer_dir)
    shutil.rmtree(out, ignore_errors=True)
    staging.rename(out)
    return meta


def hf_tensors(model: GPTModel, arch: ModelArchitecture, *, dtype: torch.dtype,
               progress: bool = True) -> Iterator[tuple[str, torch.Tensor]]:
    """(HF name, tensor) for every entry of the name map, unpacked from the TP1/PP1 ``model``'s parameters.

    Everything is written in ``dtype``: megatron's local-spec norms keep fp32 weights even in a bf16 model (torch
    RMSNorm ignores params_dtype), while HF checkpoints use one dtype throughout.
    """
    params = dict(model.named_parameters())
    for mcore_name, rule in tqdm(name_map(arch), desc="mcore→hf", unit="tensor", disable=not progress):
        tensor = params[mcore_name].detach().to("cpu", dtype)  # safetensors are written from host memory
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


def _write_side_files(directory: Path, meta: ModelMeta, tokenizer_dir: str | Path | None) -> None:
    """config.json, generation_config.json (when the source had one) and the tokenizer files."""
    write_json(directory / "config.json", export_config(meta))
    if meta.generation_config is not None:
        write_json(directory / "generation_config.json", meta.generation_config)
    if tokenizer_dir is not None:
        copy_tokenizer_files(Path(tokenizer_dir), directory)


def export_config(meta: ModelMeta) -> dict:
    """The source config.json with the architecture class and the exported dtype filled in."""
    config = dict(meta.hf_config, architectures=[meta.architecture.hf_architecture])
    dtype_keys = [k for k in ("dtype", "torch_dtype") if k in config] or ["torch_dtype"]
    for key in dtype_keys:
        config[key] = meta.params_dtype
    return config
