"""``evaluate.py generate``: one pipeline for both backends, resumable through ``DIR/generations.jsonl``.

load benchmarks → (export a checkpoint) → render each problem with the model's chat template, thinking enabled
→ the backend samples n continuations per problem, a batch of problems per call → each batch's records are
appended to ``generations.jsonl`` at once → grade everything in the file (``grades.json``).

A rerun with the same ``--output`` skips the problems already in the file, so a killed run resumes where it stopped
and never writes a problem twice. Batches are cut from the full problem list (not from what is left), so a resumed
run hands the backend the same batches, with the same seeds, as an uninterrupted one.
"""

from __future__ import annotations

import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tqdm import tqdm

from megatron_truncdistill.evaluation.backends import (
    Sample,
    Sampling,
    TransformersBackend,
    VllmBackend,
    call_seed,
    resolve_backend,
    resolve_device,
)
from megatron_truncdistill.evaluation.benchmarks import Problem, load_benchmarks
from megatron_truncdistill.errors import UserError
from megatron_truncdistill.evaluation.export import hf_model_dir
from megatron_truncdistill.evaluation.grading import grade_generations, summary_table
from megatron_truncdistill.evaluation.run_files import GRADES_FILE, GenerationsFile, check_settings

DEFAULT_PROMPT = "{problem}\n\nPlease reason step by step, and put your final answer within \\boxed{}."
"""DeepSeek-R1's recommended instruction for math; ``{problem}`` is replaced by the problem text."""
DEFAULT_BATCH_SIZE = {"transformers": 16, "vllm": 1024}
# tqdm's default flips a rate below 1/s into "s/sample"; a 32k-token run always reads in samples/s, with its ETA.
PROGRESS_FORMAT = "{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed} elapsed, ETA {remaining}, {rate_noinv_fmt}{postfix}]"


@dataclass
class GenerateConfig:
    model: str
    """A HF model directory or a checkpoint of this project (exported on the fly)."""
    benchmarks: list[str]
    """``FILE.jsonl`` or ``NAME=FILE.jsonl`` each."""
    output: str
    tokenizer: str | None = None
    """Tokenizer directory (default: the model's; a checkpoint's recorded one)."""
    problem_key: str | None = None
    answer_key: str | None = None
    limit: int | None = None
    """Only the first ``limit`` problems of each file."""
    prompt_template: str = DEFAULT_PROMPT
    sampling: Sampling = field(default_factory=Sampling)
    backend: str = "auto"
    device: str | None = None
    """transformers only: default cuda when available, else cpu."""
    dtype: str = "auto"
    batch_size: int | None = None
    """Sequences per backend call (prompts × n); default ``DEFAULT_BATCH_SIZE``."""
    tensor_parallel_size: int = 1
    max_model_len: int | None = None
    progress: bool = True


