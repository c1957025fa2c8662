"""megatron-truncdistill: distill a reasoning teacher into a smaller student on lead-span-truncated traces.

Layers, bottom to top. A module imports only from its own layer or below, and imports within a layer form no
cycle (tests/test_layers.py checks both, and that every module is placed here):

  1 pure Python        sections, errors, layout, config, math_answers
  2 building blocks    mcore_compat, runtime, parallel, dtypes, tokenization, losses
  3 data and models    preprocess, data, models, flops
  4 checkpoints        checkpoint
  5 the run            training, planning
  6 HF interop         convert
  7 evaluation         evaluation
  8 entry points       train, experiments, study
  9 the demo           quickstart

tools/, examples/, benchmarks/ and tests/ sit outside the package and are never imported by it.
"""

__version__ = "0.1.0"
