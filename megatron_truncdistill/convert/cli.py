"""``truncdistill-convert hf-to-mcore | mcore-to-hf``: the converter's command line (tools/ holds a shim).

Error policy (``errors.cli_main``): bad input is one ``error: ...`` line naming the file, tensor or option and the
fix, exit 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import sys
import tempfile

from megatron_truncdistill.errors import UserError, cli_main


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Convert between Hugging Face and megatron-core checkpoints.")
    sub = parser.add_subparsers(dest="command", required=True)
    to_mcore = sub.add_parser("hf-to-mcore", help="HF safetensors directory → megatron-core dist checkpoint")
    to_mcore.add_argument("--input", required=True, help="HF model directory (config.json + safetensors)")
    to_mcore.add_argument("--output", required=True, help="checkpoint directory to create")
    to_mcore.add_argument("--padded-vocab-size", type=int, default=None,
                          help="embedding rows to store (default: HF rows rounded up to --vocab-divisible-by)")
    to_mcore.add_argument("--vocab-divisible-by", type=int, default=128)
    to_mcore.add_argument("--overwrite", action="store_true",
                          help="replace an existing output, once the new one is complete")
    to_hf = sub.add_parser("mcore-to-hf", help="checkpoint of this project (any TP/PP) → HF safetensors")
    to_hf.add_argument("--input", required=True,
                       help="a model checkpoint, a trainer iteration (iter_*), or a run's checkpoints/ root "
                            "(follows 'latest')")
    to_hf.add_argument("--output", required=True, help="HF directory to create")
    to_hf.add_argument("--tokenizer", default=None,
                       help="directory whose tokenizer files (and generation_config.json, when the checkpoint "
                            "records none) are copied alongside, e.g. the base model's HF directory")
    to_hf.add_argument("--max-shard-gb", type=float, default=5.0)
    to_hf.add_argument("--overwrite", action="store_true",
                       help="replace an existing output, once the new one is complete")
    return parser


@contextlib.contextmanager
def single_process_world():
    """A torch.distributed world of one CPU process (gloo): dist_checkpointing is collective even alone."""
    import torch.distributed as dist

    from megatron_truncdistill.runtime import enable_cpu_runtime

    if dist.is_initialized():
        if dist.get_world_size() != 1:
            raise UserError("run the converter as a single process (not under torchrun with several ranks)")
        yield
        return
    enable_cpu_runtime()
    with tempfile.TemporaryDirectory(prefix="convert_store_") as tmp:
        store = dist.FileStore(f"{tmp}/store", 1)
        dist.init_process_group("gloo", store=store, rank=0, world_size=1, timeout=datetime.timedelta(hours=2))
        try:
            yield
        finally:
            dist.destroy_process_group()


def _precheck(args: argparse.Namespace) -> None:
    """Refuse the cheap-to-detect bad inputs before paying for megatron-core's imports (~10 s)."""
    from pathlib import Path

    from megatron_truncdistill.convert.output_dir import check_output

    inputs = {"--input": args.input, "--tokenizer": getattr(args, "tokenizer", None)}
    check_output(args.output, inputs, overwrite=args.overwrite)
    if not Path(args.input).is_dir():
        raise UserError(f"--input {args.input}: no such directory")
    if args.command == "hf-to-mcore":
        from megatron_truncdistill.convert.hf_io import read_hf_architecture

        read_hf_architecture(Path(args.input))


@cli_main
def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    _precheck(args)
    from megatron_truncdistill.runtime import warm_imports  # noqa: F401  (silences TE/apex import warnings)

    if args.command == "hf-to-mcore":
        from megatron_truncdistill.convert.hf_to_mcore import hf_to_mcore

        with single_process_world():
            hf_to_mcore(args.input, args.output, overwrite=args.overwrite, padded_vocab=args.padded_vocab_size,
                        vocab_divisible_by=args.vocab_divisible_by)
    else:
        from megatron_truncdistill.convert.mcore_to_hf import mcore_to_hf

        with single_process_world():
            mcore_to_hf(args.input, args.output, tokenizer_dir=args.tokenizer, overwrite=args.overwrite,
                        max_shard_bytes=int(args.max_shard_gb * 1024**3))
    print(f"wrote {args.output}", file=sys.stderr)
    return 0
