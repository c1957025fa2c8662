"""Peak extra memory and time of the KD losses against the straightforward implementation, forward + backward.

Variants (forward KL, T = 1, every token weighted 1):
  straightforward        fp32 ``log_softmax`` of both models' logits + ``F.kl_div`` (autograd). At TP > 1 the same
                         with the log-softmax normalizer and the loss all-reduced by differentiable collectives
                         (``torch.distributed.nn``), i.e. the full-shard fp32 approach of ModelOpt's LogitsKLLoss.
  chunked                ``vocab_parallel_kd_loss`` (closed-form backward, chunked; the returned gradient is one
                         logits-sized tensor).
  chunked_inplace        the same with ``inplace_backward=True`` (gradient written into the logits' storage).
  linear_straightforward logits = hidden @ weightᵀ for both models, then ``straightforward``.
  fused                  ``fused_linear_kd_loss`` from hidden states and output weights.

Memory on CPU: each variant runs in fresh processes (one per TP rank, one thread each); peak extra = VmHWM after
one forward + backward minus VmRSS with the inputs allocated (``/proc/self/clear_refs`` resets the high-water mark
first); the largest rank is reported. Time: the fastest of ``1 + --reps`` iterations, as wall clock and as process
CPU time (slowest rank). CPU time is the figure to compare on a shared machine: wall clock there measures the
neighbours' load as much as the loss (the JSON records the load average). Page faults of fresh allocations are
included in both: they are part of the straightforward implementation's cost. On a GPU (only when CUDA is
available) the same variants run on one device in bf16 with ``torch.cuda`` memory statistics.

Run: .venv/bin/python benchmarks/kd_loss.py     (4,096 tokens × 151,936 vocabulary, TP 1 and 2; ~10 min)
     python benchmarks/kd_loss.py --device-section-only       (the GPU section alone: benchmarks/gpu_check.py)
     python benchmarks/kd_loss.py --device-section-only --device cpu --tokens 256 --vocab 4096   (its dry run)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VARIANTS = ("straightforward", "chunked", "chunked_inplace", "linear_straightforward", "fused")
BASELINE = {"chunked": "straightforward", "chunked_inplace": "straightforward", "fused": "linear_straightforward"}


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def _mem_available_gib() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 2**20
    return float("nan")


def _straightforward(zs, zt, group):
    """Per-token forward KL with autograd on full fp32 copies of the shards."""
    import torch
    import torch.nn.functional as F

    if group is None:
        ls, lt = F.log_softmax(zs.float(), dim=-1), F.log_softmax(zt.float(), dim=-1)
        return F.kl_div(ls, lt, reduction="none", log_target=True).sum(-1)
    import torch.distributed as dist
    import torch.distributed.nn.functional as dist_nn  # differentiable collectives (deprecated in 2.13, still work)

    def log_softmax(z):
        z = z.float()
        zmax = z.detach().amax(-1, keepdim=True)
        dist.all_reduce(zmax, op=dist.ReduceOp.MAX, group=group)
        shifted = z - zmax
        return shifted - dist_nn.all_reduce(shifted.exp().sum(-1, keepdim=True), group=group).log()

    with torch.no_grad():
        lt = log_softmax(zt)
    return dist_nn.all_reduce(F.kl_div(log_softmax(zs), lt, reduction="none", log_target=True).sum(-1), group=group)


def _make_inputs(variant, args, rank, tp, device, dtype):
    """Leaf tensors of this rank: logits ``[t, 1, v/tp]`` or hidden ``[t, 1, h]`` + weights ``[v/tp, h]``."""
    import torch

    g = torch.Generator(device=device).manual_seed(1234 + rank)
    width = args.vocab // tp

    def randn(*shape):
        """Random rows, 256 drawn and tiled: drawing 600M normals per input took longer than the loss."""
        block = torch.randn(min(shape[0], 256), *shape[1:], generator=g, device=device)
        reps = -(-shape[0] // block.shape[0])
        return block.repeat(reps, *([1] * (len(shape) - 1)))[: shape[0]].to(dtype)

    if variant in ("linear_straightforward", "fused"):
        scale = args.hidden**-0.5 * 4
        return dict(hs=randn(args.tokens, 1, args.hidden).requires_grad_(),
                    w=(randn(width, args.hidden) * scale).requires_grad_(),
                    ht=randn(args.tokens, 1, args.hidden), wt=randn(width, args.hidden) * scale)
    return dict(zs=(randn(args.tokens, 1, width) * 3).requires_grad_(), zt=randn(args.tokens, 1, width) * 3)


def _step(variant, x, group):
    """One forward + backward of ``variant``; returns the loss (detached)."""
    import torch
    import torch.distributed as dist

    from megatron_truncdistill.losses import fused_linear_kd_loss, vocab_parallel_kd_loss

    if variant == "straightforward":
        loss = _straightforward(x["zs"], x["zt"], group).sum()
    elif variant in ("chunked", "chunked_inplace"):
        loss = vocab_parallel_kd_loss(x["zs"], x["zt"], tp_group=group,
                                      inplace_backward=variant == "chunked_inplace").sum()
    elif variant == "linear_straightforward":
        with torch.no_grad():
            zt = x["ht"] @ x["wt"].t()
        loss = _straightforward(x["hs"] @ x["w"].t(), zt, group).sum()
    else:
        loss = fused_linear_kd_loss(x["hs"], x["w"], x["ht"], x["wt"], tp_group=group)
    loss.backward()
    if variant == "linear_straightforward" and group is not None:
        dist.all_reduce(x["hs"].grad, group=group)  # what the output layer's input copy does in its backward
    for leaf in x.values():
        leaf.grad = None
    return loss.item()


def worker(args) -> None:
    """One rank of one CPU variant: print {"peak_extra_bytes", "times"} as JSON."""
    import torch
    import torch.distributed as dist

    warnings.simplefilter("ignore", FutureWarning)  # torch.distributed.nn's deprecation notice, once per call
    tp = args.tp[0]
    torch.set_num_threads(1)  # ranks of one variant must not compete for the cores; see the module docstring
    group = None
    if tp > 1:
        dist.init_process_group("gloo", store=dist.FileStore(args.store, tp), rank=args.rank, world_size=tp)
        group = dist.group.WORLD
    x = _make_inputs(args.worker, args, args.rank, tp, "cpu", torch.float32)
    torch.ones(1 << 20).exp_()  # start the thread pool before the baseline
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    base = _status_kib("VmRSS")
    times, cpu_times = [], []
    for _ in range(1 + args.reps):
        if group is not None:
            dist.barrier(group)
        start, cpu_start = time.perf_counter(), time.process_time()
        _step(args.worker, x, group)
        times.append(time.perf_counter() - start)
        cpu_times.append(time.process_time() - cpu_start)
        if len(times) == 1:
            peak = _status_kib("VmHWM") - base
    print(json.dumps({"peak_extra_bytes": peak * 1024, "times": times, "cpu_times": cpu_times}))


def run_cpu_variant(variant, tp, args) -> dict:
    """Launch ``tp`` fresh worker processes; the largest rank's memory and the slowest rank's time."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, __file__, "--worker", variant, "--tp", str(tp), "--store", f"{tmp}/store",
               "--tokens", str(args.tokens), "--vocab", str(args.vocab), "--hidden", str(args.hidden),
               "--reps", str(args.reps)]
        procs = [subprocess.Popen(cmd + ["--rank", str(r)], stdout=subprocess.PIPE, text=True, cwd=REPO)
                 for r in range(tp)]
        outs = [p.communicate(timeout=args.timeout)[0] for p in procs]
    if any(p.returncode for p in procs):
        raise RuntimeError(f"{variant} tp={tp} failed: exit codes {[p.returncode for p in procs]}")
    ranks = [json.loads(out.strip().splitlines()[-1]) for out in outs]
    slowest = lambda key: min(max(r[key][i] for r in ranks) for i in range(1 + args.reps))  # noqa: E731
    return {"variant": variant, "tp": tp, "device": "cpu",
            "peak_extra_gib": max(r["peak_extra_bytes"] for r in ranks) / 2**30, "time_s": slowest("times"),
            "cpu_s": slowest("cpu_times")}


