"""Sampling backends behind one call: token-id prompts in, ``n`` sampled continuations per prompt out.

- ``VllmBackend`` (the GPU path, what lighteval runs): vLLM's documented offline API, ``LLM(...)`` and
  ``LLM.generate(prompts, [SamplingParams(n=..., ...)])`` with ``{"prompt_token_ids": ...}`` prompts.
- ``TransformersBackend`` (CPU, small models, or one GPU): ``model.generate`` on left-padded batches, on the
  device the model was moved to, seeded per call.

Everything else (benchmarks, chat template, caching, grading) is shared by ``evaluation.generate``, so the CPU
tests cover it for both. Both backends get the prompt ids rendered by the same tokenizer, stop at the same stop
ids, and return new token ids with the stop token cut off; decoding to text is the pipeline's job.
"""

from __future__ import annotations

import importlib.util
import zlib
from dataclasses import dataclass
from pathlib import Path

from megatron_truncdistill.errors import UserError

BACKENDS = ("auto", "vllm", "transformers")


@dataclass(frozen=True)
class Sampling:
    """Decoding settings; the defaults are the paper's (lighteval + vLLM, AIME pass@1 over 64 samples)."""

    n: int = 64
    """Samples per problem."""
    temperature: float = 0.6
    """0 means greedy decoding."""
    top_p: float = 0.95
    top_k: int = 0
    """0 switches top-k off (vLLM's default; transformers' own default of 50 is overridden)."""
    max_new_tokens: int = 32768
    seed: int = 0

    def validate(self) -> None:
        checks = {"--n": self.n >= 1, "--temperature": self.temperature >= 0, "--top-p": 0 < self.top_p <= 1,
                  "--top-k": self.top_k >= 0, "--max-new-tokens": self.max_new_tokens >= 1}
        for option, ok in checks.items():
            if not ok:
                raise UserError(f"{option} {getattr(self, option[2:].replace('-', '_'))}: out of range "
                                     "(n, max-new-tokens >= 1; temperature, top-k >= 0; 0 < top-p <= 1)")


@dataclass(frozen=True)
class Sample:
    token_ids: list[int]
    """The new tokens, the stop token excluded."""
    finished: bool
    """True when the model stopped by itself (a stop token), False when it ran into ``max_new_tokens``."""


def cut_at_stop(ids: list[int], stop_ids: set[int]) -> Sample:
    for j, token in enumerate(ids):
        if token in stop_ids:
            return Sample(ids[:j], True)
    return Sample(ids, False)


def call_seed(seed: int, key) -> int:
    """A seed for one backend call, derived from the run's seed and the call's first problem (stable on resume)."""
    return zlib.crc32(repr((seed, key)).encode()) & 0x7FFFFFFF


