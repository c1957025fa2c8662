"""HF safetensors → megatron-core distributed checkpoint (loads at any TP×PP; see README.md).

Runs as one process (a torch.distributed world of 1): the model is built once at TP1/PP1 on the CPU (on GPU
machines too: ``initialize_parallel(device=cpu)``, so the path is the one the CPU suite tests), filled
tensor by tensor from lazily opened safetensors shards, and saved with dist_checkpointing, whose layout-free keys
let any TP×PP layout load it. Host memory: the megatron model once, plus the few HF tensors of one layer entry.
"""

from __future__ import annotations

from pathlib import Path

import torch
from megatron.core.models.gpt import GPTModel
from tqdm import tqdm

from megatron_truncdistill.checkpoint.model_checkpoint import ModelMeta, save_model_checkpoint
from megatron_truncdistill.convert.hf_io import GENERATION_CONFIG_NAME, TOKENIZER_FILES, ConversionError, HFCheckpoint
from megatron_truncdistill.convert.hf_names import FuseGateUp, PackQKV, VocabRows, hf_shape, name_map
from megatron_truncdistill.convert.output_dir import check_output, staged_output
from megatron_truncdistill.dtypes import hf_params_dtype
from megatron_truncdistill.models.builder import build_gpt_model, padded_vocab_size
from megatron_truncdistill.models.hf_config import ModelArchitecture
from megatron_truncdistill.models.transformer_config import BuildOptions
from megatron_truncdistill.parallel import destroy_parallel, initialize_parallel

# HF tensors that carry no weights megatron needs (recomputed buffers saved by old Llama checkpoints).
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


def hf_to_mcore(hf_dir: str | Path, out_dir: str | Path, *, overwrite: bool = False,
                padded_vocab: int | None = None, vocab_divisible_by: int = 128, progress: bool = True) -> ModelMeta:
    """Convert ``hf_dir`` into a model checkpoint at ``out_dir``; needs a torch.distributed world of size 1.

    ``padded_vocab`` defaults to the HF row count rounded up to ``vocab_divisible_by``; an explicit value must be
    a multiple of it. Parameters keep the checkpoint's dtype (fp16 sources become fp32, losslessly). The
    checkpoint is written beside ``out_dir`` and replaces an existing one only once complete (``output_dir``).
    """
    out = check_output(out_dir, {"--input": hf_dir}, overwrite=overwrite)
    source = HFCheckpoint(hf_dir)
    arch = source.architecture
    tokenizer = _tokenizer_identity(source.directory)
    real_vocab = tokenizer["vocab_size"] if tokenizer else arch.vocab_size
    padded = _choose_padded_vocab(arch, real_vocab, padded_vocab, vocab_divisible_by)
    meta = ModelMeta(hf_config=source.config, vocab_size=real_vocab, padded_vocab_size=padded,
                     params_dtype=hf_params_dtype(source.config), tokenizer=tokenizer,
                     generation_config=source.optional_json(GENERATION_CONFIG_NAME))
    with staged_output(out) as staging:
        ctx = initialize_parallel(1, 1, device=torch.device("cpu"))  # a host-side tool, on GPU machines too
        try:
            options = BuildOptions(params_dtype=meta.params_dtype, use_te=False, perform_initialization=False)
            model = build_gpt_model(arch, ctx, padded_vocab_size=padded, options=options)
            fill_from_hf(model, source, arch, progress=progress)
            save_model_checkpoint([model], staging, meta)
        finally:
            destroy_parallel()
    return meta


def fill_from_hf(model: GPTModel, source: HFCheckpoint, arch: ModelArchitecture, *, progress: bool = True) -> None:
    """Copy every HF tensor into the TP1/PP1 ``model`` through the architecture's name map."""
    params = dict(model.named_parameters())
    used: set[str] = set()
    for mcore_name, rule in tqdm(name_map(arch), desc="hf→mcore", unit="tensor", disable=not progress):
        param = params.pop(mcore_name)
        tensor = _mcore_tensor(mcore_name, rule, source, arch, rows=param.shape[0])
        if tensor.shape != param.shape:
            raise ConversionError(f"tensor shape mismatch for {mcore_name}: converted {tuple(tensor.shape)}, "
                                  f"model has {tuple(param.shape)}")
        with torch.no_grad():
            param.copy_(tensor)
        used.update([rule] if isinstance(rule, str) else rule.hf_names())
    if params:  # a megatron parameter the map does not cover: a bug in the map, never silently left random
        raise ConversionError(f"no HF source for megatron parameter {sorted(params)[0]}")
    _refuse_unused(source, used, arch)


def _mcore_tensor(mcore_name: str, rule, source: HFCheckpoint, arch: ModelArchitecture, *,
                  rows: int) -> torch.Tensor:
    """The megatron tensor for one map entry, read from the HF shards."""
    if isinstance(rule, str):
        return source.read(rule, hf_shape(rule, arch))
    if isinstance(rule, PackQKV):
        return rule.to_mcore(source.read, arch, bias=mcore_name.endswith(".bias"))
    if isinstance(rule, FuseGateUp):
        return rule.to_mcore(source.read, arch)
    assert isinstance(rule, VocabRows)
    hf_rows = source.read(rule.name, (arch.vocab_size, arch.hidden_size))  # [V_hf, h]
    out = torch.zeros(rows, arch.hidden_size, dtype=hf_rows.dtype, device=hf_rows.device)  # [V_padded, h], 0 padding
    kept = min(rows, arch.vocab_size)  # rows beyond the real vocabulary may be dropped (never predicted)
    out[:kept] = hf_rows[:kept]
    return out


def _refuse_unused(source: HFCheckpoint, used: set[str], arch: ModelArchitecture) -> None:
    """An HF tensor the map did not consume means math this builder would silently drop."""
    for name in source.names():
        if name in used or name.endswith(_IGNORED_SUFFIXES):
            continue
        if name == "lm_head.weight" and arch.tie_word_embeddings:  # some tied checkpoints store the copy
            continue
        raise ConversionError(f"HF tensor {name} has no megatron counterpart for {arch.hf_architecture}")


def _choose_padded_vocab(arch: ModelArchitecture, real_vocab: int, padded: int | None, divisible_by: int) -> int:
    if arch.vocab_size < real_vocab:
        raise ConversionError(f"the checkpoint has {arch.vocab_size} embedding rows, fewer than the tokenizer's "
                              f"{real_vocab} tokens")
    if padded is None:
        return padded_vocab_size(arch.vocab_size, 1, divisible_by)
    if padded % divisible_by:
        raise ConversionError(f"padded vocabulary size {padded} is not divisible by {divisible_by}")
    if padded < real_vocab:
        raise ConversionError(f"padded vocabulary size {padded} is smaller than the real vocabulary ({real_vocab})")
    return padded


def _tokenizer_identity(directory: Path) -> dict | None:
    """The tokenizer's identity when the HF directory ships tokenizer files (the trainer checks it against bins)."""
    if not any((directory / name).is_file() for name in TOKENIZER_FILES):
        return None
    from megatron_truncdistill.tokenization import TokenizerError, load_tokenizer  # transformers-heavy

    try:
        return load_tokenizer(directory).identity()
    except TokenizerError as err:  # tokenizer files the converter was given, but cannot use
        raise ConversionError(f"--input {directory}: {err}") from None
