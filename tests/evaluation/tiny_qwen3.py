"""Tiny random Qwen3 models with the real Qwen3 tokenizer (so prompts render with its chat template), and a
helper that teaches one to answer given problems (so an end-to-end run has a known pass@1).

The vocabulary is the tokenizer's (151,936 rows as in Qwen3, tied embeddings): 9.8 M parameters, 39 MB in fp32.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from tiny_hf import tiny_config

QWEN3_VOCAB = 151936
QWEN3_EOS = [151645, 151643]  # <|im_end|>, <|endoftext|>: Qwen3's generation_config.json
QWEN3_PAD = 151643


def save_tiny_qwen3(directory: Path, tokenizer_dir: Path, *, seed: int = 0, initializer_range: float = 0.02) -> Path:
    """A random tiny Qwen3 saved with the tokenizer files and Qwen3's generation config (two EOS ids)."""
    from transformers import AutoModelForCausalLM, GenerationConfig

    config = tiny_config("qwen3", tied=True)
    config.vocab_size = QWEN3_VOCAB
    config.initializer_range = initializer_range
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.save_pretrained(directory)
    GenerationConfig(eos_token_id=QWEN3_EOS, pad_token_id=QWEN3_PAD).save_pretrained(directory)
    for f in Path(tokenizer_dir).iterdir():
        shutil.copy(f, directory / f.name)
    return directory


def answer_text(answer) -> str:
    """What a taught model writes after the prompt: an empty thinking, then the boxed answer."""
    return f"<think>\n\n</think>\n\n\\boxed{{{answer}}}"


def teach_answers(model_dir: Path, problems, *, steps: int = 40, lr: float = 2e-2) -> float:
    """Fine-tune the model in place to write ``answer_text`` and stop (EOS) after each problem's prompt.

    The prompts are rendered by the evaluation pipeline itself (``generate.render_prompts``, default template),
    so a taught model answers exactly the prompts ``generate`` gives it. Returns the final loss.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from megatron_truncdistill.evaluation.generate import DEFAULT_PROMPT, render_prompts

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    prompts = render_prompts(tokenizer, list(problems), DEFAULT_PROMPT)
    targets = [tokenizer(answer_text(p.answer), add_special_tokens=False)["input_ids"] + [QWEN3_EOS[0]]
               for p in problems]
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(steps):
        optimizer.zero_grad()
        loss = sum(_answer_loss(model, prompt, target) for prompt, target in zip(prompts, targets)) / len(prompts)
        loss.backward()
        optimizer.step()
    model.save_pretrained(model_dir)
    return loss.item()


def _answer_loss(model, prompt: list[int], target: list[int]) -> torch.Tensor:
    ids = torch.tensor([prompt + target])  # [1, s]
    hidden = model.model(input_ids=ids).last_hidden_state  # [1, s, h]
    positions = torch.arange(len(prompt) - 1, len(prompt) + len(target) - 1)  # the states that predict the target
    logits = model.lm_head(hidden[0, positions])  # [t, V]
    return torch.nn.functional.cross_entropy(logits, torch.tensor(target))
