"""The files of an evaluation run directory (README.md beside this file): the generations cache and the JSONs.

``generations.jsonl`` is append-only: ``append`` writes a batch of complete records with one ``write`` and an
``fsync``, so a kill leaves every earlier record intact and at most one partial last line, which ``read`` ignores
and ``GenerationsFile`` cuts off before it appends again. A damaged line anywhere else is refused (one line naming
the file and line): a resumed run must never silently lose a record. JSONs are written beside and renamed.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable

from megatron_truncdistill.errors import UserError

GENERATIONS_FILE = "generations.jsonl"
SETTINGS_FILE = "run.json"
GRADES_FILE = "grades.json"
RECORD_FIELDS = ("benchmark", "source", "index", "problem", "answer", "generations")


def record_key(record: dict) -> tuple[str, str, int]:
    """The identity of a record: (benchmark, source file name, index in the file), as ``Problem.key``."""
    return (record["benchmark"], record["source"], record["index"])


def write_json_atomic(path: str | Path, payload) -> None:
    """Write ``payload`` beside ``path`` and rename it over, so a reader never sees half a file."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def read_json(path: str | Path, *, what: str) -> dict:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} {path} not found")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise UserError(f"{path}: not JSON ({err.msg}); it is not a {what}") from None


def _parse_line(path: Path, line_no: int, line: str) -> dict:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as err:
        raise UserError(f"{path} line {line_no}: damaged record ({err.msg}); only a partial last line "
                             "is tolerated, so restore the file or start a new --output") from None
    missing = [f for f in RECORD_FIELDS if not isinstance(record, dict) or f not in record]
    if not missing and not isinstance(record["generations"], list):
        missing = ["generations (a list)"]
    if missing:
        raise UserError(f"{path} line {line_no}: not a generations record (missing {', '.join(missing)}); "
                             f"expected fields {', '.join(RECORD_FIELDS)}")
    return record


def read_generations(path: str | Path) -> list[dict]:
    """The complete records of a generations file, in file order; a partial last line is ignored."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"generations file {path} not found")
    text = path.read_text(encoding="utf-8")
    complete = text if text.endswith("\n") else text[: text.rfind("\n") + 1]  # drop a line cut by a kill
    records, seen = [], {}
    for line_no, line in enumerate(complete.splitlines(), start=1):
        if not line.strip():
            continue
        record = _parse_line(path, line_no, line)
        key = record_key(record)
        if key in seen:
            raise UserError(f"{path} line {line_no}: {key} already appears on line {seen[key]}; the file "
                                 "was edited or two runs wrote to it at once")
        seen[key] = line_no
        records.append(record)
    return records


class GenerationsFile:
    """The append-only cache of one run directory: what is already generated, and appending more."""

    def __init__(self, directory: str | Path):
        self.path = Path(directory) / GENERATIONS_FILE

    def completed(self) -> dict[tuple[str, str, int], dict]:
        """key → record of every record on disk (empty when the file does not exist yet)."""
        if not self.path.exists():
            return {}
        return {record_key(r): r for r in read_generations(self.path)}

    def drop_partial_tail(self) -> None:
        """Cut a partial last line (a kill during ``append``) so the next append starts on a fresh line."""
        if not self.path.exists():
            return
        with open(self.path, "rb+") as f:
            data = f.read()
            if data and not data.endswith(b"\n"):
                f.truncate(data.rfind(b"\n") + 1)

    def append(self, records: Iterable[dict]) -> None:
        """Append complete records with one write, then flush to disk (each batch survives a later kill)."""
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
        if not text:
            return
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())


def check_settings(directory: str | Path, settings: dict, *, has_records: bool) -> None:
    """Record the run's settings, or refuse to resume a directory generated with other ones.

    Generations of one run must come from one model and one decoding setup; resuming with, say, another
    temperature would mix two distributions in one pass@1. Before any record exists the settings may change.
    """
    path = Path(directory) / SETTINGS_FILE
    if path.exists() and has_records:
        previous = read_json(path, what="run settings file")
        changed = [k for k in settings if previous.get(k) != settings[k]]
        if changed:
            k = changed[0]
            raise UserError(f"{path}: this directory was generated with {k}={previous.get(k)!r}, not "
                                 f"{settings[k]!r}; rerun with the same settings to resume, or pass a new --output")
        return
    write_json_atomic(path, settings)
