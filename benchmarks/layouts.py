#!/usr/bin/env python
"""Step time of the tiny CPU example (examples/tiny_cpu.yaml) at every TP×PP×DP layout of up to 4 ranks.

One torchrun job per layout on the same bins and weights-independent settings; medians after ``--warmup`` steps.
On 2 cores, 4 ranks oversubscribe the CPU: the numbers show overheads of the layouts, not scaling.
  python benchmarks/layouts.py
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from megatron_truncdistill import experiments  # noqa: E402

LAYOUTS = [(1, 1, 1), (2, 1, 2), (1, 2, 2), (1, 1, 2), (2, 2, 4), (2, 1, 4), (1, 2, 4)]  # (tp, pp, world)


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="bench_layouts_"))
    examples = REPO / "examples"
    prefix = work / "tiny_lsp1.0"
    experiments.preprocess_corpus([str(examples / "data" / "tiny_reasoning.jsonl")],
                                  tokenizer=str(examples / "tokenizer"), prefix=prefix, lsp="1.0")
    base = yaml.safe_load((examples / "tiny_cpu.yaml").read_text())
    base["data"].update(prefixes=[str(prefix)], tokenizer=str(examples / "tokenizer"))
    base["train"].update(train_steps=10, eval_interval=0)
    base["checkpoint"] = {"save_interval": 0}
    rows = []
    for tp, pp, world in LAYOUTS:
        run_dir = work / f"tp{tp}pp{pp}w{world}"
        config = dict(base, parallel={"tensor_model_parallel_size": tp, "pipeline_model_parallel_size": pp},
                      logging={"run_dir": str(run_dir), "tensorboard": False})
        experiments.launch_trainer(config, path=work / f"{run_dir.name}.yaml", ranks=world, tag="bench")
        steps = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()][2:]
        rows.append({"tp": tp, "pp": pp, "dp": world // (tp * pp), "step_time_s":
                     statistics.median(r["step_time_s"] for r in steps),
                     "tokens_per_s": statistics.median(r["input_tokens"] / r["step_time_s"] for r in steps)})
    print("\n| TP | PP | DP | step time (s) | tokens/s |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['tp']} | {r['pp']} | {r['dp']} | {r['step_time_s']:.3f} | {r['tokens_per_s']:.0f} |")
    print(json.dumps({"benchmark": "layouts", "results": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