def run_device_section(args, device: str = "cuda") -> list[dict]:
    """TP=1 on one device in bf16 (the GPU section; ``device="cpu"`` runs the same code as its dry run): peak
    extra memory from the caching allocator (CUDA only), time from synchronized wall clock, and for the loss-only
    variants the achieved bandwidth of the minimal traffic (read both logits, write the gradient) against
    ``--roofline-gbps``."""
    import torch

    cuda = device == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    results = []
    for variant in args.variants:
        x = _make_inputs(variant, args, 0, 1, device, torch.bfloat16)
        _step(variant, x, None)  # warm-up: kernels, allocator pools
        sync()
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated() if cuda else 0
        times = []
        for _ in range(args.reps):
            sync()
            start = time.perf_counter()
            _step(variant, x, None)
            sync()
            times.append(time.perf_counter() - start)
        row = {"variant": variant, "tp": 1, "device": torch.cuda.get_device_name() if cuda else "cpu-dry-run",
               "peak_extra_gib": (torch.cuda.max_memory_allocated() - base) / 2**30 if cuda else None,
               "time_s": min(times)}
        if variant in ("straightforward", "chunked", "chunked_inplace"):
            traffic = 3 * args.tokens * args.vocab * 2  # bytes: two bf16 logits read, one bf16 gradient written
            row["achieved_gbps"] = traffic / row["time_s"] / 1e9
            row["roofline_fraction"] = row["achieved_gbps"] / args.roofline_gbps
        results.append(row)
        del x
        if cuda:
            torch.cuda.empty_cache()
    return results


