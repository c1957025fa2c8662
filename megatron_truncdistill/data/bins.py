"""Open one preprocessed prefix: the token and section IndexedDatasets, checked against each other and the manifest."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from megatron.core.datasets.indexed_dataset import IndexedDataset

from megatron_truncdistill.preprocess.manifest import check_tokenizer, load_manifest


@dataclass
class SectionedBins:
    """``PREFIX_tokens`` and ``PREFIX_sections``: document i is ``(tokens[i], sections[i])``, equal lengths."""

    prefix: str
    tokens: IndexedDataset
    sections: IndexedDataset
    manifest: dict

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def document_lengths(self) -> np.ndarray:
        return self.tokens.sequence_lengths

    def document(self, index: int, *, limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Token ids (int64) and section codes (uint8) of one document, clipped to ``limit`` tokens."""
        length = int(self.tokens.sequence_lengths[index])
        length = length if limit is None else min(length, limit)
        tokens = self.tokens.get(index, 0, length).astype(np.int64)
        sections = self.sections.get(index, 0, length)
        return tokens, sections


def open_bins(prefix: str, *, tokenizer) -> SectionedBins:
    """Open a prefix; refuse bins made with another tokenizer or whose two halves disagree (naming the prefix)."""
    for suffix in ("_tokens.bin", "_tokens.idx", "_sections.bin", "_sections.idx"):
        if not Path(prefix + suffix).is_file():
            raise FileNotFoundError(f"data.prefixes: {prefix}{suffix} is missing (run tools/preprocess.py)")
    manifest = load_manifest(prefix)
    try:
        check_tokenizer(manifest, tokenizer)
    except ValueError as err:
        raise ValueError(f"data.prefixes: {prefix}: {err}") from None
    tokens = IndexedDataset(prefix + "_tokens", mmap=True)
    sections = IndexedDataset(prefix + "_sections", mmap=True)
    if not np.array_equal(tokens.sequence_lengths, sections.sequence_lengths):
        raise ValueError(f"data.prefixes: {prefix}: token and section bins have different document lengths")
    return SectionedBins(prefix, tokens, sections, manifest)
