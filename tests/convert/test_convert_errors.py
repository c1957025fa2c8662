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
    _assert_one_line_error(code, err, "truncdistill_model.json is missing")


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


def test_loading_another_architecture_names_the_mismatch():
    """E.g. teacher and student paths swapped in a config: refused before dist_checkpointing's shape assertion."""
    qwen3, llama = tiny_checkpoints()["qwen3"][1], tiny_checkpoints()["llama31"][1]
    with pytest.raises(RankFailure, match="checkpoint kv_channels=32 but the model has kv_channels=16"):
        run_gloo_ranks(mcore_jobs.load_into_other_architecture, 1, str(qwen3), str(llama), timeout=60)
