#!/usr/bin/env python
"""Hugging Face ↔ megatron-core checkpoints; see megatron_truncdistill/convert/README.md.

    python tools/convert_checkpoint.py hf-to-mcore --input HF_DIR --output CKPT_DIR [--overwrite]
    python tools/convert_checkpoint.py mcore-to-hf --input CKPT --output HF_DIR [--tokenizer DIR] [--overwrite]

CKPT is a model checkpoint, one trainer iteration (iter_*), or a run's checkpoints/ root (follows 'latest').
"""

import sys

from megatron_truncdistill.convert.cli import main

if __name__ == "__main__":
    sys.exit(main())
