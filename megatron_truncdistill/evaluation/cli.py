"""``tools/evaluate.py`` / ``truncdistill-evaluate``: generate, grade, compare (README.md beside this file).

    generate --model HF_DIR|CHECKPOINT --benchmark FILE.jsonl [NAME=FILE.jsonl ...] --output DIR
             [--n 64 --temperature 0.6 --top-p 0.95 --max-new-tokens 32768] [--backend auto|vllm|transformers]
    grade    --generations DIR/generations.jsonl [--output-json DIR/grades.json]
    compare  RUN_DIR [RUN_DIR ...] [--reference RUN] [--output DIR]

Bad input exits 2 with one ``error: ...`` line and no traceback; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from megatron_truncdistill.evaluation.backends import BACKENDS, Sampling
from megatron_truncdistill.errors import UserError, cli_main
from megatron_truncdistill.evaluation.generate import DEFAULT_BATCH_SIZE, DEFAULT_PROMPT, GenerateConfig
from megatron_truncdistill.evaluation.run_files import GRADES_FILE

PAPER = Sampling()


def _add_generate(sub) -> None:
    p = sub.add_parser("generate", help="sample n answers per problem and grade them (resumable)")
    p.add_argument("--model", required=True, help="HF model directory, or a checkpoint of this project (a run "
                   "directory, its checkpoints/ root or one iter_* directory), exported on the fly")
    p.add_argument("--benchmark", required=True, nargs="+", metavar="[NAME=]FILE.jsonl",
                   help="benchmark files; a repeated NAME joins files into one benchmark (aime25=I.jsonl "
                   "aime25=II.jsonl)")
    p.add_argument("--output", required=True, help="run directory: generations.jsonl, run.json, grades.json")
    p.add_argument("--tokenizer", default=None, help="tokenizer directory (default: the model's)")
    p.add_argument("--problem-key", default=None, help="problem field (default: detected)")
    p.add_argument("--answer-key", default=None, help="answer field (default: detected)")
    p.add_argument("--limit", type=int, default=None, help="only the first N problems of each file")
    p.add_argument("--prompt-template", default=DEFAULT_PROMPT, help="user turn; {problem} is replaced")
    p.add_argument("--n", type=int, default=PAPER.n, help="samples per problem")
    p.add_argument("--temperature", type=float, default=PAPER.temperature, help="0: greedy")
    p.add_argument("--top-p", type=float, default=PAPER.top_p)
    p.add_argument("--top-k", type=int, default=PAPER.top_k, help="0: off")
    p.add_argument("--max-new-tokens", type=int, default=PAPER.max_new_tokens)
    p.add_argument("--seed", type=int, default=PAPER.seed)
    p.add_argument("--backend", choices=BACKENDS, default="auto", help="auto: vLLM when installed")
    p.add_argument("--device", default=None, help="transformers only (default: cuda when available, else cpu)")
    p.add_argument("--dtype", default="auto", choices=("auto", "bfloat16", "float16", "float32"))
    p.add_argument("--batch-size", type=int, default=None,
                   help=f"sequences per backend call, results written after each (default {DEFAULT_BATCH_SIZE})")
    p.add_argument("--tensor-parallel-size", type=int, default=1, help="vLLM only")
    p.add_argument("--max-model-len", type=int, default=None, help="vLLM only (default: the model's)")
    p.add_argument("--no-progress", action="store_true")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="truncdistill-evaluate",
                                     description="Evaluate reasoning models on math benchmarks (pass@1, retention).")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_generate(sub)
    g = sub.add_parser("grade", help="grade a generations file with math-verify")
    g.add_argument("--generations", required=True, help="a generations.jsonl")
    g.add_argument("--output-json", default=None, help=f"default: {GRADES_FILE} beside the generations")
    g.add_argument("--no-progress", action="store_true")
    q = sub.add_parser("complete", help="print one completion of one prompt (a quick look at a model)")
    q.add_argument("--model", required=True, help="HF model directory or a checkpoint of this project")
    q.add_argument("--prompt", required=True, help="the user turn")
    q.add_argument("--tokenizer", default=None, help="tokenizer directory (default: the model's)")
    q.add_argument("--max-new-tokens", type=int, default=512)
    q.add_argument("--temperature", type=float, default=0.0, help="0: greedy (default)")
    q.add_argument("--top-p", type=float, default=1.0)
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    q.add_argument("--dtype", default="auto", choices=("auto", "bfloat16", "float16", "float32"))
    c = sub.add_parser("compare", help="pass@1 table across runs with retention vs a reference run")
    c.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directories (or their grades.json)")
    c.add_argument("--reference", default=None, help="the reference run's name or path (default: the first)")
    c.add_argument("--output", default="comparison", help="directory for comparison.md/.json/.png")
    return parser


def _generate(args: argparse.Namespace) -> None:
    from megatron_truncdistill.evaluation.generate import run_generate

    sampling = Sampling(n=args.n, temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
                        max_new_tokens=args.max_new_tokens, seed=args.seed)
    if args.batch_size is not None and args.batch_size < 1:
        raise UserError(f"--batch-size {args.batch_size}: must be >= 1")
    if args.limit is not None and args.limit < 1:
        raise UserError(f"--limit {args.limit}: must be >= 1")
    run_generate(GenerateConfig(
        model=args.model, benchmarks=args.benchmark, output=args.output, tokenizer=args.tokenizer,
        problem_key=args.problem_key, answer_key=args.answer_key, limit=args.limit,
        prompt_template=args.prompt_template, sampling=sampling, backend=args.backend, device=args.device,
        dtype=args.dtype, batch_size=args.batch_size, tensor_parallel_size=args.tensor_parallel_size,
        max_model_len=args.max_model_len, progress=not args.no_progress))


def _grade(args: argparse.Namespace) -> None:
    from megatron_truncdistill.evaluation.grading import grade_generations, summary_table

    out = Path(args.output_json) if args.output_json else Path(args.generations).parent / GRADES_FILE
    grades = grade_generations(args.generations, out, progress=not args.no_progress)
    print(summary_table(grades["pass@1"]))
    print(f"wrote {out}", file=sys.stderr)


def _complete(args: argparse.Namespace) -> None:
    from megatron_truncdistill.evaluation.complete import complete

    sampling = Sampling(n=1, temperature=args.temperature, top_p=args.top_p, max_new_tokens=args.max_new_tokens,
                        seed=args.seed)
    print(complete(args.model, args.prompt, sampling=sampling, tokenizer=args.tokenizer, device=args.device,
                   dtype=args.dtype))


def _compare(args: argparse.Namespace) -> None:
    from megatron_truncdistill.evaluation.compare import compare_runs, markdown_table, write_comparison

    comparison = compare_runs(args.runs, reference=args.reference)
    paths = write_comparison(comparison, args.output)
    print(markdown_table(comparison))
    print("wrote " + ", ".join(str(p) for p in paths.values()), file=sys.stderr)


@cli_main
def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    {"generate": _generate, "grade": _grade, "complete": _complete, "compare": _compare}[args.command](args)
    return 0