def _estimated_gib(variant, args) -> float:
    """Rough resident need of all ranks together, to skip a variant instead of invoking the OOM killer on a shared
    machine: inputs plus, for the autograd baselines, about five fp32 logits-sized tensors."""
    logits = args.tokens * args.vocab * 4 / 2**30
    return {"straightforward": 7, "chunked": 3.2, "chunked_inplace": 2.2, "linear_straightforward": 7.2,
            "fused": 0.6}[variant] * logits


def _add_ratios(rows: list[dict]) -> None:
    by_key = {(r["variant"], r["tp"], r["device"]): r for r in rows}
    for r in rows:
        base = by_key.get((BASELINE.get(r["variant"], r["variant"]), r["tp"], r["device"]))
        if base:
            if r["peak_extra_gib"] is not None and base["peak_extra_gib"]:
                r["mem_ratio"] = r["peak_extra_gib"] / base["peak_extra_gib"]
            r["time_ratio"] = r["time_s"] / base["time_s"]
            if "cpu_s" in r:
                r["cpu_ratio"] = r["cpu_s"] / base["cpu_s"]


def _print_table(rows: list[dict]) -> None:
    nan = float("nan")
    print(f"{'variant':<24}{'tp':>3}  {'device':<8}{'peak extra GiB':>15}{'× base':>8}{'cpu s':>8}{'× base':>8}"
          f"{'wall s':>8}{'× base':>8}")
    for r in rows:
        peak = nan if r["peak_extra_gib"] is None else r["peak_extra_gib"]
        print(f"{r['variant']:<24}{r['tp']:>3}  {r['device'][:8]:<8}{peak:>15.3f}"
              f"{r.get('mem_ratio', nan):>8.3f}{r.get('cpu_s', nan):>8.2f}{r.get('cpu_ratio', nan):>8.2f}"
              f"{r['time_s']:>8.2f}{r.get('time_ratio', nan):>8.2f}")


def _machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    import torch

    return {"cpu": cpu, "cores": os.cpu_count(), "mem_gib": round(os.sysconf("SC_PAGE_SIZE")
            * os.sysconf("SC_PHYS_PAGES") / 2**30, 1), "torch": torch.__version__,
            "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
            "load_avg_1_5_15": [round(x, 2) for x in os.getloadavg()]}


def _commit() -> str:
    run = lambda *a: subprocess.run(["git", *a], cwd=REPO, capture_output=True, text=True).stdout.strip()  # noqa
    dirty = run("status", "--porcelain", "--", "megatron_truncdistill/losses", "benchmarks/kd_loss.py")
    return run("rev-parse", "--short", "HEAD") + ("-dirty" if dirty else "")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", type=int, default=4096)
    p.add_argument("--vocab", type=int, default=151936)
    p.add_argument("--hidden", type=int, default=128, help="hidden size of the fused variants (GEMM cost on CPU)")
    p.add_argument("--tp", type=int, nargs="+", default=[1, 2])
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    p.add_argument("--reps", type=int, default=1, help="timed iterations after the first (which also times)")
    p.add_argument("--timeout", type=float, default=600)
    p.add_argument("--roofline-gbps", type=float, default=3350.0, help="GPU memory bandwidth (H100 SXM: 3350)")
    p.add_argument("--device-section-only", action="store_true", help="run only the single-device bf16 section")
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda",
                   help="with --device-section-only: cpu runs the section as a dry run (no memory statistics)")
    p.add_argument("--worker", choices=VARIANTS, help=argparse.SUPPRESS)
    p.add_argument("--rank", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--store", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args)
    rows = []
    for tp in ([] if args.device_section_only else args.tp):
        for variant in args.variants:
            need, free = _estimated_gib(variant, args), _mem_available_gib()
            print(f"running {variant} tp={tp} (needs ~{need:.1f} GiB, MemAvailable {free:.1f} GiB)", flush=True)
            if need > free:
                print("  skipped: not enough free memory on this shared machine")
                continue
            rows.append(run_cpu_variant(variant, tp, args))
    import torch

    if args.device_section_only and args.device == "cpu":
        rows += run_device_section(args, "cpu")
    elif torch.cuda.is_available():
        rows += run_device_section(args, "cuda")
    else:
        print("GPU section skipped: CUDA is not available on this machine")
    _add_ratios(rows)
    _print_table(rows)
    print(json.dumps({"benchmark": "kd_loss", "machine": _machine(), "commit": _commit(),
                      "tokens": args.tokens, "vocab": args.vocab, "hidden": args.hidden, "results": rows}))


if __name__ == "__main__":
    main()
