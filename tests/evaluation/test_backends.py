"""The two sampling backends: vLLM's documented offline API (through a stand-in module, since vLLM cannot be
installed here), transformers' batched left-padded sampling on the model's device, seeded."""

from __future__ import annotations

import importlib.machinery
import sys
import types
from dataclasses import dataclass

import pytest
import torch

from megatron_truncdistill.evaluation import backends
from megatron_truncdistill.evaluation.backends import Sampling, TransformersBackend, VllmBackend, cut_at_stop
from megatron_truncdistill.evaluation.cli import main
from megatron_truncdistill.errors import UserError

STOP = {7, 9}


def test_cut_at_stop():
    assert cut_at_stop([1, 2, 9, 4], STOP) == backends.Sample([1, 2], True)
    assert cut_at_stop([1, 2, 3], STOP) == backends.Sample([1, 2, 3], False)


def test_vllm_absent_is_one_line_exit_2(tmp_path, eval_dir, tiny_qwen3_dir, capsys):
    assert not backends.vllm_installed()
    assert backends.resolve_backend("auto") == "transformers"
    rc = main(["generate", "--model", str(tiny_qwen3_dir), "--benchmark", str(eval_dir / "aime24.jsonl"),
               "--output", str(tmp_path / "out"), "--backend", "vllm"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "vLLM is not installed" in err[0] and "--backend transformers" in err[0]


@dataclass
class _Completion:
    token_ids: list
    finish_reason: str


class _FakeLLM:
    """Stands in for ``vllm.LLM``: records what the backend asks and answers like vLLM's RequestOutput."""

    calls: list = []

    def __init__(self, **kwargs):
        self.kwargs = kwargs

    def generate(self, prompts, sampling_params, use_tqdm=True):
        _FakeLLM.calls.append((prompts, sampling_params, use_tqdm))
        return [types.SimpleNamespace(outputs=[_Completion(p["prompt_token_ids"][-1:] + [k, 9], "stop")
                                               for k in range(sp.n)]) for p, sp in zip(prompts, sampling_params)]


@pytest.fixture
def fake_vllm(monkeypatch):
    module = types.ModuleType("vllm")
    module.__spec__ = importlib.machinery.ModuleSpec("vllm", None)
    module.LLM = _FakeLLM
    module.SamplingParams = lambda **kw: types.SimpleNamespace(**kw)
    monkeypatch.setitem(sys.modules, "vllm", module)
    _FakeLLM.calls = []
    return module


def test_vllm_backend_uses_the_documented_offline_api(fake_vllm):
    assert backends.resolve_backend("auto") == "vllm"
    backend = VllmBackend("/models/m", tokenizer_dir="/models/m", dtype="bfloat16", tensor_parallel_size=2, seed=3)
    assert backend._llm.kwargs == {"model": "/models/m", "tokenizer": "/models/m", "dtype": "bfloat16", "seed": 3,
                                   "tensor_parallel_size": 2}
    sampling = Sampling(n=3, temperature=0.6, top_p=0.95, max_new_tokens=100)
    out = backend.sample([[1, 2, 5], [4, 6]], sampling, stop_ids=STOP, pad_id=0, seed=11)
    prompts, params, use_tqdm = _FakeLLM.calls[0]
    assert prompts == [{"prompt_token_ids": [1, 2, 5]}, {"prompt_token_ids": [4, 6]}] and not use_tqdm
    assert [vars(p) for p in params] == [
        {"n": 3, "max_tokens": 100, "seed": 11 + i, "stop_token_ids": [7, 9], "detokenize": False,
         "temperature": 0.6, "top_p": 0.95} for i in range(2)], "top_k is left out when off"
    assert [[s.token_ids for s in per] for per in out] == [[[5, 0], [5, 1], [5, 2]], [[6, 0], [6, 1], [6, 2]]]
    assert all(s.finished for per in out for s in per)


class _DeviceSpy(torch.nn.Module):
    """A model on a device the CPU cannot stand in for ("meta"): the backend must build its inputs there."""

    device = torch.device("meta")

    def __init__(self):
        super().__init__()
        self.seen = []

    def generate(self, input_ids, attention_mask, generation_config):
        self.seen.append((input_ids.device, attention_mask.device, input_ids.shape, generation_config))
        width, new = input_ids.shape[1], generation_config.max_new_tokens
        return torch.full((input_ids.shape[0], width + new), 3)  # host result; only the inputs are checked


def test_transformers_inputs_are_on_the_models_device_left_padded(monkeypatch):
    backend = TransformersBackend.__new__(TransformersBackend)
    backend.model, backend.batch_size = _DeviceSpy(), 4
    out = backend.sample([[1, 2, 3], [4]], Sampling(n=3, max_new_tokens=2), stop_ids=STOP, pad_id=0, seed=0)
    assert [len(per) for per in out] == [3, 3]
    shapes = [shape for _, _, shape, _ in backend.model.seen]
    assert all(i.type == "meta" and m.type == "meta" for i, m, _, _ in backend.model.seen)
    assert shapes == [torch.Size([4, 3]), torch.Size([2, 1])], "6 rows in batches of 4, each padded to its longest"
    config = backend.model.seen[0][3]
    assert (config.do_sample, config.temperature, config.top_p, config.top_k) == (True, 0.6, 0.95, 0)
    assert config.eos_token_id == [7, 9] and config.pad_token_id == 0


def test_batched_left_padded_greedy_equals_one_prompt_at_a_time(tmp_path, qwen3_tokenizer_dir):
    from evaluation.tiny_qwen3 import save_tiny_qwen3

    model_dir = save_tiny_qwen3(tmp_path / "m", qwen3_tokenizer_dir, initializer_range=0.5)  # sharp argmax
    backend = TransformersBackend(model_dir, device="cpu", batch_size=8)
    prompts = [[100, 200, 300, 400, 500], [600, 700], [800, 900, 1000]]
    greedy = Sampling(n=1, temperature=0.0, max_new_tokens=6)
    batched = backend.sample(prompts, greedy, stop_ids={151645}, pad_id=151643, seed=0)
    alone = [backend.sample([p], greedy, stop_ids={151645}, pad_id=151643, seed=0)[0] for p in prompts]
    assert batched == alone and all(len(per[0].token_ids) == 6 for per in batched)


def test_transformers_sampling_is_reproducible_per_seed(tiny_qwen3_dir):
    backend = TransformersBackend(tiny_qwen3_dir, device="cpu", batch_size=4)
    sampling = Sampling(n=4, temperature=1.0, top_p=1.0, max_new_tokens=5)
    run = lambda seed: backend.sample([[10, 20, 30]], sampling, stop_ids={151645}, pad_id=151643, seed=seed)  # noqa
    first = run(1)
    assert first == run(1) and first != run(2)
    assert len({tuple(s.token_ids) for s in first[0]}) > 1, "n samples of one prompt differ"


def test_out_of_range_sampling_names_the_option():
    with pytest.raises(UserError, match="--top-p 1.5"):
        Sampling(top_p=1.5).validate()
    with pytest.raises(UserError, match="--n 0"):
        Sampling(n=0).validate()


def test_generate_pipeline_through_the_vllm_backend(fake_vllm, tmp_path, eval_dir, tiny_qwen3_dir):
    """Everything but vLLM itself: prompts, batching, records and grading around the stand-in LLM."""
    import json

    out = tmp_path / "run"
    assert main(["generate", "--model", str(tiny_qwen3_dir), "--benchmark", str(eval_dir / "aime25_I.jsonl"),
                 "--limit", "3", "--n", "2", "--batch-size", "4", "--output", str(out), "--no-progress"]) == 0
    records = [json.loads(line) for line in (out / "generations.jsonl").read_text().splitlines()]
    assert [r["index"] for r in records] == [0, 1, 2] and all(r["finished"] == [True, True] for r in records)
    assert [len(c[0]) for c in _FakeLLM.calls] == [2, 1], "batch-size 4 at n=2: two problems per call"
    assert _FakeLLM.calls[0][1][0].n == 2 and _FakeLLM.calls[0][1][0].max_tokens == 32768
    assert json.loads((out / "grades.json").read_text())["pass@1"]["aime25_I"]["samples"] == 6
