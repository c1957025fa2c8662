#!/usr/bin/env python
"""Reasoning traces → pre-truncated, section-tagged megatron-core indexed bins. See megatron_truncdistill/preprocess.

    python tools/preprocess.py --input PATH [PATH ...] --output-prefix PREFIX --tokenizer TOKENIZER --workers N

Fatal problems print one ``error:`` line naming the file (and line) and the fix, exit 2, and leave no output.
"""

from __future__ import annotations

import argparse
import sys

from megatron_truncdistill.preprocess.document import FilterConfig, Job
from megatron_truncdistill.preprocess.pipeline import PreprocessConfig, PreprocessError, run
from megatron_truncdistill.preprocess.records import RecordSpec
from megatron_truncdistill.preprocess.truncation import POLICIES, WINDOW_KEEPS, make_policy
from megatron_truncdistill.tokenization import CHAT_FORMATS


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    io = p.add_argument_group("input and output")
    io.add_argument("--input", nargs="+", required=True, help="JSONL(.gz/.zst), JSON array, Parquet files, globs, "
                    "or datasets.save_to_disk folders")
    io.add_argument("--output-prefix", required=True, help="writes PREFIX_tokens.bin/.idx, PREFIX_sections.bin/.idx, "
                    "PREFIX.manifest.json, PREFIX.rejects.jsonl")
    io.add_argument("--overwrite", action="store_true", help="replace existing outputs under PREFIX")
    io.add_argument("--workers", type=int, default=1, help="tokenizer processes (output is identical for any N)")
    io.add_argument("--chunk-docs", type=int, default=64, help="records per worker task")
    io.add_argument("--no-progress", action="store_true", help="no progress line on stderr")
    io.add_argument("--strict", action="store_true", help="any rejected record fails the run, writing nothing")
    tk = p.add_argument_group("tokenizer and rendering")
    tk.add_argument("--tokenizer", required=True, help="HF tokenizer directory (tokenizer.json + "
                    "tokenizer_config.json) or SentencePiece .model")
    tk.add_argument("--chat-format", choices=sorted(CHAT_FORMATS), help="render turns with this format instead of "
                    "the tokenizer's chat template (required for SentencePiece)")
    tk.add_argument("--think-open", default="<think>", help="the model's opening thinking marker")
    tk.add_argument("--think-close", default="</think>", help="the model's closing thinking marker")
    rec = p.add_argument_group("record layout")
    rec.add_argument("--format", choices=("auto", "conversation", "prompt-response", "fields"), default="auto")
    rec.add_argument("--prompt-key", help="prompt field (auto: prompt, problem, question, instruction, input)")
    rec.add_argument("--response-key", help="response field with <think>COT</think>ANSWER (auto: full_response, "
                     "response, output, completion, generation)")
    rec.add_argument("--cot-key", help="field holding the bare CoT (selects --format fields)")
    rec.add_argument("--answer-key", help="field holding the final answer (with --cot-key)")
    rec.add_argument("--system-key", default="system", help="top-level system prompt field, if present")
    rec.add_argument("--implicit-think-open", action="store_true", help="responses start inside the thinking "
                     "(R1-Distill: the generation prompt holds <think>); one with no marker is unclosed thinking")
    tr = p.add_argument_group("truncation and filters")
    tr.add_argument("--truncation", choices=POLICIES, default="lead-span")
    tr.add_argument("--lsp", default="1", help="fraction r in (0, 1] for lead-span, cot-span, window (exact decimal)")
    tr.add_argument("--max-tokens", type=int, help="token budget for --truncation token-budget")
    tr.add_argument("--keep", choices=WINDOW_KEEPS, help="window position for --truncation window")
    tr.add_argument("--max-source-tokens", type=int, help="reject documents with more tokens before truncation")
    tr.add_argument("--require-closed-thinking", action="store_true", help="reject traces cut off inside thinking "
                    "(default: keep them as CoT-only documents without close marker or answer)")
    tr.add_argument("--min-tokens", type=int, default=1)
    tr.add_argument("--min-cot-tokens", type=int, default=0, help="COT section tokens, markers included")
    tr.add_argument("--min-answer-tokens", type=int, default=0)
    tr.add_argument("--max-record-chars", type=int, default=4_000_000, help="reject longer rendered texts untokenized")
    return p


def config_from_args(args: argparse.Namespace) -> PreprocessConfig:
    """Validate and assemble the run config; raises PreprocessError naming the option to fix."""
    if args.workers < 1 or args.chunk_docs < 1:
        raise PreprocessError("--workers and --chunk-docs must be >= 1")
    if args.answer_key and not args.cot_key:
        raise PreprocessError("--answer-key needs --cot-key (the fields layout)")
    try:
        policy = make_policy(args.truncation, lsp=args.lsp, max_tokens=args.max_tokens, keep=args.keep)
    except (ValueError, ZeroDivisionError) as err:
        raise PreprocessError(str(err)) from err
    spec = RecordSpec(format="fields" if args.cot_key and args.format == "auto" else args.format,
                      prompt_key=args.prompt_key, response_key=args.response_key, cot_key=args.cot_key,
                      answer_key=args.answer_key, system_key=args.system_key, think_open=args.think_open,
                      think_close=args.think_close, implicit_think_open=args.implicit_think_open)
    if spec.format == "fields" and not spec.cot_key:
        raise PreprocessError("--format fields needs --cot-key (and usually --answer-key, --prompt-key)")
    filters = FilterConfig(max_source_tokens=args.max_source_tokens,
                           require_closed_thinking=args.require_closed_thinking,
                           min_tokens=args.min_tokens, min_cot_tokens=args.min_cot_tokens,
                           min_answer_tokens=args.min_answer_tokens, max_record_chars=args.max_record_chars)
    job = Job(tokenizer=args.tokenizer, chat_format=args.chat_format, spec=spec, policy=policy, filters=filters)
    return PreprocessConfig(inputs=args.input, output_prefix=args.output_prefix, job=job, workers=args.workers,
                            chunk_docs=args.chunk_docs, strict=args.strict, overwrite=args.overwrite,
                            progress=not args.no_progress)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        manifest = run(config_from_args(args))
    except PreprocessError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"error: interrupted; no output was written under {args.output_prefix}", file=sys.stderr)
        return 130
    except Exception as err:  # a bug, not a user error: still one line, and still no partial output
        print(f"error: internal error ({type(err).__name__}: {err}); no output was written", file=sys.stderr)
        return 3
    counts, policy = manifest["counts"], manifest["truncation"]
    print(f"wrote {counts['written']:,} documents ({policy['kind']}, lsp={policy['lsp']}) to {args.output_prefix}"
          f"_tokens.bin/.idx and _sections.bin/.idx; {counts['rejected']:,} rejected "
          f"(see {args.output_prefix}.rejects.jsonl)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
