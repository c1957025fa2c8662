"""Evaluation of trained models.

- ``tools/evaluate.py`` (``cli``): the paper's protocol on HF models or this project's checkpoints: ``benchmarks``
  → ``generate`` (one pipeline; ``backends``: vLLM or transformers; ``export`` for checkpoints; ``run_files``: the
  resumable cache) → ``grading`` (math-verify, pass@1 with an interval) → ``compare`` (retention). README.md holds
  the file formats.
- The quickstart's and the study's in-process scorer: greedy generation on a megatron-core model (``greedy``,
  ``budget_forcing``, ``load``) scored by ``exact_match``, which uses the same answer equivalence
  (``megatron_truncdistill.math_answers``).
"""
