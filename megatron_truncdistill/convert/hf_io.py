"""Hugging Face checkpoint directories: lazy safetensors reads and streamed, sharded safetensors writes.

Reads go through ``safe_open`` one tensor at a time (never the whole file), writes flush a shard as soon as it
reaches ``max_shard_bytes``: host memory holds at most one shard beyond the model being converted.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Iterable

import torch
from safetensors import safe_open
from safetensors.torch import save_file

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json",
                   "merges.txt", "tokenizer.model", "added_tokens.json", "chat_template.jinja")


class ConversionError(ValueError):
    """Bad converter input; the CLI prints the message as one line and exits non-zero."""


class HFCheckpoint:
    """A HF model directory: ``config.json`` plus one ``model.safetensors`` or shards with an index."""

    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory)
        self.config = read_json(self.directory / "config.json")
        self._weight_map = self._read_weight_map()
        self._handles: dict[str, object] = {}

    def _read_weight_map(self) -> dict[str, str]:
        index = self.directory / INDEX_NAME
        if index.is_file():
            weight_map = read_json(index)["weight_map"]
        elif (self.directory / SINGLE_NAME).is_file():
            with safe_open(self.directory / SINGLE_NAME, framework="pt") as f:
                weight_map = {name: SINGLE_NAME for name in f.keys()}
        else:
            raise ConversionError(f"{self.directory}: no {INDEX_NAME} or {SINGLE_NAME}")
        missing = sorted({f for f in weight_map.values() if not (self.directory / f).is_file()})
        if missing:
            raise ConversionError(f"{self.directory}: missing shard {missing[0]} (listed in {INDEX_NAME})")
        return weight_map

    def read(self, name: str, expected_shape: tuple) -> torch.Tensor:
        """One tensor, loaded now; a missing tensor or a shape other than ``expected_shape`` is refused by name."""
        if name not in self._weight_map:
            raise ConversionError(f"{self.directory}: tensor {name} not found in the checkpoint")
        shard = self._weight_map[name]
        if shard not in self._handles:
            self._handles[shard] = safe_open(self.directory / shard, framework="pt")
        tensor = self._handles[shard].get_tensor(name)
        if expected_shape is not None and tuple(tensor.shape) != tuple(expected_shape):
            raise ConversionError(f"tensor shape mismatch for {name}: checkpoint has {tuple(tensor.shape)}, "
                                  f"config.json implies {tuple(expected_shape)}")
        return tensor

    def names(self) -> list[str]:
        return sorted(self._weight_map)

    def optional_json(self, filename: str) -> dict | None:
        path = self.directory / filename
        return read_json(path) if path.is_file() else None


def read_json(path: Path) -> dict:
    if not path.is_file():
        raise ConversionError(f"{path} not found")
    return json.loads(path.read_text())


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


def prepare_output_dir(path: Path, *, overwrite: bool, create: bool) -> None:
    """Refuse an existing output directory unless ``overwrite`` (then remove it); ``create`` makes it anew."""
    if path.exists():
        if not overwrite:
            raise ConversionError(f"output directory {path} exists; pass --overwrite to replace it")
        shutil.rmtree(path)
    if create:
        path.mkdir(parents=True)
