"""Streaming input readers: JSONL (plain, .gz, .zst), JSON arrays, Parquet, and ``datasets.save_to_disk`` folders.

Every record carries its provenance (file and 1-based line, or 0-based row) so a reject names where it came from.
JSONL lines stay raw bytes here: decoding and JSON parsing run in the worker processes, which keeps the reading
process (a single core) far from being the bottleneck. Memory is bounded by one line or one Arrow batch, except for
a JSON array file, which ``json`` can only load whole (use JSONL for large corpora).
"""

from __future__ import annotations

import glob
import gzip
import hashlib
import io
import json
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

ARROW_BATCH_ROWS = 1024
UTF8_BOM = b"\xef\xbb\xbf"


class InputError(Exception):
    """A fatal input problem; the message names the file (and line) and the fix."""


@dataclass(frozen=True)
class RawRecord:
    """One input record. payload: the raw JSONL line (bytes) or an already parsed row (dict)."""

    source: str
    index: int  # 1-based line number for JSONL, 0-based row for JSON arrays / Parquet / Arrow
    unit: str  # "line" or "row"
    payload: bytes | dict

    def where(self) -> dict:
        return {"source": self.source, self.unit: self.index}


def _is_hf_dataset_dir(path: Path) -> bool:
    return (path / "state.json").is_file() or (path / "dataset_dict.json").is_file()


def expand_inputs(patterns: list[str]) -> list[Path]:
    """Expand globs in order; a pattern matching nothing or a plain directory is fatal."""
    paths: list[Path] = []
    for pattern in patterns:
        matches = sorted(glob.glob(pattern, recursive=True)) if glob.has_magic(pattern) else [pattern]
        if not matches or not all(Path(m).exists() for m in matches):
            raise InputError(f"{pattern}: no such file; check the --input path or glob")
        for match in map(Path, matches):
            if match.is_dir() and not _is_hf_dataset_dir(match):
                raise InputError(f"{match}: is a directory without datasets' state.json/dataset_dict.json; "
                                 "pass its files or a glob such as 'DIR/*.jsonl'")
            paths.append(match)
    return paths


def _arrow_files(path: Path) -> list[Path]:
    """The Arrow shards of a ``save_to_disk`` folder, in order; a DatasetDict yields each split in its order."""
    if (path / "dataset_dict.json").is_file():
        splits = json.loads((path / "dataset_dict.json").read_text())["splits"]
        return [f for split in splits for f in _arrow_files(path / split)]
    state = json.loads((path / "state.json").read_text())
    return [path / entry["filename"] for entry in state["_data_files"]]


def input_files(path: Path) -> list[Path]:
    """The files whose bytes make up one input (one file, or a dataset folder's shards)."""
    return _arrow_files(path) if path.is_dir() else [path]


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


class Reader:
    """Iterates the records of several inputs in order; ``bytes_done`` / ``total_bytes`` drive the progress ETA."""

    def __init__(self, paths: list[Path]) -> None:
        self.paths = paths
        self.total_bytes = sum(f.stat().st_size for p in paths for f in input_files(p))
        self.bytes_done = 0
        self._base = 0  # bytes of the inputs already finished

    def __iter__(self) -> Iterator[RawRecord]:
        for path in self.paths:
            records = 0
            try:
                for record in self._records(path):
                    records += 1
                    yield record
            except InputError:
                raise
            except _read_errors() as err:  # unreadable, truncated or corrupt compressed streams
                raise InputError(f"{path}: cannot be read ({err}); check the file is complete and readable") from err
            if records == 0:
                raise InputError(f"{path}: empty input (no records); remove it from --input or check that the file "
                                 "was written completely")
            self._base += sum(f.stat().st_size for f in input_files(path))
            self.bytes_done = self._base

    def _records(self, path: Path) -> Iterator[RawRecord]:
        if path.is_dir():
            for shard in _arrow_files(path):
                yield from self._arrow(shard)
        elif path.suffix == ".parquet":
            yield from self._parquet(path)
        else:
            yield from self._json(path)

    def _json(self, path: Path) -> Iterator[RawRecord]:
        with open(path, "rb") as raw:
            stream = _decompress(raw, path)
            if stream.peek(len(UTF8_BOM)).startswith(UTF8_BOM):  # editors on Windows write one; it is not data
                stream.read(len(UTF8_BOM))
            if stream.peek(64).lstrip()[:1] == b"[":
                yield from _json_array(stream, str(path))
                return
            for lineno, line in enumerate(stream, 1):
                if line.strip():
                    yield RawRecord(str(path), lineno, "line", line)
                if lineno % 256 == 0:
                    self.bytes_done = self._base + raw.tell()

    def _parquet(self, path: Path) -> Iterator[RawRecord]:
        import pyarrow.parquet as pq

        row = 0
        for batch in pq.ParquetFile(path).iter_batches(batch_size=ARROW_BATCH_ROWS):
            for item in batch.to_pylist():
                yield RawRecord(str(path), row, "row", item)
                row += 1

    def _arrow(self, path: Path) -> Iterator[RawRecord]:
        import pyarrow as pa

        row = 0
        with pa.memory_map(str(path)) as source:
            for batch in pa.ipc.open_stream(source):
                for item in batch.to_pylist():
                    yield RawRecord(str(path), row, "row", item)
                    row += 1


def _read_errors() -> tuple[type[BaseException], ...]:
    """What a damaged input raises while it is read: OS errors (gzip's BadGzipFile is one), truncated streams
    (EOFError), corrupt deflate data (zlib.error, not an OSError), corrupt zstd frames, and Arrow's errors."""
    errors: list[type[BaseException]] = [OSError, EOFError, ValueError, zlib.error]
    if "zstandard" in sys.modules:  # imported by _decompress only when a .zst input is read
        errors.append(sys.modules["zstandard"].ZstdError)
    return tuple(errors)


def _decompress(raw: io.BufferedReader, path: Path) -> io.BufferedReader:
    if path.suffix == ".gz":
        return io.BufferedReader(gzip.GzipFile(fileobj=raw))
    if path.suffix in (".zst", ".zstd"):
        import zstandard

        return io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(raw))
    return raw


def _json_array(stream, source: str) -> Iterator[RawRecord]:
    data = stream.read()
    try:
        rows = json.loads(data)
    except UnicodeDecodeError as err:
        raise InputError(f"{source}: not UTF-8 at byte {err.start}; re-encode the file as UTF-8") from err
    except json.JSONDecodeError as err:
        raise InputError(f"{source}:{err.lineno}: malformed JSON array ({err.msg}, column {err.colno}); "
                         "fix the file or convert it to JSONL so bad lines become per-record rejects") from err
    if not isinstance(rows, list):
        raise InputError(f"{source}: top-level JSON value is {type(rows).__name__}; expected an array of records")
    for row, item in enumerate(rows):
        yield RawRecord(source, row, "row", item)
