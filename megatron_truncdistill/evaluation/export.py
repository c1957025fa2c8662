"""A run checkpoint as ``--model``: exported to a temporary HF directory by the package's converter.

``hf_model_dir`` yields a HF directory for ``--model``: the directory itself when it holds ``config.json``, else an
export of the checkpoint (a trainer run directory, its ``checkpoints/`` root, one ``iter_*`` directory, or a
converter checkpoint) made by ``convert.mcore_to_hf`` into a temporary directory inside the output directory
(where there is room for a model; ``/tmp`` often has none) and removed afterwards.

The export runs in a child process (``python -m megatron_truncdistill.evaluation.export``): megatron-core, its
one-rank gloo world and, on CPU machines, the CPU runtime's CUDA-to-CPU mapping stay out of the process that then
samples on the GPU, and the exporting model's memory is returned before vLLM or transformers take theirs.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

from megatron_truncdistill.errors import UserError

EXPORT_TIMEOUT_S = 6 * 3600


def is_hf_model_dir(path: Path) -> bool:
    return (path / "config.json").is_file()


@contextlib.contextmanager
def hf_model_dir(model: str | Path, *, tokenizer: str | Path | None, scratch: Path,
                 log=print) -> Iterator[Path]:
    """``model`` itself when it is a HF directory, else a temporary HF export of the checkpoint."""
    path = Path(model)
    if is_hf_model_dir(path):
        yield path
        return
    scratch.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=scratch, prefix=".hf_export_") as tmp:
        out = Path(tmp) / "hf"
        log(f"exporting checkpoint {path} to a temporary HF directory ({out}) ...")
        start = time.perf_counter()
        _export_in_child(path, out, tokenizer=tokenizer)
        log(f"exported in {time.perf_counter() - start:.1f} s")
        yield out


def _export_in_child(checkpoint: Path, out: Path, *, tokenizer: str | Path | None) -> None:
    cmd = [sys.executable, "-m", "megatron_truncdistill.evaluation.export", str(checkpoint), str(out)]
    if tokenizer is not None:
        cmd += ["--tokenizer", str(tokenizer)]
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=EXPORT_TIMEOUT_S)
    if proc.returncode == 2:  # the child's one-line user error
        lines = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
        raise UserError(f"--model {checkpoint}: " + (lines[-1][len("error: "):] if lines else proc.stderr))
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr)
        raise RuntimeError(f"exporting {checkpoint} failed with exit code {proc.returncode} (output above)")


def _checkpoint_directory(path: Path) -> Path:
    """The checkpoint directory that ``path`` names (a run directory, a checkpoints root, or the directory)."""
    from megatron_truncdistill.checkpoint.train_state import LATEST_FILE, resolve_checkpoint

    if (path / "checkpoints" / LATEST_FILE).is_file():
        path = path / "checkpoints"
    try:
        return resolve_checkpoint(path)
    except FileNotFoundError:
        raise UserError(f"{path} is neither a HF model directory (config.json) nor a checkpoint of this "
                             f"project (metadata.json, or a root/run directory with '{LATEST_FILE}')") from None


def _tokenizer_directory(directory: Path, tokenizer: str | None) -> str:
    """``--tokenizer``, else the tokenizer directory the checkpoint records (the trainer writes its path)."""
    from megatron_truncdistill.checkpoint.model_checkpoint import read_model_meta

    if tokenizer is not None:
        return tokenizer
    recorded = (read_model_meta(directory).tokenizer or {}).get("path")
    if recorded and Path(recorded).is_dir():
        return recorded
    where = f"records {recorded}, which does not exist" if recorded else "records no tokenizer"
    raise UserError(f"checkpoint {directory} {where}; pass --tokenizer DIR (the HF tokenizer it was trained "
                         "with)")


def export_checkpoint(checkpoint: str | Path, out_dir: str | Path, *, tokenizer: str | None = None) -> None:
    """Export in this process (one gloo rank): the child's job; ``hf_model_dir`` is what callers use."""
    from megatron_truncdistill.convert.cli import single_process_world
    from megatron_truncdistill.convert.mcore_to_hf import mcore_to_hf

    directory = _checkpoint_directory(Path(checkpoint))
    tokenizer_dir = _tokenizer_directory(directory, tokenizer)
    with single_process_world():
        mcore_to_hf(directory, out_dir, tokenizer_dir=tokenizer_dir, progress=False)


def main(argv: list[str] | None = None) -> int:
    from megatron_truncdistill.convert.hf_io import ConversionError

    parser = argparse.ArgumentParser(description="Export a checkpoint of this project to a HF directory.")
    parser.add_argument("checkpoint")
    parser.add_argument("out_dir")
    parser.add_argument("--tokenizer", default=None)
    args = parser.parse_args(argv)
    from megatron_truncdistill.runtime import warm_imports  # noqa: F401  (silences TE/apex import warnings)

    try:
        export_checkpoint(args.checkpoint, args.out_dir, tokenizer=args.tokenizer)
    except (UserError, ConversionError, FileNotFoundError, NotImplementedError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
