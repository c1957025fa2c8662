"""Where a conversion writes: never over its own input, staged beside the output, swapped in once complete.

The rule (README.md): an output replaces an existing one only once the new one is complete, and an output that
is, contains or lies inside an input is refused (after resolving symlinks). A conversion writes into
``OUTPUT.converting`` beside the output; only when it has succeeded is the old output moved to
``OUTPUT.replaced``, the new one renamed into place, and the old one removed. A crash at any moment leaves
either the old output or the new one under its name (or, between the two renames, both beside it under those
suffixes); a failure removes the staging directory and leaves the old output untouched.

Every file of a finished output is made world-readable (and its directories world-listable): an export is read
by servers (vLLM, TGI) that often run as another user, and safetensors writes its files 0600.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
from pathlib import Path
from typing import Iterator, Mapping

from megatron_truncdistill.errors import UserError

STAGING_SUFFIX = ".converting"
REPLACED_SUFFIX = ".replaced"


def check_output(output: str | Path, inputs: Mapping[str, str | Path | None], *, overwrite: bool) -> Path:
    """Refuse an output that exists (without ``overwrite``) or overlaps an input; returns it as a Path.

    ``inputs`` maps each input's option name (``--input``, ``--tokenizer``) to its path (None: not given).
    """
    out = Path(output)
    if (out.exists() or out.is_symlink()) and not overwrite:
        raise UserError(f"--output {out} exists; pass --overwrite to replace it (the old one is removed only "
                        "once the new one is complete)")
    resolved = out.resolve()
    for option, path in inputs.items():
        if path is None:
            continue
        source = Path(path).resolve()
        if resolved == source or source in resolved.parents or resolved in source.parents:
            relation = ("is" if resolved == source else "lies inside" if source in resolved.parents
                        else "contains")
            raise UserError(f"--output {out} {relation} {option} {path} (resolved: {source}); choose an output "
                            "directory outside every input")
    return out


@contextlib.contextmanager
def staged_output(output: Path) -> Iterator[Path]:
    """Yield a fresh, not yet existing staging path beside ``output``; swap it in when the block succeeds.

    The caller creates the staging directory (dist_checkpointing's save does so itself). Debris of an
    interrupted earlier conversion to the same output (its staging directory) is removed first.
    """
    staging = output.with_name(output.name + STAGING_SUFFIX)
    _remove(staging)
    try:
        yield staging
        if not staging.is_dir():
            raise RuntimeError(f"the conversion finished without writing {staging}")
        make_world_readable(staging)
        _swap_in(staging, output)
    except BaseException:
        _remove(staging)
        raise


def _swap_in(staging: Path, output: Path) -> None:
    if not (output.exists() or output.is_symlink()):
        staging.rename(output)
        return
    old = output.with_name(output.name + REPLACED_SUFFIX)
    _remove(old)
    output.rename(old)  # a symlink is moved as the link: its target is never touched
    staging.rename(output)
    _remove(old)


def _remove(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)


def make_world_readable(directory: Path) -> None:
    """Add read permission for everyone to every file, and read+execute to every directory, under ``directory``."""
    for root, dirs, files in os.walk(directory):
        for name in files:
            _add_mode(Path(root) / name, stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
        _add_mode(Path(root), stat.S_IRUSR | stat.S_IXUSR | stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH)


def _add_mode(path: Path, bits: int) -> None:
    path.chmod(stat.S_IMODE(path.stat().st_mode) | bits)
