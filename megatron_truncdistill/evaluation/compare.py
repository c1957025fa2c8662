"""``evaluate.py compare RUN_DIR ...``: pass@1 per benchmark per run and retention against a reference run.

Retention is the paper's ratio: a run's pass@1 divided by the reference run's on the same benchmark (the teacher,
or the untruncated student), undefined where the reference scores 0. "mean retention" averages it over the
benchmarks both runs have. Each run is a directory holding ``grades.json`` (written by ``generate`` or ``grade``)
or that JSON file itself. Writes ``comparison.md``, ``comparison.json`` and ``comparison.png``.
"""

from __future__ import annotations

import sys
from pathlib import Path

from megatron_truncdistill.errors import UserError
from megatron_truncdistill.evaluation.run_files import GENERATIONS_FILE, GRADES_FILE, read_json, write_json_atomic


def load_run(path: str | Path) -> dict[str, dict]:
    """benchmark → pass@1 summary of one run (a directory with ``grades.json``, or the file)."""
    path = Path(path)
    grades = path / GRADES_FILE if path.is_dir() else path
    if path.is_dir() and not grades.is_file() and (path / GENERATIONS_FILE).is_file():
        raise UserError(f"{path} has generations but no {GRADES_FILE}; run `truncdistill-evaluate grade "
                             f"--generations {path / GENERATIONS_FILE} --output-json {grades}` first")
    payload = read_json(grades, what="grades file")
    if not isinstance(payload.get("pass@1"), dict):
        raise UserError(f"{grades}: no 'pass@1' table; it was not written by `truncdistill-evaluate grade`")
    return payload["pass@1"]


def _names(paths: list[str]) -> list[str]:
    """A run's name is its directory's name (the grades file's parent), or the path where names collide."""
    names = [(Path(p).parent if Path(p).is_file() else Path(p)).resolve().name for p in paths]
    return [n if names.count(n) == 1 else str(p) for n, p in zip(names, paths)]


def compare_runs(paths: list[str], *, reference: str | None = None) -> dict:
    """The comparison (README.md: comparison.json) of the runs at ``paths``; the first is the default reference."""
    names = _names(paths)
    runs = {name: load_run(path) for name, path in zip(names, paths)}
    if reference is None:
        ref = names[0]
    else:
        matches = [n for n, p in zip(names, paths) if reference in (n, p)]
        if not matches:
            raise UserError(f"--reference {reference}: not one of the runs ({', '.join(names)})")
        ref = matches[0]
    benchmarks = list(dict.fromkeys(b for summary in runs.values() for b in summary))
    rows, mean_retention = [], {}
    for name, summary in runs.items():
        ratios = []
        for bench in benchmarks:
            if bench not in summary:
                continue
            s, base = summary[bench], runs[ref].get(bench)
            retention = s["mean"] / base["mean"] if base and base["mean"] > 0 else None
            if retention is not None and name != ref:
                ratios.append(retention)
            if base and base["problems"] != s["problems"]:
                print(f"warning: {bench}: {name} has {s['problems']} problems, the reference {base['problems']}",
                      file=sys.stderr)
            rows.append({"benchmark": bench, "run": name, "pass@1": s["mean"], "ci95": s["ci95"],
                         "problems": s["problems"], "samples": s["samples"], "retention": retention})
        if name != ref:
            mean_retention[name] = sum(ratios) / len(ratios) if ratios else None
    return {"reference": ref, "runs": dict(zip(names, map(str, paths))), "benchmarks": benchmarks,
            "rows": sorted(rows, key=lambda r: (benchmarks.index(r["benchmark"]), names.index(r["run"]))),
            "mean_retention": mean_retention}


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def markdown_table(comparison: dict) -> str:
    ref = comparison["reference"]
    lines = [f"| benchmark | run | problems | samples | pass@1 | 95% CI | retention vs {ref} |",
             "|---|---|---|---|---|---|---|"]
    for r in comparison["rows"]:
        run = f"{r['run']} (reference)" if r["run"] == ref else r["run"]
        lines.append(f"| {r['benchmark']} | {run} | {r['problems']} | {r['samples']} | {r['pass@1']:.3f} | "
                     f"[{r['ci95'][0]:.3f}, {r['ci95'][1]:.3f}] | {_percent(r['retention'])} |")
    for name, value in comparison["mean_retention"].items():
        lines.append(f"| mean retention | {name} |  |  |  |  | {_percent(value)} |")
    return "\n".join(lines)


def plot(comparison: dict, path: str | Path) -> None:
    """Grouped bars: pass@1 per benchmark, one bar per run, 95% CI whiskers, retention printed above."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs, benchmarks = list(comparison["runs"]), comparison["benchmarks"]
    width = 0.8 / len(runs)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.6 * len(benchmarks) * max(1, len(runs) / 2)), 4.5))
    for k, name in enumerate(runs):
        rows = {r["benchmark"]: r for r in comparison["rows"] if r["run"] == name}
        xs = [i + (k - (len(runs) - 1) / 2) * width for i, b in enumerate(benchmarks) if b in rows]
        mine = [rows[b] for b in benchmarks if b in rows]
        means = [r["pass@1"] for r in mine]
        errors = [[m - r["ci95"][0] for m, r in zip(means, mine)], [r["ci95"][1] - m for m, r in zip(means, mine)]]
        ax.bar(xs, means, width, yerr=errors, capsize=3, label=name)
        if name != comparison["reference"]:
            for x, r in zip(xs, mine):
                ax.annotate(_percent(r["retention"]), (x, r["ci95"][1]), ha="center", va="bottom", fontsize=7,
                            xytext=(0, 2), textcoords="offset points")
    ax.set_xticks(range(len(benchmarks)), benchmarks)
    ax.set_ylabel("pass@1 (95% CI)")
    ax.set_ylim(0, 1.12)
    ax.set_title(f"pass@1 per benchmark; labels: retention vs {comparison['reference']}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    tmp = Path(path).with_name(Path(path).name + ".tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)


def write_comparison(comparison: dict, out_dir: str | Path) -> dict[str, Path]:
    """comparison.md / .json / .png in ``out_dir``; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {ext: out / f"comparison.{ext}" for ext in ("md", "json", "png")}
    md_tmp = paths["md"].with_name("comparison.md.tmp")
    md_tmp.write_text(f"# pass@1 and retention vs {comparison['reference']}\n\n{markdown_table(comparison)}\n",
                      encoding="utf-8")
    md_tmp.replace(paths["md"])
    write_json_atomic(paths["json"], comparison)
    plot(comparison, paths["png"])
    return paths
