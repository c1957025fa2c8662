"""Reasoning corpora → pre-truncated, section-tagged megatron-core indexed datasets (``tools/preprocess.py``).

Modules, bottom-up: ``readers`` (inputs with provenance), ``records`` (layouts → Trace), ``rendering`` (chat template
→ text + section offsets), ``truncation`` (policies), ``document`` (a worker's chunk job), ``writer`` (bins,
atomically), ``manifest`` (metadata, read back by the trainer), ``pipeline`` (the run). Output format: README.md.
"""
