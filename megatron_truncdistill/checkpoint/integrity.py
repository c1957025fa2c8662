"""Cheap integrity checks of a checkpoint directory, before any tensor is read or any rank allocates.

A damaged checkpoint (a shard lost or cut short by an interrupted copy, a metadata file overwritten) otherwise
surfaces deep inside megatron-core or torch.distributed.checkpoint as a rank traceback, an ``AttributeError`` or,
with a truncated torch ``.metadata``, an aborted process. ``verify_checkpoint`` finds each of these from file
presence, sizes and parses alone, and names the damaged file:

- ``metadata.json`` (dist_checkpointing's config) parses and names a sharded backend;
- ``common.pt`` (dist_checkpointing's non-sharded state; a torch zip archive) is present and its archive checks;
- for ``torch_dist`` checkpoints, the torch DCP ``.metadata`` unpickles, and every ``*.distcp`` file its storage
  records name exists and is at least as long as the last byte they record in it;
- every ``truncdistill_*.json`` beside the tensors parses.

It reads no tensor data: the cost is one unpickling of ``.metadata`` (which the loader repeats), one ``stat`` per
shard and a CRC pass over the (small) ``common.pt``. DCP stores no checksums of the shards, so a shard of the
right length with flipped bits is not detected here.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

from megatron_truncdistill.errors import UserError

CONFIG_NAME = "metadata.json"  # megatron-core dist_checkpointing.core.CONFIG_FNAME
COMMON_NAME = "common.pt"  # megatron-core dist_checkpointing.strategies.common.COMMON_STATE_FNAME
DCP_METADATA_NAME = ".metadata"  # torch.distributed.checkpoint's global metadata file
PARTIAL_SUFFIX = ".partial"
_FIX = "copy the checkpoint again from its source, or use another one (e.g. an earlier iter_* directory)"


class CheckpointError(UserError, ValueError):
    """A checkpoint directory is missing, incomplete, damaged or of another model; the message names the file.

    Also a ``ValueError`` so callers that already turn a ``ValueError`` from a checkpoint read into a config
    error (the trainer's ``student.load``/``teacher.load`` checks) keep doing so.
    """


def verify_checkpoint(directory: str | Path) -> None:
    """Refuse a directory that is not a complete, undamaged dist_checkpointing checkpoint (reads no tensor).

    Raises ``CheckpointError`` naming the first damaged or missing file and the fix. Safe to call on every rank
    before anything is built; ``dist_io.load_sharded`` calls it before every load.
    """
    path = Path(directory)
    if not path.is_dir():
        raise CheckpointError(f"checkpoint directory {path} does not exist")
    config = path / CONFIG_NAME
    if not config.is_file():
        hint = " (an interrupted save: use the directory without the suffix)" if path.name.endswith(
            PARTIAL_SUFFIX) else ""
        raise CheckpointError(f"{config} is missing: {path} is not a complete dist_checkpointing checkpoint{hint}")
    backend = read_json_object(config).get("sharded_backend")
    if not isinstance(backend, str):
        raise CheckpointError(f"{config}: no 'sharded_backend' entry; the file is damaged: {_FIX}")
    _check_common_state(path / COMMON_NAME)
    if backend == "torch_dist":
        _check_dcp_files(path)
    for meta in sorted(path.glob("truncdistill_*.json")):
        read_json_object(meta)


def read_json_object(path: Path, *, fix: str = _FIX) -> dict:
    """A JSON object file; missing, unparsable or not an object → ``CheckpointError`` naming it and ``fix``."""
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{path} not found; {fix}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path}: not valid JSON ({err}); the file is damaged: {fix}") from None
    if not isinstance(payload, dict):
        raise CheckpointError(f"{path}: expected a JSON object, found {type(payload).__name__}; {fix}")
    return payload


def _check_common_state(path: Path) -> None:
    """``common.pt`` is a torch.save zip archive: a cut or altered file fails the archive's own CRC check."""
    if not path.is_file():
        raise CheckpointError(f"{path} is missing: the checkpoint is incomplete; {_FIX}")
    try:
        with zipfile.ZipFile(path) as archive:
            bad_member = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as err:
        raise CheckpointError(f"{path}: unreadable torch archive ({err}); the file is damaged: {_FIX}") from None
    if bad_member is not None:
        raise CheckpointError(f"{path}: member {bad_member} fails its CRC check; the file is damaged: {_FIX}")


def _check_dcp_files(path: Path) -> None:
    """The DCP ``.metadata`` parses and every shard it records exists and is long enough."""
    from torch.distributed.checkpoint import FileSystemReader

    metadata_path = path / DCP_METADATA_NAME
    if not metadata_path.is_file():
        raise CheckpointError(f"{metadata_path} is missing: the checkpoint is incomplete; {_FIX}")
    try:
        metadata = FileSystemReader(str(path)).read_metadata()
    except Exception as err:  # a cut or altered pickle raises any of several types; all mean "damaged"
        raise CheckpointError(f"{metadata_path}: unreadable ({type(err).__name__}: {err}); the file is damaged: "
                              f"{_FIX}") from None
    needed: dict[str, int] = {}  # shard file → bytes its records need
    for record in (metadata.storage_data or {}).values():  # torch's _StorageInfo(relative_path, offset, length)
        end = int(record.offset) + int(record.length)
        needed[record.relative_path] = max(needed.get(record.relative_path, 0), end)
    for name, end in sorted(needed.items()):
        shard = path / name
        if not shard.is_file():
            raise CheckpointError(f"{shard} is missing (listed in {DCP_METADATA_NAME}): the checkpoint is "
                                  f"incomplete; {_FIX}")
        size = shard.stat().st_size
        if size < end:
            raise CheckpointError(f"{shard}: {size} bytes, but {DCP_METADATA_NAME} records data up to byte {end}: "
                                  f"the file was cut short; {_FIX}")
