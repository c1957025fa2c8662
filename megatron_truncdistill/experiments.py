"""Building blocks shared by the quickstart and ``tools/study.py``: preprocess, launch the trainer, evaluate.

Each block is the product's own entry point (the preprocessing pipeline, ``torchrun -m megatron_truncdistill.train``,
greedy generation on a loaded checkpoint), so a study measures exactly what users run.
"""

from __future__ import annotations

import collections
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import yaml


def log(message: str, *, tag: str = "experiment") -> None:
    print(f"[{tag} {time.strftime('%H:%M:%S')}] {message}", flush=True)


def preprocess_corpus(inputs: list[str], *, tokenizer: str, prefix: str | Path, truncation: str = "lead-span",
                      lsp: str | None = "1.0", keep: str | None = None, workers: int = 1) -> dict:
    """Run the preprocessing pipeline in this process; returns the manifest."""
    from megatron_truncdistill.preprocess.document import FilterConfig, Job
    from megatron_truncdistill.preprocess.pipeline import PreprocessConfig, run
    from megatron_truncdistill.preprocess.records import RecordSpec
    from megatron_truncdistill.preprocess.truncation import make_policy

    job = Job(tokenizer=str(tokenizer), chat_format=None, spec=RecordSpec(),
              policy=make_policy(truncation, lsp=lsp, keep=keep), filters=FilterConfig())
    return run(PreprocessConfig(inputs=[str(p) for p in inputs], output_prefix=str(prefix), job=job,
                                workers=workers, overwrite=True, progress=False))


def launch_trainer(config: dict, *, path: Path, ranks: int, overrides: list[str] = (), tag: str = "experiment") -> float:
    """Write ``config`` as YAML and run it under torchrun on ``ranks`` local processes; returns wall seconds."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={ranks}",
           "-m", "megatron_truncdistill.train", "--config", str(path), *overrides]
    log("torchrun " + " ".join(cmd[3:]), tag=tag)
    start = time.perf_counter()
    env = dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    tail: collections.deque[str] = collections.deque(maxlen=40)  # the trainer's last lines, for the error
    with subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc:
        for line in proc.stdout:  # echoed live: the trainer's progress is the experiment's progress
            sys.stdout.write(line)
            tail.append(line)
    if proc.returncode != 0:
        raise RuntimeError(f"trainer failed with exit code {proc.returncode} (config {path}); its last lines:\n"
                           + "".join(tail))
    return time.perf_counter() - start


def evaluate_checkpoints(checkpoints: dict[str, Path], *, tokenizer: str | Path, records: list[dict],
                         extract: Callable[[str], str | None], group_key: str | None = None,
                         max_new_tokens: int = 160, budget_forcing: bool = False, tag: str = "experiment") -> dict:
    """Exact-match accuracy of each checkpoint (one rank in this process, TP1/PP1, on its device: the GPU where
    there is one), optionally per group.

    With ``budget_forcing`` (s1), ``max_new_tokens`` is the thinking budget, after which an unclosed thinking is
    closed and the answer read greedily; the results then also hold the unforced accuracy and the forced fraction.
    """
    from megatron_truncdistill.evaluation.exact_match import evaluate_exact_match
    from megatron_truncdistill.evaluation.load import load_for_eval
    from megatron_truncdistill.parallel import destroy_parallel, initialize_parallel
    from megatron_truncdistill.runtime import enable_cpu_runtime
    from megatron_truncdistill.tokenization import load_tokenizer
    from megatron_truncdistill.train import distributed_session

    tok = load_tokenizer(tokenizer)
    groups = sorted({r[group_key] for r in records}) if group_key else [None]
    results = {}
    enable_cpu_runtime()
    with distributed_session():
        initialize_parallel(1, 1, seed=0)
        for name, checkpoint in checkpoints.items():
            model, _ = load_for_eval(checkpoint)
            per_group, correct, unforced, forced = {}, 0, 0, 0
            for group in groups:
                subset = [r for r in records if group is None or r[group_key] == group]
                res = evaluate_exact_match(model, tok, subset, extract=extract, max_new_tokens=max_new_tokens,
                                           budget_forcing=budget_forcing)
                per_group[group or "all"] = res.accuracy
                correct += res.correct
                unforced += res.correct if res.correct_unforced is None else res.correct_unforced
                forced += res.forced
            n = max(len(records), 1)
            results[name] = {"accuracy": correct / n, "per_task": per_group}
            if budget_forcing:
                results[name].update(accuracy_unforced=unforced / n, forced_fraction=forced / n)
            log(f"{name}: accuracy {results[name]['accuracy']:.3f} "
                + ", ".join(f"{g} {a:.2f}" for g, a in per_group.items())
                + (f" (unforced {unforced / n:.3f}, forced {forced / n:.2f})" if budget_forcing else ""), tag=tag)
        destroy_parallel()
    return results


def run_costs(metrics_path: Path) -> dict:
    """Sum a run's metrics.jsonl: tokens, FLOPs, step time, peak memory."""
    rows = [json.loads(line) for line in metrics_path.read_text().splitlines()]
    steps = [r for r in rows if "loss" in r]
    flops = sum(r["tflops_per_device"] * 1e12 * r["step_time_s"] for r in steps)  # per device
    return {
        "steps": len(steps),
        "input_tokens": sum(r.get("input_tokens", 0) for r in steps),
        "loss_tokens": sum(r["tokens"] for r in steps),
        "flops_per_device": flops,
        "train_time_s": sum(r["step_time_s"] for r in steps),
        "mean_step_time_s": sum(r["step_time_s"] for r in steps) / max(len(steps), 1),
        "peak_mem_bytes": max(r["peak_mem_bytes"] for r in steps),
        "final_loss": steps[-1]["loss"] if steps else None,
    }
