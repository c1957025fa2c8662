"""HF → megatron → HF is the identity, from the converter's TP1 checkpoint and from a TP2×PP2 trainer checkpoint.

Every exported tensor equals the original bit for bit (same names, dtypes, shapes), and transformers loads the
export and computes the original logits.
"""

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors import safe_open
from torch.distributed.checkpoint import FileSystemReader

import mcore_jobs
from gloo_ranks import run_gloo_ranks
from tiny_hf import TINY_MODELS, hf_logits, reference_logits, sample_tokens, tiny_checkpoints

NAMES = list(TINY_MODELS)


def _hf_tensors(directory: Path) -> dict:
    weight_map = json.loads((directory / "model.safetensors.index.json").read_text())["weight_map"]
    out = {}
    for name, shard in weight_map.items():
        with safe_open(directory / shard, framework="pt") as f:
            out[name] = f.get_tensor(name)
    return out


def _assert_identical_export(original: Path, exported: Path) -> None:
    before, after = _hf_tensors(original), _hf_tensors(exported)
    assert sorted(after) == sorted(before)
    for name, tensor in before.items():
        assert after[name].dtype == tensor.dtype and after[name].shape == tensor.shape, name
        assert np.array_equal(after[name].view(-1).numpy(), tensor.view(-1).numpy()), f"{name} differs"
    assert len(list(exported.glob("*.safetensors"))) >= 2, "export must shard (max_shard_bytes=64 KiB)"
    config = json.loads((exported / "config.json").read_text())
    assert config == json.loads((original / "config.json").read_text())


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """name → (original HF dir, export from TP1, export from TP2×PP2)."""
    root = tmp_path_factory.mktemp("exports")
    ckpts = {name: tiny_checkpoints()[name] for name in NAMES}
    resaved = [str(root / f"{n}.tp2pp2") for n in NAMES]
    run_gloo_ranks(mcore_jobs.resave_as_trainer, 4, [str(c) for _, c in ckpts.values()], resaved, 2, 2,
                   timeout=120)
    pairs = [(str(ckpts[n][1]), str(root / f"{n}.hf_tp1")) for n in NAMES]
    pairs += [(r, str(root / f"{n}.hf_tp2pp2")) for n, r in zip(NAMES, resaved)]
    saved_keys = FileSystemReader(resaved[0]).read_metadata().state_dict_metadata
    assert "optimizer.exp_avg" in saved_keys, "the trainer-style checkpoint must carry non-model state"
    run_gloo_ranks(mcore_jobs.export_all, 1, pairs, timeout=120)
    return {n: (ckpts[n][0], root / f"{n}.hf_tp1", root / f"{n}.hf_tp2pp2") for n in NAMES}


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("source", ["tp1", "tp2pp2"])
def test_export_is_bit_exact_and_loads_in_transformers(exports, name, source):
    original, from_tp1, from_tp2pp2 = exports[name]
    exported = from_tp1 if source == "tp1" else from_tp2pp2
    _assert_identical_export(original, exported)
    assert (exported / "generation_config.json").is_file()
    np.testing.assert_array_equal(hf_logits(exported, sample_tokens()), reference_logits(name))


def test_export_copies_tokenizer_files(tmp_path, qwen3_tokenizer_dir):
    ckpt = str(tiny_checkpoints()["qwen3"][1])
    (result,) = run_gloo_ranks(mcore_jobs.cli, 1, ["mcore-to-hf", "--input", ckpt, "--output", str(tmp_path / "hf"),
                                                   "--tokenizer", str(qwen3_tokenizer_dir)], timeout=60)
    assert result[0] == 0, result[1]
    assert (tmp_path / "hf" / "tokenizer.json").read_bytes() == (qwen3_tokenizer_dir / "tokenizer.json").read_bytes()


def test_bf16_checkpoint_round_trips_bit_exact(tmp_path):
    """Released checkpoints are bf16: the dtype is kept end to end (megatron's fp32 norm weights are cast back)."""
    import torch
    from transformers import AutoModelForCausalLM

    from tiny_hf import tiny_config

    torch.manual_seed(3)
    model = AutoModelForCausalLM.from_config(tiny_config("qwen3", tied=False), dtype=torch.bfloat16)
    model.save_pretrained(tmp_path / "hf", max_shard_size="100KB")
    run_gloo_ranks(mcore_jobs.convert_all, 1, [(str(tmp_path / "hf"), str(tmp_path / "ckpt"))], timeout=60)
    run_gloo_ranks(mcore_jobs.export_all, 1, [(str(tmp_path / "ckpt"), str(tmp_path / "out"))], timeout=60)
    before, after = _hf_tensors(tmp_path / "hf"), _hf_tensors(tmp_path / "out")
    assert sorted(before) == sorted(after)
    for name, tensor in before.items():
        assert after[name].dtype == torch.bfloat16 and torch.equal(after[name], tensor), name
