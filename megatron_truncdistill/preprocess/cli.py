"""``truncdistill-preprocess`` (also ``tools/preprocess.py``): reasoning traces → pre-truncated, section-tagged bins.

    truncdistill-preprocess --input PATH [PATH ...] --output-prefix PREFIX --tokenizer TOKENIZER --workers N

A user error (bad option, damaged input, unusable tokenizer) prints one ``error:`` line naming the file, record or
option and the fix, exits 2 and leaves no output; anything else is a bug and keeps its traceback. Option defaults
and choices come from the dataclasses the options fill (``RecordSpec``, ``TruncationPolicy``, ``FilterConfig``,
``PreprocessConfig``), so the help cannot drift from what a run does. Format of the outputs:
megatron_truncdistill/preprocess/README.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

from megatron_truncdistill.preprocess.document import FilterConfig, Job
from megatron_truncdistill.errors import cli_main
from megatron_truncdistill.preprocess.pipeline import PreprocessConfig, PreprocessError, run
from megatron_truncdistill.preprocess.protocol import PROTOCOLS, apply_protocol
from megatron_truncdistill.preprocess.records import RECORD_FORMATS, RecordSpec
from megatron_truncdistill.preprocess.truncation import POLICIES, WINDOW_KEEPS, WINDOW_SCOPES, TruncationPolicy
from megatron_truncdistill.tokenization import CHAT_FORMATS


def _default(cls, name: str):
    """The default of dataclass field ``cls.name``: the one definition the CLI shows and applies."""
    return next(f.default for f in dataclasses.fields(cls) if f.name == name)


class _Parser(argparse.ArgumentParser):
    """argparse prints its usage and then the error; a user error here is one line (raised, printed by ``main``)."""

    def error(self, message: str):
        raise PreprocessError(f"{message} (see --help)")


def _io_options(p: argparse.ArgumentParser) -> None:
    io = p.add_argument_group("input and output")
    io.add_argument("--input", nargs="+", required=True, help="JSONL(.gz/.zst), JSON array, Parquet files, globs, "
                    "or datasets.save_to_disk folders")
    io.add_argument("--output-prefix", required=True, help="writes PREFIX_tokens.bin/.idx, PREFIX_sections.bin/.idx, "
                    "PREFIX.manifest.json, PREFIX.rejects.jsonl")
    io.add_argument("--overwrite", action="store_true", help="replace existing outputs under PREFIX")
    io.add_argument("--workers", type=int, default=_default(PreprocessConfig, "workers"),
                    help="tokenizer processes (output is identical for any N; default: %(default)s)")
    io.add_argument("--chunk-docs", type=int, default=_default(PreprocessConfig, "chunk_docs"),
                    help="records per worker task (default: %(default)s)")
    io.add_argument("--no-progress", action="store_true", help="no progress line on stderr")
    io.add_argument("--strict", action="store_true", help="any rejected record fails the run, writing nothing")
    io.add_argument("--append-eod", action="store_true", help="append an end-of-document token to each document "
                    "(Megatron-LM's convention, for GPTDataset's reset_attention_mask / eod_mask_loss)")
    io.add_argument("--eod-token", help="the token --append-eod appends (default: the tokenizer's EOS token)")


def _record_options(p: argparse.ArgumentParser) -> None:
    tk = p.add_argument_group("tokenizer and rendering")
    tk.add_argument("--tokenizer", required=True, help="HF tokenizer directory (tokenizer.json + "
                    "tokenizer_config.json) or SentencePiece .model")
    tk.add_argument("--chat-format", choices=sorted(CHAT_FORMATS), help="render turns with this format instead of "
                    "the tokenizer's chat template (required for SentencePiece)")
    tk.add_argument("--think-open", default=_default(RecordSpec, "think_open"),
                    help="the model's opening thinking marker (default: %(default)s)")
    tk.add_argument("--think-close", default=_default(RecordSpec, "think_close"),
                    help="the model's closing thinking marker (default: %(default)s)")
    rec = p.add_argument_group("record layout")
    rec.add_argument("--protocol", choices=PROTOCOLS, default=PROTOCOLS[0], help="default: this project's rules; "
                     "paper: the paper's official data pipeline reproduced (README.md of the preprocess package)")
    rec.add_argument("--format", choices=RECORD_FORMATS, default=_default(RecordSpec, "format"))
    rec.add_argument("--prompt-key", help="prompt field (auto: prompt, problem, question, instruction, input)")
    rec.add_argument("--response-key", help="response field with <think>COT</think>ANSWER (auto: full_response, "
                     "response, output, completion, generation)")
    rec.add_argument("--cot-key", help="field holding the bare CoT (selects --format fields)")
    rec.add_argument("--answer-key", help="field holding the final answer (with --cot-key)")
    rec.add_argument("--system-key", help="top-level system prompt field, if present (default: "
                     f"{_default(RecordSpec, 'system_key')})")
    rec.add_argument("--implicit-think-open", action="store_true", help="responses start inside the thinking "
                     "(R1-Distill: the generation prompt holds <think>); one with no marker is unclosed thinking")


def _truncation_options(p: argparse.ArgumentParser) -> None:
    tr = p.add_argument_group("truncation and filters")
    tr.add_argument("--truncation", choices=POLICIES, default=_default(TruncationPolicy, "kind"))
    tr.add_argument("--lsp", help="fraction r in (0, 1] for lead-span, cot-span, window (exact decimal; default: "
                    f"{_default(TruncationPolicy, 'lsp')})")
    tr.add_argument("--max-tokens", type=int, help="token budget for --truncation token-budget")
    tr.add_argument("--keep", choices=WINDOW_KEEPS, help="window position for --truncation window")
    tr.add_argument("--window-scope", choices=WINDOW_SCOPES, help="window over the response after the kept prompt, "
                    "or over the whole sequence (default: response; sequence with --protocol paper)")
    tr.add_argument("--max-source-tokens", type=int, default=_default(FilterConfig, "max_source_tokens"),
                    help="reject documents with more tokens before truncation")
    tr.add_argument("--require-closed-thinking", action="store_true", help="reject traces cut off inside thinking "
                    "(default: keep them as CoT-only documents without close marker or answer)")
    for name, text in (("min_tokens", ""), ("min_cot_tokens", "COT section tokens, markers included; "),
                       ("min_answer_tokens", ""),
                       ("max_record_chars", "reject longer rendered texts untokenized; ")):
        tr.add_argument("--" + name.replace("_", "-"), type=int, default=_default(FilterConfig, name),
                        help=f"{text}default: %(default)s")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="truncdistill-preprocess", description=__doc__,
                formatter_class=argparse.RawDescriptionHelpFormatter)
    _io_options(p)
    _record_options(p)
    _truncation_options(p)
    return p


def _check_conflicts(args: argparse.Namespace) -> None:
    """Options that only mean something with another one, or that contradict it: one line naming both."""
    if args.workers < 1 or args.chunk_docs < 1:
        raise PreprocessError("--workers and --chunk-docs must be >= 1")
    if args.answer_key and not args.cot_key:
        raise PreprocessError("--answer-key needs --cot-key (the fields layout)")
    if args.cot_key and args.format not in ("auto", "fields"):
        raise PreprocessError(f"--cot-key conflicts with --format {args.format}: a CoT field is the fields layout; "
                              "drop one of them")
    if args.response_key and (args.cot_key or args.format == "fields"):
        raise PreprocessError("--response-key conflicts with the fields layout (--cot-key / --format fields), which "
                              "reads --cot-key and --answer-key instead; drop one of them")
    if args.format == "fields" and not args.cot_key:
        raise PreprocessError("--format fields needs --cot-key (and usually --answer-key, --prompt-key)")
    if args.eod_token is not None and not args.append_eod:
        raise PreprocessError(f"--eod-token {args.eod_token} needs --append-eod (it names the token that one appends)")


def config_from_args(args: argparse.Namespace) -> PreprocessConfig:
    """Validate and assemble the run config; raises PreprocessError naming the option to fix."""
    _check_conflicts(args)
    spec = RecordSpec(format="fields" if args.cot_key and args.format == "auto" else args.format,
                      prompt_key=args.prompt_key, response_key=args.response_key, cot_key=args.cot_key,
                      answer_key=args.answer_key, system_key=args.system_key or _default(RecordSpec, "system_key"),
                      think_open=args.think_open, think_close=args.think_close,
                      implicit_think_open=args.implicit_think_open)
    try:
        spec, policy = apply_protocol(args.protocol, spec, kind=args.truncation, lsp=args.lsp,
                                      max_tokens=args.max_tokens, keep=args.keep, window_scope=args.window_scope,
                                      system_key=args.system_key)
    except ValueError as err:
        raise PreprocessError(str(err)) from err
    filters = FilterConfig(max_source_tokens=args.max_source_tokens,
                           require_closed_thinking=args.require_closed_thinking,
                           min_tokens=args.min_tokens, min_cot_tokens=args.min_cot_tokens,
                           min_answer_tokens=args.min_answer_tokens, max_record_chars=args.max_record_chars)
    job = Job(tokenizer=args.tokenizer, chat_format=args.chat_format, spec=spec, policy=policy, filters=filters,
              append_eod=args.append_eod, eod_token=args.eod_token)
    return PreprocessConfig(inputs=args.input, output_prefix=args.output_prefix, job=job, protocol=args.protocol,
                            workers=args.workers, chunk_docs=args.chunk_docs, strict=args.strict,
                            overwrite=args.overwrite, progress=not args.no_progress)


@cli_main
def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit code (0, 2 for a user error, 130 when interrupted)."""
    args = build_parser().parse_args(argv)
    try:
        manifest = run(config_from_args(args))
    except KeyboardInterrupt:
        print(f"error: interrupted; no output was written under {args.output_prefix}", file=sys.stderr)
        return 130
    counts, policy = manifest["counts"], manifest["truncation"]
    print(f"wrote {counts['written']:,} documents ({manifest['protocol']} protocol, {policy['kind']}, "
          f"lsp={policy['lsp']}) to {args.output_prefix}_tokens.bin/.idx and _sections.bin/.idx; "
          f"{counts['rejected']:,} rejected (see {args.output_prefix}.rejects.jsonl)")
    return 0