class TransformersBackend:
    """``model.generate`` on left-padded batches of ``batch_size`` sequences, on one explicit device."""

    name = "transformers"

    def __init__(self, model_dir: str | Path, *, device: str, dtype: str = "auto", batch_size: int = 16):
        import torch
        from transformers import AutoModelForCausalLM

        torch_dtype = dtype if dtype == "auto" else getattr(torch, dtype)
        self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch_dtype).to(device).eval()
        self.batch_size = batch_size

    @property
    def device(self):
        return self.model.device

    def sample(self, prompts: list[list[int]], sampling: Sampling, *, stop_ids: set[int], pad_id: int,
               seed: int) -> list[list[Sample]]:
        """``sampling.n`` samples per prompt; rows are the prompts repeated n times, cut into batches."""
        import torch

        torch.manual_seed(seed)  # seeds every device's generator: one call is reproducible
        rows = [i for i in range(len(prompts)) for _ in range(sampling.n)]
        out: list[list[Sample]] = [[] for _ in prompts]
        for start in range(0, len(rows), self.batch_size):
            chunk = rows[start:start + self.batch_size]
            for i, sample in zip(chunk, self._generate([prompts[i] for i in chunk], sampling, stop_ids, pad_id)):
                out[i].append(sample)
        return out

    def _generate(self, prompts: list[list[int]], sampling: Sampling, stop_ids: set[int],
                  pad_id: int) -> list[Sample]:
        import torch
        from transformers import GenerationConfig

        width = max(len(p) for p in prompts)
        padded = [[pad_id] * (width - len(p)) + p for p in prompts]  # left padding: every prompt ends at `width`
        mask = [[0] * (width - len(p)) + [1] * len(p) for p in prompts]
        input_ids = torch.tensor(padded, dtype=torch.long, device=self.device)  # [b, width]
        attention_mask = torch.tensor(mask, dtype=torch.long, device=self.device)  # [b, width]
        knobs = dict(do_sample=True, temperature=sampling.temperature, top_p=sampling.top_p, top_k=sampling.top_k,
                     min_p=0.0) if sampling.temperature > 0 else dict(do_sample=False)
        # Every knob is set here so the model's generation_config.json cannot add its own (Qwen3 ships top_k=20).
        config = GenerationConfig(max_new_tokens=sampling.max_new_tokens, eos_token_id=sorted(stop_ids),
                                  pad_token_id=pad_id, repetition_penalty=1.0, **knobs)
        with torch.no_grad():
            sequences = self.model.generate(input_ids=input_ids, attention_mask=attention_mask,
                                            generation_config=config)  # [b, width + new]
        new = sequences[:, width:].tolist()  # a device-to-host sync point, once per batch
        return [cut_at_stop(row, stop_ids) for row in new]


class VllmBackend:
    """vLLM's offline ``LLM``: one ``generate`` call per batch of problems, n samples each, seeded per problem."""

    name = "vllm"

    def __init__(self, model_dir: str | Path, *, tokenizer_dir: str | Path, dtype: str = "auto",
                 tensor_parallel_size: int = 1, max_model_len: int | None = None, seed: int = 0):
        require_vllm()
        from vllm import LLM

        options = dict(max_model_len=max_model_len) if max_model_len else {}
        self._llm = LLM(model=str(model_dir), tokenizer=str(tokenizer_dir), dtype=dtype, seed=seed,
                        tensor_parallel_size=tensor_parallel_size, **options)

    def sample(self, prompts: list[list[int]], sampling: Sampling, *, stop_ids: set[int], pad_id: int,
               seed: int) -> list[list[Sample]]:
        from vllm import SamplingParams

        knobs = dict(temperature=sampling.temperature, top_p=sampling.top_p)
        if sampling.top_k > 0:  # left out when off: vLLM versions disagree on whether 0 or -1 means "off"
            knobs["top_k"] = sampling.top_k
        params = [SamplingParams(n=sampling.n, max_tokens=sampling.max_new_tokens, seed=seed + i,
                                 stop_token_ids=sorted(stop_ids), detokenize=False, **knobs)
                  for i in range(len(prompts))]
        outputs = self._llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
        return [[Sample(cut_at_stop(list(c.token_ids), stop_ids).token_ids, c.finish_reason == "stop")
                 for c in output.outputs] for output in outputs]


def vllm_installed() -> bool:
    return importlib.util.find_spec("vllm") is not None


def require_vllm() -> None:
    if not vllm_installed():
        raise UserError("--backend vllm: vLLM is not installed here (pip install vllm on a GPU machine), "
                             "or pass --backend transformers")


def resolve_backend(name: str) -> str:
    """``auto`` → ``vllm`` when it is installed, else ``transformers``; refuses ``vllm`` without vLLM."""
    if name not in BACKENDS:
        raise UserError(f"--backend {name}: choose one of {', '.join(BACKENDS)}")
    if name == "auto":
        return "vllm" if vllm_installed() else "transformers"
    if name == "vllm":
        require_vllm()
    return name


def resolve_device(device: str | None) -> str:
    """The transformers backend's device: ``--device`` as given, else cuda when available, else cpu."""
    import torch

    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {device}: CUDA is not available on this machine; pass --device cpu")
    return device
