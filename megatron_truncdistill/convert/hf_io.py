"""Hugging Face checkpoint directories: lazy safetensors reads and streamed, sharded safetensors writes.

Reads go through ``safe_open`` one tensor at a time (never the whole file), writes flush a shard as soon as it
reaches ``max_shard_bytes``: host memory holds at most one shard beyond the model being converted.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Iterable

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from megatron_truncdistill.checkpoint.integrity import read_json_object
from megatron_truncdistill.errors import UserError
from megatron_truncdistill.models.hf_config import ModelArchitecture, architecture_from_hf

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json",
                   "merges.txt", "tokenizer.model", "added_tokens.json", "chat_template.jinja")
GENERATION_CONFIG_NAME = "generation_config.json"
_REDOWNLOAD = "download the model again"


class ConversionError(UserError):
    """Bad converter input; the message names the file, tensor or option and the fix (one line, exit 2)."""


def read_hf_architecture(directory: Path) -> tuple[dict, ModelArchitecture]:
    """``config.json`` of a HF model directory and the architecture it describes; refused by file name."""
    path = directory / "config.json"
    config = read_json_object(path, fix=_REDOWNLOAD)
    try:
        return config, architecture_from_hf(config)
    except ValueError as err:  # an architecture or option this builder does not reproduce
        raise ConversionError(f"{path}: {err}") from None
    except KeyError as err:
        missing = err.args[0]
        raise ConversionError(f"{path}: no {missing!r} entry, so not a complete HF config; {_REDOWNLOAD}") from None


class HFCheckpoint:
    """A HF model directory: ``config.json`` plus one ``model.safetensors`` or shards with an index.

    Every shard's header is opened (and so checked against the file's length) up front, before anything is built.
    """

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        self.config, self.architecture = read_hf_architecture(self.directory)
        self._weight_map = self._read_weight_map()
        self._handles = {shard: self._open(shard) for shard in sorted(set(self._weight_map.values()))}
        stored = {shard: set(handle.keys()) for shard, handle in self._handles.items()}
        for name, shard in self._weight_map.items():
            if name not in stored[shard]:
                raise ConversionError(f"{self.directory / shard}: has no tensor {name} although {INDEX_NAME} "
                                      f"lists it there; {_REDOWNLOAD}")

    def _read_weight_map(self) -> dict[str, str]:
        index = self.directory / INDEX_NAME
        if index.is_file():
            weight_map = read_json_object(index, fix=_REDOWNLOAD).get("weight_map")
            if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
                raise ConversionError(f"{index}: no 'weight_map' object of tensor name → shard file; {_REDOWNLOAD}")
        elif (self.directory / SINGLE_NAME).is_file():
            weight_map = {name: SINGLE_NAME for name in self._open(SINGLE_NAME).keys()}
        else:
            raise ConversionError(f"{self.directory}: no {INDEX_NAME} or {SINGLE_NAME}")
        missing = sorted({f for f in weight_map.values() if not (self.directory / f).is_file()})
        if missing:
            raise ConversionError(f"{self.directory}: missing shard {missing[0]} (listed in {INDEX_NAME})")
        return weight_map

    def _open(self, shard: str):
        try:
            return safe_open(self.directory / shard, framework="pt")
        except SafetensorError as err:  # a cut download fails the header's coverage check
            raise ConversionError(f"{self.directory / shard}: not a readable safetensors file ({err}); "
                                  f"{_REDOWNLOAD}") from None

    def read(self, name: str, expected_shape: tuple) -> torch.Tensor:
        """One tensor, loaded now; a missing tensor, a wrong shape or a non-finite value is refused by name."""
        if name not in self._weight_map:
            raise ConversionError(f"{self.directory}: tensor {name} not found in the checkpoint")
        shard = self._weight_map[name]
        tensor = self._handles[shard].get_tensor(name)
        if expected_shape is not None and tuple(tensor.shape) != tuple(expected_shape):
            raise ConversionError(f"tensor shape mismatch for {name}: checkpoint has {tuple(tensor.shape)}, "
                                  f"config.json implies {tuple(expected_shape)}")
        bad = count_non_finite(tensor)
        if bad:
            raise ConversionError(f"{self.directory / shard}: tensor {name} has {bad} non-finite values (NaN/Inf); "
                                  "refusing to convert a broken model")
        return tensor

    def names(self) -> list[str]:
        return sorted(self._weight_map)

    def optional_json(self, filename: str) -> dict | None:
        path = self.directory / filename
        return read_json_object(path, fix=_REDOWNLOAD) if path.is_file() else None


_FINITE_CHECK_CHUNK = 1 << 24  # elements per exact isfinite pass: bounds the transient mask to 16 MB


def count_non_finite(tensor: torch.Tensor) -> int:
    """How many entries of ``tensor`` are NaN or ±Inf (0 for integer tensors); a host sync.

    A finite sum proves every entry finite (one NaN/Inf makes the sum NaN/Inf), and summing is ~40× faster than
    ``isfinite`` on CPU; only a non-finite sum (a broken tensor, or finite values whose sum overflows) pays for
    the exact count, in chunks.
    """
    if not tensor.is_floating_point() or bool(torch.isfinite(tensor.sum())):
        return 0
    flat = tensor.reshape(-1)  # [numel]: a view of the (contiguous) parameter or HF tensor
    return sum(int((~torch.isfinite(chunk)).sum()) for chunk in flat.split(_FINITE_CHECK_CHUNK))


def write_json(path: Path, payload: dict) -> None:
    path.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")


def write_sharded_safetensors(tensors: Iterable[tuple[str, torch.Tensor]], directory: Path, *,
                              max_shard_bytes: int) -> dict[str, str]:
    """Write ``(name, tensor)`` pairs into ``model-0000i-of-0000N.safetensors`` + index; returns the weight map.

    Shards are flushed as they fill (the total count is unknown until the end, so they are renamed last).
    """
    shard_paths, weight_map, pending, pending_bytes, total = [], {}, {}, 0, 0

    def flush():
        nonlocal pending, pending_bytes
        path = directory / f"shard-{len(shard_paths):05d}.tmp"
        save_file(pending, path, metadata={"format": "pt"})
        shard_paths.append((path, list(pending)))
        pending, pending_bytes = {}, 0

    for name, tensor in tensors:
        size = tensor.numel() * tensor.element_size()
        if pending and pending_bytes + size > max_shard_bytes:
            flush()
        pending[name] = tensor.contiguous()
        pending_bytes += size
        total += size
    if pending:
        flush()
    for i, (path, names) in enumerate(shard_paths):
        final = f"model-{i + 1:05d}-of-{len(shard_paths):05d}.safetensors"
        path.rename(directory / final)
        weight_map.update({name: final for name in names})
    write_json(directory / INDEX_NAME, {"metadata": {"total_size": total}, "weight_map": weight_map})
    return weight_map


def copy_tokenizer_files(source: Path, destination: Path) -> list[str]:
    """Copy the tokenizer files present in ``source``; returns their names (refuses a directory with none)."""
    names = [n for n in TOKENIZER_FILES if (source / n).is_file()]
    if not names:
        raise ConversionError(f"{source}: no tokenizer files ({', '.join(TOKENIZER_FILES[:3])}, ...)")
    for name in names:
        shutil.copy2(source / name, destination / name)
    return names
