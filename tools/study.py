#!/usr/bin/env python
"""Run a truncation study: ``python tools/study.py examples/study_tiny.yaml`` (see megatron_truncdistill/study.py)."""

from __future__ import annotations

import argparse
import sys

from megatron_truncdistill.study import load_study, run_study, write_results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep", help="study YAML")
    parser.add_argument("--out-dir", default=None, help="override the YAML's out_dir")
    args = parser.parse_args(argv)
    study = load_study(args.sweep)
    if args.out_dir:
        study["out_dir"] = args.out_dir
    rows = run_study(study)
    print(write_results(rows, study["out_dir"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
