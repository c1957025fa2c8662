#!/usr/bin/env python
"""Evaluate a model the way the paper does; see megatron_truncdistill/evaluation/README.md.

    python tools/evaluate.py generate --model HF_DIR|CHECKPOINT --benchmark FILE.jsonl ... --output DIR
    python tools/evaluate.py grade --generations DIR/generations.jsonl --output-json DIR/grades.json
    python tools/evaluate.py compare RUN_DIR [RUN_DIR ...] [--reference RUN] [--output DIR]
"""

import sys

from megatron_truncdistill.evaluation.cli import main

if __name__ == "__main__":
    sys.exit(main())
