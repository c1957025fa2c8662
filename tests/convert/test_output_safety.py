"""Nothing is lost (issue 12): an output is replaced only once the new one is complete, and never over an input."""

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest

import mcore_jobs
from gloo_ranks import run_gloo_ranks
from tiny_hf import tiny_checkpoints


def _cli_in_rank(*argv):
    (result,) = run_gloo_ranks(mcore_jobs.cli, 1, [str(a) for a in argv], timeout=60)
    return result


def _digest(directory: Path) -> dict[str, str]:
    """Relative path → sha256 of every file under ``directory`` (what "untouched" means here)."""
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file()}


def _assert_refused(code: int, stderr: str, *fragments: str) -> None:
    lines = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert code == 2 and len(lines) == 1 and "Traceback" not in stderr, stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.fixture
def hf_dir(tmp_path):
    return Path(shutil.copytree(tiny_checkpoints()["qwen3"][0], tmp_path / "hf"))


@pytest.fixture
def ckpt_dir(tmp_path):
    return Path(shutil.copytree(tiny_checkpoints()["qwen3"][1], tmp_path / "ckpt"))


def _siblings(path: Path) -> list[str]:
    return sorted(p.name for p in path.parent.iterdir() if p.name.startswith(path.name))


def test_failed_hf_to_mcore_overwrite_keeps_the_previous_output(hf_dir, tmp_path):
    out = tmp_path / "out"
    code, err = _cli_in_rank("hf-to-mcore", "--input", hf_dir, "--output", out)
    assert code == 0, err
    before = _digest(out)
    config = hf_dir / "config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "intermediate_size": 80}))  # fails mid-way
    code, err = _cli_in_rank("hf-to-mcore", "--input", hf_dir, "--output", out, "--overwrite")
    _assert_refused(code, err, "tensor shape mismatch")
    assert _digest(out) == before, "a failed conversion must leave the previous output as it was"
    assert _siblings(out) == ["out"], "the staging directory of a failed conversion is removed"


def test_failed_mcore_to_hf_overwrite_keeps_the_previous_export(ckpt_dir, tmp_path):
    out = tmp_path / "export"
    code, err = _cli_in_rank("mcore-to-hf", "--input", ckpt_dir, "--output", out)
    assert code == 0, err
    before = _digest(out)
    (ckpt_dir / "__0_0.distcp").unlink()
    code, err = _cli_in_rank("mcore-to-hf", "--input", ckpt_dir, "--output", out, "--overwrite")
    _assert_refused(code, err, "__0_0.distcp is missing")
    assert _digest(out) == before and _siblings(out) == ["export"]


def test_overwrite_swaps_in_the_new_output(hf_dir, ckpt_dir, tmp_path):
    """A successful --overwrite replaces the old output entirely (no stale file survives) and leaves no debris."""
    out = tmp_path / "export"
    out.mkdir()
    (out / "stale.safetensors").write_text("from an older export")
    code, err = _cli_in_rank("mcore-to-hf", "--input", ckpt_dir, "--output", out, "--overwrite")
    assert code == 0, err
    assert not (out / "stale.safetensors").exists() and (out / "config.json").is_file()
    assert _siblings(out) == ["export"]


def test_debris_of_an_interrupted_conversion_is_cleared(hf_dir, tmp_path):
    out = tmp_path / "out"
    (tmp_path / "out.converting").mkdir()
    (tmp_path / "out.converting" / "half_written").write_text("killed")
    code, err = _cli_in_rank("hf-to-mcore", "--input", hf_dir, "--output", out)
    assert code == 0, err
    assert _siblings(out) == ["out"] and (out / "truncdistill_model.json").is_file()


def _hf_cases(hf_dir: Path, tmp_path: Path):
    link = tmp_path / "link_to_hf"
    link.symlink_to(hf_dir)
    return {
        "same": (hf_dir, hf_dir, "is --input"),
        "inside": (hf_dir, hf_dir / "mcore", "lies inside --input"),
        "contains": (hf_dir, tmp_path, "contains --input"),
        "symlink_output": (hf_dir, link, "is --input"),
        "symlink_input": (link, hf_dir, "is --input"),
    }


@pytest.mark.parametrize("case", ["same", "inside", "contains", "symlink_output", "symlink_input"])
def test_hf_to_mcore_output_overlapping_its_input_is_refused(hf_dir, tmp_path, case):
    source, out, relation = _hf_cases(hf_dir, tmp_path)[case]
    before = _digest(hf_dir)
    code, err = _cli_in_rank("hf-to-mcore", "--input", source, "--output", out, "--overwrite")
    _assert_refused(code, err, relation, "choose an output directory outside every input")
    assert _digest(hf_dir) == before, "the input must be untouched"


def _trainer_root(tmp_path: Path, ckpt: Path) -> Path:
    from megatron_truncdistill.checkpoint.train_state import LATEST_FILE, META_FILE, iteration_dir

    root = tmp_path / "run" / "checkpoints"
    iteration = iteration_dir(root, 3)
    shutil.copytree(ckpt, iteration)
    (iteration / META_FILE).write_text(json.dumps({"step": 3, "consumed_samples": 24}))
    (root / LATEST_FILE).write_text(iteration.name + "\n")
    return root


@pytest.mark.parametrize("case", ["same_checkpoint", "same_root", "inside_root", "run_dir", "tokenizer"])
def test_mcore_to_hf_output_overlapping_an_input_is_refused(ckpt_dir, tmp_path, qwen3_tokenizer_dir, case):
    root = _trainer_root(tmp_path, ckpt_dir)
    iteration = root / (root / "latest").read_text().strip()
    tokenizer = Path(shutil.copytree(qwen3_tokenizer_dir, tmp_path / "tok"))
    source, out, relation = {
        "same_checkpoint": (iteration, iteration, "is --input"),
        "same_root": (root, root, "is --input"),
        "inside_root": (root, root / "hf", "lies inside --input"),
        "run_dir": (root, root.parent, "contains --input"),
        "tokenizer": (root, tokenizer, "is --tokenizer"),
    }[case]
    before = {p: _digest(p) for p in (root, tokenizer)}
    code, err = _cli_in_rank("mcore-to-hf", "--input", source, "--output", out, "--tokenizer", tokenizer,
                             "--overwrite")
    _assert_refused(code, err, relation)
    assert {p: _digest(p) for p in (root, tokenizer)} == before, "the inputs must be untouched"


def test_output_through_a_symlink_replaces_the_link_not_its_target(ckpt_dir, tmp_path):
    """--overwrite of a symlinked output swaps the link for the export; the directory it pointed at survives."""
    target = tmp_path / "elsewhere"
    target.mkdir()
    (target / "keep.txt").write_text("not ours")
    link = tmp_path / "export"
    link.symlink_to(target)
    code, err = _cli_in_rank("mcore-to-hf", "--input", ckpt_dir, "--output", link, "--overwrite")
    assert code == 0, err
    assert not link.is_symlink() and (link / "config.json").is_file()
    assert (target / "keep.txt").read_text() == "not ours" and os.listdir(target) == ["keep.txt"]
