#!/usr/bin/env python
"""Run a truncation study: ``python tools/study.py examples/study_tiny.yaml`` (see megatron_truncdistill/study.py)."""

import sys

from megatron_truncdistill.study import main

if __name__ == "__main__":
    sys.exit(main())
