"""The quickstart's results: one table (markdown + JSON + PNG) of accuracy against training cost per model/LSP."""

from __future__ import annotations

import os
import platform
from pathlib import Path

PAPER_HEADLINE = ("Chen et al. (2026), Qwen3-8B -> Qwen3-4B-Base, math benchmarks: LSP 0.5 keeps ~91% of "
                  "LSP 1.0 accuracy with ~50% less training time, memory and FLOPs.")


def _ratio(a, b):
    return a / b if (a is not None and b) else None


def build_rows(results: dict) -> list[dict]:
    """``results[name] = {"lsp", "accuracy", "per_task", "costs"}`` -> table rows with retention vs LSP 1.0."""
    base = results.get("student_lsp1.0")
    rows = []
    for name, r in results.items():
        c = r["costs"]
        row = {"model": name, "lsp": r["lsp"], "accuracy": r["accuracy"], "per_task": r["per_task"],
               "accuracy_unforced": r.get("accuracy_unforced"), "forced_fraction": r.get("forced_fraction"),
               "input_tokens": c["input_tokens"], "flops_per_device": c["flops_per_device"],
               "train_time_s": c["train_time_s"], "peak_mem_bytes": c["peak_mem_bytes"]}
        if base is not None and name.startswith("student"):
            bc = base["costs"]
            row.update(retention=_ratio(r["accuracy"], base["accuracy"]),
                       tokens_vs_1=_ratio(c["input_tokens"], bc["input_tokens"]),
                       flops_vs_1=_ratio(c["flops_per_device"], bc["flops_per_device"]),
                       time_vs_1=_ratio(c["train_time_s"], bc["train_time_s"]),
                       memory_vs_1=_ratio(c["peak_mem_bytes"], bc["peak_mem_bytes"]))
        rows.append(row)
    return rows


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def markdown(rows: list[dict], *, predicted: str | None, machine: str, eval_budget: int | None = None) -> str:
    lines = [f"# Quickstart results ({machine})", "",
             "| model | LSP | accuracy | without forcing | forced | retention vs LSP 1.0 | training tokens | "
             "FLOPs/device | wall time (s) | peak memory (GiB) | tokens / FLOPs / time / memory vs LSP 1.0 |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ratios = "/".join(_fmt(r.get(k), ".2f") for k in ("tokens_vs_1", "flops_vs_1", "time_vs_1", "memory_vs_1"))
        lines.append(f"| {r['model']} | {r['lsp']} | {r['accuracy']:.3f} | {_fmt(r.get('accuracy_unforced'), '.3f')} "
                     f"| {_fmt(r.get('forced_fraction'), '.2f')} | {_fmt(r.get('retention'), '.2f')} | "
                     f"{r['input_tokens']:,} | {r['flops_per_device']:.3g} | {r['train_time_s']:.1f} | "
                     f"{r['peak_mem_bytes'] / 2**30:.2f} | {ratios if 'tokens_vs_1' in r else '-'} |")
    lines += [""]
    if eval_budget is not None:
        lines += [f"Evaluation: greedy decoding, thinking budget {eval_budget} new tokens; a generation that has not "
                  "closed its thinking by then (or stopped without closing it) gets `\\n</think>\\n\\nAnswer: ` "
                  "appended once and the number is read greedily (budget forcing, s1: Muennighoff et al. 2025). "
                  "Same protocol for every model; 'forced' is the fraction of problems that needed it. 'base' is "
                  "the student architecture pretrained on easier, disjoint problems (the students' starting point); "
                  "its training cost is not counted in the students' columns.", ""]
    lines += ["Per task accuracy: " + "; ".join(
        f"{r['model']}: " + ", ".join(f"{t} {a:.2f}" for t, a in r["per_task"].items()) for r in rows), "",
        f"Paper: {PAPER_HEADLINE}", ""]
    if predicted:
        lines += ["## Planner prediction vs measurement (per optimizer step)", "", predicted, ""]
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    students = [r for r in rows if r["model"].startswith("student")]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.6))
    names = [f"LSP {r['lsp']}" for r in students]
    ax1.bar(names, [r["accuracy"] for r in students], color="#4c72b0")
    for name, style in (("teacher", "--"), ("base", ":")):
        ref = next((r for r in rows if r["model"] == name), None)
        if ref:
            ax1.axhline(ref["accuracy"], color="k", ls=style, label=name)
    ax1.legend()
    ax1.set_ylabel("held-out exact-match accuracy")
    keys = [("tokens_vs_1", "tokens"), ("flops_vs_1", "FLOPs"), ("time_vs_1", "time"), ("memory_vs_1", "memory")]
    width = 0.35
    for i, r in enumerate(students):
        ax2.bar([j + i * width for j in range(len(keys))], [r.get(k) or 0 for k, _ in keys], width, label=names[i])
    ax2.set_xticks([j + width / 2 for j in range(len(keys))], [label for _, label in keys])
    ax2.set_ylabel("cost relative to LSP 1.0")
    ax2.axhline(0.5, color="gray", ls=":", lw=1)
    ax2.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def machine_name() -> str:
    return f"{platform.node()} {platform.machine()} {os.cpu_count()} cores"
