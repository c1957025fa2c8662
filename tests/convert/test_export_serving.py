"""An export a server can use (issue 13 item 5): any run checkpoint in, generation config, provenance, readable files.

Trainer checkpoint roots are laid out with train_state's own names (``iteration_dir``, ``latest``,
``truncdistill_train.json``) around copies of a converted tiny checkpoint.
"""

import json
import os
import shutil
import stat
from pathlib import Path

import pytest
import torch

import mcore_jobs
from gloo_ranks import run_gloo_ranks
from megatron_truncdistill.checkpoint.model_checkpoint import save_model_checkpoint
from megatron_truncdistill.checkpoint.train_state import LATEST_FILE, META_FILE, iteration_dir
from megatron_truncdistill.parallel import destroy_parallel, initialize_parallel
from tiny_hf import tiny_checkpoints

PROVENANCE = "truncdistill_provenance.json"
TRAINER_RECORD = {"lsp": 0.4, "protocol": "lead-span", "teacher": {"load": "/ckpt/qwen3-8b", "sha256": "ab12"},
                  "data_manifests": {"/data/r1.lsp0.4": "cd34"}}


def _cli_in_rank(*argv):
    (result,) = run_gloo_ranks(mcore_jobs.cli, 1, [str(a) for a in argv], timeout=60)
    return result


def _assert_ok(result):
    code, err = result
    assert code == 0 and "Traceback" not in err, err


def _assert_refused(result, *fragments):
    code, err = result
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def _add_iteration(root: Path, ckpt: Path, step: int, *, latest: bool = True, **record) -> Path:
    """``root/iter_<step>`` as the trainer writes it (a copy of ``ckpt`` plus its JSON), optionally ``latest``."""
    target = iteration_dir(root, step)
    shutil.copytree(ckpt, target)
    (target / META_FILE).write_text(json.dumps({"step": step, "consumed_samples": 8 * step, **record}))
    if latest:
        (root / LATEST_FILE).write_text(target.name + "\n")
    return target


@pytest.fixture
def run_root(tmp_path):
    """A run's checkpoints/ root with iterations 3 and 6; ``latest`` names 6."""
    ckpt = tiny_checkpoints()["qwen3"][1]
    root = tmp_path / "run" / "checkpoints"
    _add_iteration(root, ckpt, 3)
    _add_iteration(root, ckpt, 6, **TRAINER_RECORD)
    return root


def _provenance(export: Path) -> dict:
    return json.loads((export / PROVENANCE).read_text())


def test_a_run_checkpoint_root_exports_its_latest_iteration(run_root, tmp_path):
    _assert_ok(_cli_in_rank("mcore-to-hf", "--input", run_root, "--output", tmp_path / "hf"))
    record = _provenance(tmp_path / "hf")
    assert record["source_checkpoint"] == str(iteration_dir(run_root, 6).resolve())
    assert record["source_kind"] == "trainer" and record["step"] == 6
    assert {key: record[key] for key in TRAINER_RECORD} == TRAINER_RECORD
    assert record["training"] == json.loads((iteration_dir(run_root, 6) / META_FILE).read_text())
    assert record["architecture"] == "Qwen3ForCausalLM" and record["params_dtype"] == "float32"


def test_one_iteration_directory_exports_that_iteration(run_root, tmp_path):
    _assert_ok(_cli_in_rank("mcore-to-hf", "--input", iteration_dir(run_root, 3), "--output", tmp_path / "hf"))
    record = _provenance(tmp_path / "hf")
    assert record["step"] == 3 and record["lsp"] is None, "fields the trainer did not record are null"


@pytest.mark.parametrize("case", ["run_dir", "no_latest", "dangling_latest"])
def test_a_wrong_checkpoint_path_says_which_one_to_pass(run_root, tmp_path, case):
    if case == "run_dir":
        given, named = run_root.parent, f"pass its checkpoint root, {run_root}"
    elif case == "no_latest":
        (run_root / LATEST_FILE).unlink()
        given, named = run_root, f"(newest: {iteration_dir(run_root, 6)})"
    else:
        (run_root / LATEST_FILE).write_text("iter_0000009\n")
        given, named = run_root, "names iter_0000009, which does not exist"
    _assert_refused(_cli_in_rank("mcore-to-hf", "--input", given, "--output", tmp_path / "hf"), named)
    assert not (tmp_path / "hf").exists()


