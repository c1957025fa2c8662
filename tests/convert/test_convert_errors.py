"""Bad converter input: one ``error: ...`` line naming the problem, exit code 2, no traceback."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import mcore_jobs
from gloo_ranks import RankFailure, run_gloo_ranks
from tiny_hf import tiny_checkpoints

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def hf_copy(tmp_path):
    """A private copy of the tiny Qwen3 HF checkpoint to damage."""
    return Path(shutil.copytree(tiny_checkpoints()["qwen3"][0], tmp_path / "hf"))


def _edit_config(directory: Path, **changes) -> None:
    path = directory / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def _cli_subprocess(*argv):
    """The real script (cheap: these refusals happen before megatron-core is imported)."""
    proc = subprocess.run([sys.executable, str(REPO / "tools" / "convert_checkpoint.py"), *argv],
                          capture_output=True, text=True, timeout=60)
    return proc.returncode, proc.stderr


def _cli_in_rank(*argv):
    (result,) = run_gloo_ranks(mcore_jobs.cli, 1, list(argv), timeout=60)
    return result


def _assert_one_line_error(code: int, stderr: str, *fragments: str) -> None:
    lines = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert code == 2 and len(lines) == 1 and "Traceback" not in stderr, stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_unsupported_architecture_is_named(hf_copy, tmp_path):
    _edit_config(hf_copy, model_type="mistral", architectures=["MistralForCausalLM"])
    code, err = _cli_subprocess("hf-to-mcore", "--input", str(hf_copy), "--output", str(tmp_path / "out"))
    _assert_one_line_error(code, err, "MistralForCausalLM")


@pytest.mark.parametrize("change,named", [
    ({"use_sliding_window": True}, "use_sliding_window"),
    ({"rope_parameters": {"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e6}}, "rope_type='yarn'"),
    ({"attention_bias": True}, "attention_bias"),
])
def test_unsupported_option_is_named(hf_copy, tmp_path, change, named):
    _edit_config(hf_copy, **change)
    code, err = _cli_subprocess("hf-to-mcore", "--input", str(hf_copy), "--output", str(tmp_path / "out"))
    _assert_one_line_error(code, err, named)


def test_existing_output_needs_overwrite(hf_copy, tmp_path):
    (tmp_path / "out").mkdir()
    code, err = _cli_subprocess("hf-to-mcore", "--input", str(hf_copy), "--output", str(tmp_path / "out"))
    _assert_one_line_error(code, err, "exists", "--overwrite")
    code, err = _cli_in_rank("hf-to-mcore", "--input", str(hf_copy), "--output", str(tmp_path / "out"),
                             "--overwrite")
    assert code == 0 and (tmp_path / "out" / "truncdistill_model.json").is_file(), err


def test_missing_shard_is_named(hf_copy, tmp_path):
    (hf_copy / "model-00002-of-00006.safetensors").unlink()
    code, err = _cli_in_rank("hf-to-mcore", "--input", str(hf_copy), "--output", str(tmp_path / "out"))
    _assert_one_line_error(code, err, "missing shard model-00002-of-00006.safetensors")


def test_shape_mismatch_names_tensor_and_both_shapes(hf_copy, tmp_path):
    _edit_config(hf_copy, intermediate_size=80)  # the shards still hold 96-wide MLPs
    code, err = _cli_in_rank("hf-to-mcore", "--input", str(hf_copy), "--output", str(tmp_path / "out"))
    _assert_one_line_error(code, err, "model.layers.0.mlp.gate_proj.weight", "(96, 64)", "(80, 64)")


def test_padded_vocab_not_divisible_is_refused(hf_copy, tmp_path):
    code, err = _cli_in_rank("hf-to-mcore", "--input", str(hf_copy), "--output", str(tmp_path / "out"),
                             "--padded-vocab-size", "600")
    _assert_one_line_error(code, err, "600", "not divisible by 128")


def test_mcore_to_hf_refuses_a_directory_that_is_no_checkpoint(tmp_path):
    (tmp_path / "empty").mkdir()
    code, err = _cli_in_rank("mcore-to-hf", "--input", str(tmp_path / "empty"), "--output", str(tmp_path / "hf"))
    _assert_one_line_error(code, err, "neither a checkpoint of this project", "nor a run's checkpoint root")


def test_mcore_to_hf_refuses_a_dist_checkpoint_without_model_meta(tmp_path):
    ckpt = Path(shutil.copytree(tiny_checkpoints()["qwen3"][1], tmp_path / "ckpt"))
    (ckpt / "truncdistill_model.json").unlink()
    code, err = _cli_in_rank("mcore-to-hf", "--input", str(ckpt), "--output", str(tmp_path / "hf"))
    _assert_one_line_error(code, err, "truncdistill_model.json is missing")


def test_truncated_safetensors_shard_is_named(hf_copy, tmp_path):
    shard = hf_copy / "model-00003-of-00006.safetensors"
    with open(shard, "r+b") as f:
        f.truncate(shard.stat().st_size // 2)
    code, err = _cli_in_rank("hf-to-mcore", "--input", str(hf_copy), "--output", str(tmp_path / "out"))
    _assert_one_line_error(code, err, str(shard), "not a readable safetensors file", "download the model again")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("text,named", [
    ('{"metadata": {}, "weight_map": {', "not valid JSON"),
    ('{"metadata": {}}', "no 'weight_map' object"),
    ('[1, 2]', "expected a JSON object"),
])
def test_malformed_index_is_named(hf_copy, tmp_path, text, named):
    (hf_copy / "model.safetensors.index.json").write_text(text)
    code, err = _cli_in_rank("hf-to-mcore", "--input", str(hf_copy), "--output", str(tmp_path / "out"))
    _assert_one_line_error(code, err, str(hf_copy / "model.safetensors.index.json"), named)


def test_index_listing_a_tensor_its_shard_lacks_is_named(hf_copy, tmp_path):
    index = hf_copy / "model.safetensors.index.json"
    payload = json.loads(index.read_text())
    name = "model.norm.weight"
    other = next(shard for shard in payload["weight_map"].values() if shard != payload["weight_map"][name])
    payload["weight_map"][name] = other
    index.write_text(json.dumps(payload))
    code, err = _cli_in_rank("hf-to-mcore", "--input", str(hf_copy), "--output", str(tmp_path / "out"))
    _assert_one_line_error(code, err, str(hf_copy / other), f"has no tensor {name}")


@pytest.mark.parametrize("damage,named", [
    (lambda path: path.write_text(path.read_text()[:40]), "not valid JSON"),
    (lambda path: path.write_text(json.dumps({k: v for k, v in json.loads(path.read_text()).items()
                                              if k != "hidden_size"})), "no 'hidden_size' entry"),
    (lambda path: path.write_bytes(b"\xff\xfe\x00garbage"), "not valid JSON"),
], ids=["cut", "missing_key", "binary"])
def test_malformed_config_json_is_named(hf_copy, tmp_path, damage, named):
    damage(hf_copy / "config.json")
    code, err = _cli_in_rank("hf-to-mcore", "--input", str(hf_copy), "--output", str(tmp_path / "out"))
    _assert_one_line_error(code, err, str(hf_copy / "config.json"), named)


def test_non_finite_hf_weights_are_refused(hf_copy, tmp_path):
    import torch
    from safetensors.torch import load_file, save_file

    shard = hf_copy / json.loads((hf_copy / "model.safetensors.index.json").read_text())["weight_map"][
        "model.layers.1.mlp.down_proj.weight"]
    tensors = load_file(shard)
    tensors["model.layers.1.mlp.down_proj.weight"][3, 5] = float("inf")
    save_file(tensors, shard, metadata={"format": "pt"})
    code, err = _cli_in_rank("hf-to-mcore", "--input", str(hf_copy), "--output", str(tmp_path / "out"))
    _assert_one_line_error(code, err, str(shard), "model.layers.1.mlp.down_proj.weight", "1 non-finite")
    assert torch.isinf(load_file(shard)["model.layers.1.mlp.down_proj.weight"]).sum() == 1


def _bug_in_conversion(argv):
    """The CLI with a ValueError raised deep in the conversion, as a bug would (not a user error)."""
    from unittest import mock

    def broken(*args, **kwargs):
        raise ValueError("a bug, not bad input")

    with mock.patch("megatron_truncdistill.convert.hf_to_mcore.hf_to_mcore", broken):
        return mcore_jobs.cli(argv)


def test_a_bug_keeps_its_traceback(hf_copy, tmp_path):
    """Issue 11: only UserError is one line and exit 2; a ValueError from a bug propagates with its traceback."""
    with pytest.raises(RankFailure, match=r"(?s)Traceback.*ValueError: a bug, not bad input"):
        run_gloo_ranks(_bug_in_conversion, 1, ["hf-to-mcore", "--input", str(hf_copy), "--output",
                                              str(tmp_path / "out")], timeout=60)


def test_loading_refuses_fewer_rows_than_the_real_vocabulary():
    ckpt = str(tiny_checkpoints()["qwen3"][1])
    with pytest.raises(RankFailure, match=r"has 512 vocabulary rows, fewer than the real vocabulary \(600\)"):
        run_gloo_ranks(mcore_jobs.load_with_real_vocab, 1, ckpt, 600, timeout=60)


def test_tokenizer_larger_than_the_embedding_is_refused(hf_copy, tmp_path, qwen3_tokenizer_dir):
    """With tokenizer files beside the weights, the real vocabulary is the tokenizer's (151,669 > 512 rows)."""
    for source in qwen3_tokenizer_dir.iterdir():
        if source.is_file():
            shutil.copy(source, hf_copy / source.name)
    code, err = _cli_in_rank("hf-to-mcore", "--input", str(hf_copy), "--output", str(tmp_path / "out"))
    _assert_one_line_error(code, err, "512 embedding rows, fewer than the tokenizer's 151669 tokens")


def test_unusable_tokenizer_files_are_named(hf_copy, tmp_path):
    """A directory with tokenizer files but no tokenizer.json: the tokenizer's refusal, as one line."""
    (hf_copy / "vocab.json").write_text("{}")
    code, err = _cli_in_rank("hf-to-mcore", "--input", str(hf_copy), "--output", str(tmp_path / "out"))
    _assert_one_line_error(code, err, f"--input {hf_copy}", "no tokenizer.json")


def test_loading_another_architecture_names_the_mismatch():
    """E.g. teacher and student paths swapped in a config: refused before dist_checkpointing's shape assertion."""
    qwen3, llama = tiny_checkpoints()["qwen3"][1], tiny_checkpoints()["llama31"][1]
    with pytest.raises(RankFailure, match="checkpoint kv_channels=32 but the model has kv_channels=16"):
        run_gloo_ranks(mcore_jobs.load_into_other_architecture, 1, str(qwen3), str(llama), timeout=60)
