"""Output files of one preprocessing run, written under temporary names and renamed into place at the end.

Files per PREFIX (specified in README.md next to this module):
    PREFIX_tokens.bin/.idx      megatron-core IndexedDataset, token ids (uint16 when vocab < 65,500, else int32)
    PREFIX_sections.bin/.idx    megatron-core IndexedDataset, uint8 section codes, same lengths and documents
    PREFIX.rejects.jsonl        one line per record not written
    PREFIX.manifest.json        written last: its presence marks a complete output

Everything is first written into a hidden ``.NAME.partial-PID`` directory beside the prefix (same filesystem, so the
final renames are atomic); an interrupted or failed run removes that directory and leaves no file under a final name.
A run killed with SIGKILL cannot clean up: the next run to the same prefix removes such directories once their
writer (recorded in ``writer.json``: pid, host, process start time) is gone.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import warnings
from pathlib import Path

import numpy as np
import psutil
import torch

with warnings.catch_warnings():  # megatron.core's package import warns about TE/Apex, irrelevant to writing bins
    warnings.filterwarnings("ignore", message=".*Transformer Engine and Apex are not installed.*")
    from megatron.core.datasets.indexed_dataset import DType, IndexedDatasetBuilder

from megatron_truncdistill.preprocess.document import ChunkResult


class OutputError(Exception):
    """A fatal output problem; the message names the path and the fix."""


def output_files(prefix: str) -> dict[str, Path]:
    """Final path of every output file, keyed by a short name; the manifest comes last (it is renamed last)."""
    return {
        "tokens_bin": Path(f"{prefix}_tokens.bin"), "tokens_idx": Path(f"{prefix}_tokens.idx"),
        "sections_bin": Path(f"{prefix}_sections.bin"), "sections_idx": Path(f"{prefix}_sections.idx"),
        "rejects": Path(f"{prefix}.rejects.jsonl"), "manifest": Path(f"{prefix}.manifest.json"),
    }


_WRITER_FILE = "writer.json"
_OPEN_HERE: set[Path] = set()  # partial directories of writers open in this process (never stale)


def _writer_identity(pid: int) -> dict:
    return {"pid": pid, "host": socket.gethostname(), "started": psutil.Process(pid).create_time()}


def _writer_alive(directory: Path, pid: int) -> bool:
    """Whether the run that made a partial directory may still be writing it (when unsure: yes)."""
    if pid == os.getpid():
        return directory in _OPEN_HERE  # otherwise an earlier process had our pid
    try:
        recorded = json.loads((directory / _WRITER_FILE).read_text())
    except (OSError, ValueError):
        recorded = None  # made before writer.json existed, or killed before writing it: judge by the pid alone
    if recorded is not None and recorded.get("host") != socket.gethostname():
        return True  # another machine's run (shared filesystem): its processes are not visible here
    try:
        process = psutil.Process(pid)
        return recorded is None or abs(process.create_time() - recorded["started"]) < 1.0  # pid reused otherwise
    except psutil.NoSuchProcess:
        return False
    except (psutil.AccessDenied, KeyError, TypeError):
        return True


def remove_stale_partials(prefix: str) -> list[Path]:
    """Remove ``.NAME.partial-PID`` directories of this prefix whose writer is gone (runs killed with SIGKILL).

    Only this prefix's (``.out.partial-*`` never matches ``.out_v2.partial-*``), only directories. Returns them.
    """
    out_dir, name = Path(prefix).parent, Path(prefix).name
    pattern = re.compile(rf"\.{re.escape(name)}\.partial-(\d+)")
    removed = []
    for entry in sorted(out_dir.iterdir()) if out_dir.is_dir() else []:
        match = pattern.fullmatch(entry.name)
        if match and entry.is_dir() and not entry.is_symlink() and not _writer_alive(entry, int(match.group(1))):
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
    return removed


class DatasetWriter:
    """Appends documents to both bins in input order and commits all files at once."""

    def __init__(self, prefix: str, *, vocab_size: int, overwrite: bool = False) -> None:
        self.final = output_files(prefix)
        existing = [str(p) for p in self.final.values() if p.exists()]
        if existing and not overwrite:
            raise OutputError(f"{existing[0]}: output already exists; pass --overwrite or another --output-prefix")
        out_dir = Path(prefix).parent
        self.tmp_dir = out_dir / f".{Path(prefix).name}.partial-{os.getpid()}"
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
            self.removed_stale = remove_stale_partials(prefix)
            self.tmp_dir.mkdir()
            _OPEN_HERE.add(self.tmp_dir)
            (self.tmp_dir / _WRITER_FILE).write_text(json.dumps(_writer_identity(os.getpid())))
        except OSError as err:
            raise OutputError(f"{out_dir}: cannot create output files ({err.strerror}); "
                              "choose an --output-prefix in a writable directory") from err
        self.tmp = {k: self.tmp_dir / p.name for k, p in self.final.items()}
        self.token_dtype = DType.optimal_dtype(vocab_size)
        self.tokens = IndexedDatasetBuilder(str(self.tmp["tokens_bin"]), dtype=self.token_dtype)
        self.sections = IndexedDatasetBuilder(str(self.tmp["sections_bin"]), dtype=np.uint8)
        self.rejects = open(self.tmp["rejects"], "w", encoding="utf-8")

    def add(self, chunk: ChunkResult) -> None:
        """One document (one sequence) per record, as GPTDataset expects; rejects appended in the same order."""
        bounds = np.concatenate(([0], np.cumsum(chunk.lengths)))
        for a, b in zip(bounds[:-1].tolist(), bounds[1:].tolist()):
            self.tokens.add_item(torch.from_numpy(chunk.tokens[a:b]))
            self.tokens.end_document()
            self.sections.add_item(torch.from_numpy(chunk.sections[a:b]))
            self.sections.end_document()
        for reject in chunk.rejects:
            self.rejects.write(json.dumps(reject, ensure_ascii=False) + "\n")

    def commit(self, manifest: dict) -> None:
        """Finish the indices, write the manifest, and rename everything into place (manifest last)."""
        self.tokens.finalize(str(self.tmp["tokens_idx"]))
        self.sections.finalize(str(self.tmp["sections_idx"]))
        self.rejects.close()
        with open(self.tmp["manifest"], "w", encoding="utf-8") as f:
            json.dump(manifest, f, indent=2, ensure_ascii=False)
            f.write("\n")
        for key, path in self.final.items():
            os.replace(self.tmp[key], path)
        (self.tmp_dir / _WRITER_FILE).unlink()
        self.tmp_dir.rmdir()
        _OPEN_HERE.discard(self.tmp_dir)

    def abort(self) -> None:
        """Drop every temporary file; no file under a final name was touched."""
        for handle in (self.tokens.data_file, self.sections.data_file, self.rejects):
            handle.close()
        shutil.rmtree(self.tmp_dir, ignore_errors=True)
        _OPEN_HERE.discard(self.tmp_dir)
