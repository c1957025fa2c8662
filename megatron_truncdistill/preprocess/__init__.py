"""Reasoning corpora → pre-truncated, section-tagged megatron-core indexed datasets (``truncdistill-preprocess``).

Modules, bottom-up: ``readers`` (inputs with provenance), ``records`` (layouts → Trace), ``rendering`` (chat template
→ text + section offsets), ``truncation`` (policies), ``protocol`` (the ``default``/``paper`` presets), ``document``
(a worker's chunk job), ``writer`` (bins, atomically), ``manifest`` (metadata, read back by the trainer),
``pipeline`` (the run), ``cli`` (the command line; ``tools/preprocess.py`` is a shim). Output format: README.md.
"""
