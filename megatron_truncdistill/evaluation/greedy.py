"""Greedy decoding on a megatron-core GPTModel (TP1/PP1, one process) with megatron-core's static KV cache.

Prompts are decoded in batches of equal token length, so the prefill needs no padding or attention mask; each
following step feeds one token per sequence through ``StaticInferenceContext`` (cached keys/values), which the
tests check against full recompute. Token ids go to the model's device once per batch (the prompts) and once per
step (the previous step's ids are already there); the host reads the ids once per step, for the stop test.
"""

from __future__ import annotations

from collections import defaultdict

import torch
from megatron.core.inference.contexts import StaticInferenceContext


@torch.no_grad()
def greedy_generate(model, prompts: list[list[int]], *, max_new_tokens: int, stop_ids: set[int],
                    vocab_size: int, batch_size: int = 64) -> list[list[int]]:
    """Continue each prompt greedily until a stop id or ``max_new_tokens``; returns the new ids (stop excluded).

    ``vocab_size`` is the real vocabulary: padded output rows are never chosen.
    """
    model.eval()
    by_length = defaultdict(list)
    for i, ids in enumerate(prompts):
        by_length[len(ids)].append(i)
    outputs: list[list[int] | None] = [None] * len(prompts)
    device = next(model.parameters()).device  # generation runs where the model is
    for indices in by_length.values():
        for start in range(0, len(indices), batch_size):
            chunk = indices[start:start + batch_size]
            tokens = torch.tensor([prompts[i] for i in chunk], dtype=torch.long, device=device)  # [b, p]
            for i, new in zip(chunk, _decode_batch(model, tokens, max_new_tokens=max_new_tokens,
                                                   stop_ids=stop_ids, vocab_size=vocab_size)):
                outputs[i] = new
    return outputs


def _step(model, tokens: torch.Tensor, start: int, cache: StaticInferenceContext, vocab_size: int) -> torch.Tensor:
    """Feed ``tokens`` [b, n] at positions start..start+n-1; returns the greedy next ids [b]."""
    batch, n = tokens.shape
    positions = torch.arange(start, start + n, device=tokens.device).unsqueeze(0).expand(batch, -1)  # [b, n]
    logits = model(tokens, positions, None, inference_context=cache, runtime_gather_output=True)  # [b, n, v]
    cache.sequence_len_offset += n
    return logits[:, -1, :vocab_size].argmax(-1)


def _decode_batch(model, tokens: torch.Tensor, *, max_new_tokens: int, stop_ids: set[int],
                  vocab_size: int) -> list[list[int]]:
    batch, prompt_len = tokens.shape
    cache = StaticInferenceContext(max_batch_size=batch, max_sequence_length=prompt_len + max_new_tokens)
    stops = torch.tensor(sorted(stop_ids), dtype=torch.long, device=tokens.device)
    next_ids = _step(model, tokens, 0, cache, vocab_size)  # prefill
    generated, done = [next_ids], torch.isin(next_ids, stops)
    for offset in range(prompt_len, prompt_len + max_new_tokens - 1):
        if bool(done.all()):  # this is a CPU-GPU sync point (once per generated token)
            break
        next_ids = _step(model, next_ids.unsqueeze(1), offset, cache, vocab_size)  # [b, 1] -> [b]
        generated.append(next_ids)
        done |= torch.isin(next_ids, stops)
    steps = torch.stack(generated, dim=1).tolist()  # [b, n]; the ids to the host, once per batch
    return [_until_stop(row, stop_ids) for row in steps]


def _until_stop(ids: list[int], stop_ids: set[int]) -> list[int]:
    for j, token in enumerate(ids):
        if token in stop_ids:
            return ids[:j]
    return ids