def log(message: str) -> None:
    print(f"[evaluate {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def render_prompts(tokenizer, problems: list[Problem], template: str) -> list[list[int]]:
    """Prompt ids: the template around the problem as the user turn, the chat template with thinking enabled.

    ``enable_thinking=True`` is passed to every template; templates that do not read it (DeepSeek-R1's opens
    ``<think>`` itself) ignore it.
    """
    if getattr(tokenizer, "chat_template", None) is None:
        raise UserError(f"tokenizer {tokenizer.name_or_path} has no chat template; pass --tokenizer with one")
    texts = [tokenizer.apply_chat_template([{"role": "user", "content": template.replace("{problem}", p.problem)}],
                                           tokenize=False, add_generation_prompt=True, enable_thinking=True)
             for p in problems]
    return [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]  # the template wrote the specials


def stop_token_ids(model_dir: Path, tokenizer) -> set[int]:
    """The tokenizer's EOS and every ``eos_token_id`` of the model's generation config (Qwen3: two)."""
    from transformers import GenerationConfig

    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    if (model_dir / "generation_config.json").is_file():
        eos = GenerationConfig.from_pretrained(model_dir).eos_token_id
        ids |= set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    if not ids:
        raise UserError(f"{model_dir}: neither the tokenizer nor generation_config.json names an EOS token")
    return ids


def _settings(config: GenerateConfig) -> dict:
    """What must not change between a run and its resumption (see ``run_files.check_settings``)."""
    return {"model": str(Path(config.model).resolve()), "prompt_template": config.prompt_template,
            **asdict(config.sampling)}


def _batches(problems: list[Problem], per_call: int, done: set) -> list[list[Problem]]:
    """Batches cut from the full list, then stripped of finished problems (stable across resumption)."""
    batches = [[p for p in problems[i:i + per_call] if p.key not in done] for i in range(0, len(problems), per_call)]
    return [b for b in batches if b]


def _make_backend(name: str, model_dir: Path, *, tokenizer_dir: Path, config: GenerateConfig, batch_size: int,
                  device: str | None):
    if name == "vllm":
        return VllmBackend(model_dir, tokenizer_dir=tokenizer_dir, dtype=config.dtype,
                           tensor_parallel_size=config.tensor_parallel_size, max_model_len=config.max_model_len,
                           seed=config.sampling.seed)
    return TransformersBackend(model_dir, device=device, dtype=config.dtype,
                               batch_size=batch_size)


def _record(problem: Problem, samples: list[Sample], tokenizer) -> dict:
    return {"benchmark": problem.benchmark, "source": problem.source, "index": problem.index,
            "problem": problem.problem, "answer": problem.answer,
            "generations": [tokenizer.decode(s.token_ids, skip_special_tokens=True) for s in samples],
            "num_tokens": [len(s.token_ids) for s in samples], "finished": [s.finished for s in samples]}


def _sample_all(backend, tokenizer, batches: list[list[Problem]], *, config: GenerateConfig, stop_ids: set[int],
                cache: GenerationsFile) -> None:
    sampling = config.sampling
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(stop_ids)  # masked anyway
    total = sum(len(b) for b in batches) * sampling.n
    with tqdm(total=total, desc=f"generate ({backend.name})", unit=" samples", file=sys.stderr,
              disable=not config.progress, smoothing=0.1, mininterval=1.0, bar_format=PROGRESS_FORMAT) as bar:
        tokens, start = 0, time.perf_counter()
        for batch in batches:
            prompts = render_prompts(tokenizer, batch, config.prompt_template)
            samples = backend.sample(prompts, sampling, stop_ids=stop_ids, pad_id=pad_id,
                                     seed=call_seed(sampling.seed, batch[0].key))
            cache.append([_record(p, s, tokenizer) for p, s in zip(batch, samples)])
            tokens += sum(len(s.token_ids) for per_problem in samples for s in per_problem)
            bar.set_postfix_str(f"{tokens / (time.perf_counter() - start):.1f} new tokens/s", refresh=False)
            bar.update(len(batch) * sampling.n)


def run_generate(config: GenerateConfig) -> dict:
    """Generate what ``config.output`` lacks, then grade the whole file; returns the grades payload."""
    from transformers import AutoTokenizer

    config.sampling.validate()
    if "{problem}" not in config.prompt_template:
        raise UserError("--prompt-template must contain {problem}")
    backend_name = resolve_backend(config.backend)
    device = resolve_device(config.device) if backend_name == "transformers" else None
    problems = load_benchmarks(config.benchmarks, problem_key=config.problem_key, answer_key=config.answer_key,
                               limit=config.limit)
    if not Path(config.model).exists():
        raise UserError(f"--model {config.model}: not found (a HF model directory or a checkpoint)")
    out = Path(config.output)
    out.mkdir(parents=True, exist_ok=True)
    cache = GenerationsFile(out)
    cache.drop_partial_tail()
    done = set(cache.completed())
    check_settings(out, _settings(config), has_records=bool(done))
    s = config.sampling
    batch_size = config.batch_size or DEFAULT_BATCH_SIZE[backend_name]
    batches = _batches(problems, max(1, batch_size // s.n), done)  # n > batch_size: one problem, several passes
    todo = sum(len(b) for b in batches)
    log(f"{len(problems)} problems ({len(problems) - todo} already in {cache.path}), {s.n} samples each, "
        f"T={s.temperature} top-p={s.top_p} max {s.max_new_tokens} new tokens, seed {s.seed}")
    if batches:
        with hf_model_dir(config.model, tokenizer=config.tokenizer, scratch=out, log=log) as model_dir:
            tokenizer_dir = Path(config.tokenizer) if config.tokenizer else model_dir
            tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
            stop_ids = stop_token_ids(model_dir, tokenizer)
            backend = _make_backend(backend_name, model_dir, tokenizer_dir=tokenizer_dir, config=config,
                                    batch_size=batch_size, device=device)
            log(f"backend {backend_name}" + (f" on {backend.device}" if backend_name == "transformers" else "")
                + f", {todo} problems to generate -> {cache.path}")
            _sample_all(backend, tokenizer, batches, config=config, stop_ids=stop_ids, cache=cache)
    grades = grade_generations(cache.path, out / GRADES_FILE, progress=config.progress)
    log(f"wrote {out / GRADES_FILE}\n{summary_table(grades['pass@1'])}")
    return grades
