"""A truncation study: a sweep of (truncation policy × loss sections) cells through preprocess → train → evaluate.

The sweep YAML (see examples/study_tiny.yaml) names the corpus, the evaluation set, a base trainer config and the
grid. Cells: every ``lsp`` with lead-span truncation × every ``loss_sections`` set, plus (optionally) the paper's
window ablation: ``window.keep`` ∈ {left, middle, right} at ``window.lsp``. Bins are made once per truncation and
shared by the cells that use them. Results: ``results.md`` and ``results.json`` in ``out_dir``.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from megatron_truncdistill import experiments
from megatron_truncdistill.errors import cli_main
from megatron_truncdistill.evaluation.exact_match import EXTRACTORS
from megatron_truncdistill.sections import parse_sections


@dataclass(frozen=True)
class Cell:
    truncation: str  # "lead-span" or "window"
    lsp: str
    keep: str | None
    sections: tuple[str, ...]

    @property
    def bins_name(self) -> str:
        return f"{self.truncation}_{self.keep + '_' if self.keep else ''}lsp{self.lsp}"

    @property
    def name(self) -> str:
        return f"{self.bins_name}__{'+'.join(self.sections)}"


def cells(sweep: dict) -> list[Cell]:
    """The grid of a sweep section, in a stable order."""
    section_sets = [tuple(s.name for s in parse_sections(x)) for x in sweep.get("loss_sections",
                                                                               [["PROMPT", "COT", "ANSWER"]])]
    out = [Cell("lead-span", str(lsp), None, secs) for lsp in sweep.get("lsp", [1.0]) for secs in section_sets]
    window = sweep.get("window")
    if window:
        out += [Cell("window", str(window.get("lsp", 0.5)), keep, section_sets[0]) for keep in window["keep"]]
    return out


def _resolve(base: Path, value: str) -> str:
    return value if Path(value).is_absolute() else str((base / value).resolve())


def load_study(path: str | Path) -> dict:
    path = Path(path)
    study = yaml.safe_load(path.read_text())
    base = path.parent
    study["corpus"]["inputs"] = [_resolve(base, p) for p in study["corpus"]["inputs"]]
    study["corpus"]["tokenizer"] = _resolve(base, study["corpus"]["tokenizer"])
    study["eval"]["records"] = _resolve(base, study["eval"]["records"])
    study["base_config"] = _resolve(base, study["base_config"])
    study["out_dir"] = _resolve(base, study.get("out_dir", "study_out"))
    return study


def _cell_config(study: dict, cell: Cell, *, prefix: Path, run_dir: Path) -> dict:
    config = copy.deepcopy(yaml.safe_load(Path(study["base_config"]).read_text()))
    base = Path(study["base_config"]).parent
    for key in ("student", "teacher"):  # the base config's relative paths stay relative to it
        if config.get(key):
            for field in ("load", "hf_config"):
                if config[key].get(field):
                    config[key][field] = _resolve(base, config[key][field])
    config.setdefault("data", {}).update(prefixes=[str(prefix)], tokenizer=study["corpus"]["tokenizer"])
    config.setdefault("distill", {})["loss_sections"] = list(cell.sections)
    config["logging"] = dict(config.get("logging", {}), run_dir=str(run_dir))
    config["checkpoint"] = {"save_interval": 0}
    return config


def run_study(study: dict) -> list[dict]:
    out = Path(study["out_dir"])
    grid = cells(study["sweep"])
    experiments.log(f"{len(grid)} cells: " + ", ".join(c.name for c in grid), tag="study")
    prefixes = {}
    for cell in grid:
        if cell.bins_name not in prefixes:
            prefixes[cell.bins_name] = out / "bins" / cell.bins_name
            experiments.preprocess_corpus(study["corpus"]["inputs"], tokenizer=study["corpus"]["tokenizer"],
                                          prefix=prefixes[cell.bins_name], truncation=cell.truncation,
                                          lsp=cell.lsp, keep=cell.keep)
    runs = {}
    for cell in grid:
        run_dir = out / "runs" / cell.name
        config = _cell_config(study, cell, prefix=prefixes[cell.bins_name], run_dir=run_dir)
        experiments.launch_trainer(config, path=out / "configs" / f"{cell.name}.yaml", ranks=study.get("ranks", 1),
                                   overrides=study.get("overrides", []), tag="study")
        runs[cell.name] = run_dir
    ev = study["eval"]
    records = [json.loads(line) for line in Path(ev["records"]).read_text().splitlines() if line.strip()]
    records = [{"prompt": r[ev.get("prompt_key", "prompt")], "answer": str(r[ev.get("answer_key", "answer")])}
               for r in records[: ev.get("limit", len(records))]]
    accuracy = experiments.evaluate_checkpoints({n: d / "checkpoints" for n, d in runs.items()},
                                                tokenizer=study["corpus"]["tokenizer"], records=records,
                                                extract=EXTRACTORS[ev.get("extract", "answer_line")],
                                                max_new_tokens=ev.get("max_new_tokens", 160), tag="study")
    return _collect(grid, runs, accuracy)


def _collect(grid: list[Cell], runs: dict, accuracy: dict) -> list[dict]:
    rows = []
    for cell in grid:
        costs = experiments.run_costs(runs[cell.name] / "metrics.jsonl")
        rows.append({"cell": cell.name, "truncation": cell.truncation, "lsp": cell.lsp, "keep": cell.keep,
                     "loss_sections": "+".join(cell.sections), "accuracy": accuracy[cell.name]["accuracy"],
                     "final_loss": costs["final_loss"], "input_tokens": costs["input_tokens"],
                     "train_time_s": costs["train_time_s"], "peak_mem_bytes": costs["peak_mem_bytes"]})
    return rows


def write_results(rows: list[dict], out_dir: str | Path) -> str:
    out = Path(out_dir)
    lines = ["| cell | truncation | LSP | keep | loss sections | accuracy | final loss | training tokens | "
             "train time (s) | peak memory (GiB) |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['cell']} | {r['truncation']} | {r['lsp']} | {r['keep'] or '-'} | {r['loss_sections']} | "
                     f"{r['accuracy']:.3f} | {r['final_loss']:.4f} | {r['input_tokens']:,} | "
                     f"{r['train_time_s']:.1f} | {r['peak_mem_bytes'] / 2**30:.2f} |")
    table = "\n".join(lines)
    (out / "results.md").write_text(f"# Truncation study ({time.strftime('%Y-%m-%d %H:%M')})\n\n{table}\n")
    (out / "results.json").write_text(json.dumps(rows, indent=2) + "\n")
    return table


@cli_main
def main(argv: list[str] | None = None) -> int:
    """``truncdistill-study SWEEP.yaml [--out-dir DIR]`` (``tools/study.py``)."""
    parser = argparse.ArgumentParser(description="Run a truncation study (LSP x loss sections x window ablation).")
    parser.add_argument("sweep", help="study YAML (see examples/study_tiny.yaml)")
    parser.add_argument("--out-dir", default=None, help="override the YAML's out_dir")
    args = parser.parse_args(argv)
    study = load_study(args.sweep)
    if args.out_dir:
        study["out_dir"] = args.out_dir
    rows = run_study(study)
    print(write_results(rows, study["out_dir"]))
    return 0
