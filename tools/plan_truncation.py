#!/usr/bin/env python
"""Predict tokens, FLOPs, memory and step time per LSP for a bins prefix and a teacher/student pair.

  python tools/plan_truncation.py --prefix data/corpus_lsp1.0 --student qwen3-4b --teacher qwen3-8b \
      --tensor-model-parallel-size 2 --data-parallel-size 4 --device h100 --output-dir plan/

``--student``/``--teacher`` take a preset name (see megatron_truncdistill/models/presets.py), a HF config.json or a
directory holding one. The prefix should be LSP 1.0 (or --truncation none): other LSPs are derived from it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import warnings

warnings.filterwarnings("ignore", message=".*(Transformer Engine|Apex).*")

from megatron.core.datasets.indexed_dataset import IndexedDataset  # noqa: E402

from megatron_truncdistill.flops import PEAK_TFLOPS_BF16, DecoderShape  # noqa: E402
from megatron_truncdistill.models.presets import PRESETS, preset  # noqa: E402
from megatron_truncdistill.planning import DEFAULT_LSPS, Layout, markdown_table, plot, predict  # noqa: E402
from megatron_truncdistill.preprocess.manifest import load_manifest  # noqa: E402


def _shape(spec: str | None) -> DecoderShape | None:
    if spec is None:
        return None
    if spec.lower() in PRESETS:
        return DecoderShape.from_hf(preset(spec))
    path = Path(spec)
    path = path / "config.json" if path.is_dir() else path
    if not path.is_file():
        raise SystemExit(f"error: {spec} is neither a preset ({', '.join(PRESETS)}) nor a config.json")
    return DecoderShape.from_hf(json.loads(path.read_text()))


def _lengths(prefix: str):
    manifest = load_manifest(prefix)
    truncation = manifest.get("truncation", {})
    if truncation.get("kind") not in ("none", None) and str(truncation.get("lsp")) not in ("1", "1.0", "None"):
        print(f"warning: {prefix} was made with {truncation}; predictions treat its documents as untruncated",
              file=sys.stderr)
    dataset = IndexedDataset(prefix + "_tokens", mmap=True)
    return dataset.sequence_lengths.astype("int64")  # a copy: the memory map closes with ``dataset``


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--prefix", required=True, help="bins prefix written by tools/preprocess.py (LSP 1.0)")
    p.add_argument("--student", required=True)
    p.add_argument("--teacher", default=None, help="omit for student-only training")
    p.add_argument("--tensor-model-parallel-size", type=int, default=1)
    p.add_argument("--pipeline-model-parallel-size", type=int, default=1)
    p.add_argument("--data-parallel-size", type=int, default=1)
    p.add_argument("--micro-batch-size", type=int, default=1)
    p.add_argument("--global-batch-size", type=int, default=None, help="documents per step (for step time)")
    p.add_argument("--loss-chunk-tokens", type=int, default=None, help="chunked/fused KD loss chunk (tokens)")
    p.add_argument("--device", choices=sorted(k.lower() for k in PEAK_TFLOPS_BF16), default=None)
    p.add_argument("--peak-tflops", type=float, default=None, help="per-device peak, overrides --device")
    p.add_argument("--mfu", type=float, default=0.4, help="assumed model FLOPs utilization for step time")
    p.add_argument("--lsp", type=float, nargs="*", default=list(DEFAULT_LSPS))
    p.add_argument("--output-dir", default=None, help="write plan.md, plan.json, plan.png here")
    args = p.parse_args(argv)
    peak = args.peak_tflops or (PEAK_TFLOPS_BF16[args.device.upper()] if args.device else None)
    layout = Layout(args.tensor_model_parallel_size, args.pipeline_model_parallel_size, args.data_parallel_size,
                    args.micro_batch_size, loss_chunk_tokens=args.loss_chunk_tokens)
    rows = predict(_lengths(args.prefix), _shape(args.student), _shape(args.teacher), layout,
                   lsps=sorted(args.lsp), peak_tflops=peak, mfu=args.mfu, samples_per_step=args.global_batch_size)
    table = markdown_table(rows)
    print(table)
    if args.output_dir:
        out = Path(args.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "plan.md").write_text(table + "\n")
        (out / "plan.json").write_text(json.dumps([r.as_dict() for r in rows], indent=2) + "\n")
        plot(rows, str(out / "plan.png"))
        print(f"wrote {out / 'plan.md'}, plan.json, plan.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
