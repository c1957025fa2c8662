#!/usr/bin/env python
"""Reasoning traces → pre-truncated, section-tagged megatron-core indexed bins; see megatron_truncdistill/preprocess.

    python tools/preprocess.py --input PATH [PATH ...] --output-prefix PREFIX --tokenizer TOKENIZER --workers N

The same command as ``truncdistill-preprocess`` (megatron_truncdistill/preprocess/cli.py).
"""

import sys

from megatron_truncdistill.preprocess.cli import main

if __name__ == "__main__":
    sys.exit(main())