def test_model_meta_extra_supplies_provenance_the_trainer_did_not_record(tmp_path):
    ckpt = Path(shutil.copytree(tiny_checkpoints()["qwen3"][1], tmp_path / "ckpt"))
    meta_path = ckpt / "truncdistill_model.json"
    meta_path.write_text(json.dumps({**json.loads(meta_path.read_text()), "extra": {"step": 11, "lsp": 0.25}}))
    _assert_ok(_cli_in_rank("mcore-to-hf", "--input", ckpt, "--output", tmp_path / "hf"))
    record = _provenance(tmp_path / "hf")
    assert (record["source_kind"], record["step"], record["lsp"], record["training"]) == ("model", 11, 0.25, None)
    assert record["model_extra"] == {"step": 11, "lsp": 0.25}


def test_generation_config_survives_hf_to_mcore_and_back(tmp_path):
    hf_dir, ckpt = tiny_checkpoints()["qwen3"]
    source = json.loads((hf_dir / "generation_config.json").read_text())
    assert json.loads((ckpt / "truncdistill_model.json").read_text())["generation_config"] == source
    _assert_ok(_cli_in_rank("mcore-to-hf", "--input", ckpt, "--output", tmp_path / "hf"))
    assert json.loads((tmp_path / "hf" / "generation_config.json").read_text()) == source
    assert _provenance(tmp_path / "hf")["generation_config_source"] == "checkpoint"


def test_generation_config_falls_back_to_the_tokenizer_directory(tmp_path, qwen3_tokenizer_dir):
    """Trainer checkpoints may record none: the base model's directory given as --tokenizer supplies it."""
    ckpt = Path(shutil.copytree(tiny_checkpoints()["qwen3"][1], tmp_path / "ckpt"))
    meta_path = ckpt / "truncdistill_model.json"
    meta_path.write_text(json.dumps({**json.loads(meta_path.read_text()), "generation_config": None}))
    base = Path(shutil.copytree(qwen3_tokenizer_dir, tmp_path / "base"))
    stops = {"eos_token_id": [151645, 151643], "temperature": 0.6, "top_p": 0.95, "do_sample": True}
    (base / "generation_config.json").write_text(json.dumps(stops))
    _assert_ok(_cli_in_rank("mcore-to-hf", "--input", ckpt, "--output", tmp_path / "hf", "--tokenizer", base))
    assert json.loads((tmp_path / "hf" / "generation_config.json").read_text()) == stops
    assert _provenance(tmp_path / "hf")["generation_config_source"] == str(base / "generation_config.json")
    code, err = _cli_in_rank("mcore-to-hf", "--input", ckpt, "--output", tmp_path / "hf2")
    assert code == 0 and "warning: the checkpoint records no generation_config.json" in err, err
    assert not (tmp_path / "hf2" / "generation_config.json").exists()


def _cli_with_umask(argv):
    os.umask(0o077)  # a user whose files are private by default
    return mcore_jobs.cli(argv)


def test_every_exported_file_is_world_readable(tmp_path, qwen3_tokenizer_dir):
    """A vLLM server running as another user must read the export; safetensors alone writes 0600."""
    ckpt = tiny_checkpoints()["qwen3"][1]
    argv = ["mcore-to-hf", "--input", str(ckpt), "--output", str(tmp_path / "hf"), "--tokenizer",
            str(qwen3_tokenizer_dir)]
    (result,) = run_gloo_ranks(_cli_with_umask, 1, argv, timeout=60)
    _assert_ok(result)
    paths = [tmp_path / "hf", *(tmp_path / "hf").rglob("*")]
    assert any(p.suffix == ".safetensors" for p in paths)
    for path in paths:
        mode = stat.S_IMODE(path.stat().st_mode)
        need = 0o555 if path.is_dir() else 0o444
        assert mode & need == need, f"{path.name} has mode {oct(mode)}"


def _save_with_non_finite(ckpt_dir, out_dir):
    """Load ``ckpt_dir``, put a NaN and an Inf into one weight (a diverged run), save it at ``out_dir``."""
    ctx = initialize_parallel(1, 1)
    model, meta = mcore_jobs.load_stage(ckpt_dir, ctx)
    with torch.no_grad():
        weight = dict(model.named_parameters())["decoder.layers.1.mlp.linear_fc2.weight"]
        weight[0, 0], weight[2, 1] = float("nan"), float("inf")
    save_model_checkpoint([model], out_dir, meta)
    destroy_parallel()


def test_non_finite_weights_are_not_exported(tmp_path):
    root = tmp_path / "run" / "checkpoints"
    diverged = tmp_path / "diverged"
    run_gloo_ranks(_save_with_non_finite, 1, str(tiny_checkpoints()["qwen3"][1]), str(diverged), timeout=60)
    _add_iteration(root, diverged, 7)
    result = _cli_in_rank("mcore-to-hf", "--input", root, "--output", tmp_path / "hf")
    _assert_refused(result, f"{iteration_dir(root, 7)} (step 7)", "decoder.layers.1.mlp.linear_fc2.weight",
                    "2 non-finite values")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["diverged", "run"], "no export and no staging debris"
