"""``truncdistill_provenance.json``: what an export says about the checkpoint and run it came from (README.md).

The summary fields (``PROVENANCE_FIELDS``: step, LSP, protocol, teacher, data manifests) are taken from the
trainer's ``truncdistill_train.json`` when it records them, else from ``ModelMeta.extra``, else null; the two
sources are also copied verbatim (``training``, ``model_extra``) so nothing the trainer recorded is lost.
"""

from __future__ import annotations

import datetime
from pathlib import Path

from megatron_truncdistill import __version__
from megatron_truncdistill.checkpoint.model_checkpoint import ModelMeta

PROVENANCE_NAME = "truncdistill_provenance.json"
PROVENANCE_FORMAT_VERSION = 1
PROVENANCE_FIELDS = ("step", "lsp", "protocol", "teacher", "data_manifests")
"""Keys the trainer records in ``truncdistill_train.json`` (or a converter in ``ModelMeta.extra``)."""


def export_provenance(meta: ModelMeta, training: dict | None, *, source: Path,
                      generation_config_source: str | None) -> dict:
    """The provenance record of an export of the checkpoint ``source`` (``training``: its trainer JSON or None)."""
    record = {
        "format_version": PROVENANCE_FORMAT_VERSION,
        "exported_by": f"megatron-truncdistill {__version__}",
        "exported_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "source_checkpoint": str(source.resolve()),
        "source_kind": "trainer" if training is not None else "model",
    }
    for key in PROVENANCE_FIELDS:
        record[key] = (training or {}).get(key, meta.extra.get(key))
    record.update(
        architecture=meta.architecture.hf_architecture,
        params_dtype=meta.params_dtype,
        vocab_size=meta.vocab_size,
        padded_vocab_size=meta.padded_vocab_size,
        tokenizer=meta.tokenizer,
        generation_config_source=generation_config_source,
        training=training,
        model_extra=meta.extra,
    )
    return record


def describe_source(source: Path, training: dict | None) -> str:
    """``PATH (step N)`` for messages about a checkpoint."""
    step = (training or {}).get("step")
    return f"{source} (step {step})" if step is not None else str(source)
