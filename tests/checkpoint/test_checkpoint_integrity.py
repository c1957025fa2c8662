"""Damaged checkpoints (issue 12) are refused with one line naming the damaged file, before any tensor is read.

Each damage is tried three ways: ``verify_checkpoint`` alone (what the trainer calls at start-up), a load through
``dist_io.load_sharded`` on two ranks (``checkpoint.load``, ``student.load`` and ``teacher.load`` all go through
it) and ``mcore-to-hf`` (exit 2, no traceback).
"""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import mcore_jobs
from gloo_ranks import run_gloo_ranks
from megatron_truncdistill.checkpoint.integrity import CheckpointError, verify_checkpoint
from megatron_truncdistill.errors import UserError
from tiny_hf import tiny_checkpoints

REPO = Path(__file__).resolve().parents[2]


def _cut(path: Path, fraction: float = 0.5) -> None:
    with open(path, "r+b") as f:
        f.truncate(int(path.stat().st_size * fraction))


DAMAGES = {  # name → (damage applied to the checkpoint directory, the file the message must name, what it says)
    "distcp_deleted": (lambda d: (d / "__0_0.distcp").unlink(), "__0_0.distcp", "is missing"),
    "distcp_cut_in_half": (lambda d: _cut(d / "__0_0.distcp"), "__0_0.distcp", "cut short"),
    "metadata_json_corrupted": (lambda d: (d / "metadata.json").write_text('{"sharded_backend": "torch_'),
                                "metadata.json", "not valid JSON"),
    "metadata_json_emptied": (lambda d: (d / "metadata.json").write_text("{}"), "metadata.json",
                              "no 'sharded_backend'"),
    "metadata_json_deleted": (lambda d: (d / "metadata.json").unlink(), "metadata.json",
                              "not a complete dist_checkpointing checkpoint"),
    "dcp_metadata_cut_short": (lambda d: _cut(d / ".metadata", 0.3), ".metadata", "unreadable"),
    "dcp_metadata_deleted": (lambda d: (d / ".metadata").unlink(), ".metadata", "is missing"),
    "common_pt_deleted": (lambda d: (d / "common.pt").unlink(), "common.pt", "is missing"),
    "common_pt_cut": (lambda d: _cut(d / "common.pt"), "common.pt", "unreadable torch archive"),
    "model_meta_corrupted": (lambda d: (d / "truncdistill_model.json").write_text("{"), "truncdistill_model.json",
                             "not valid JSON"),
}


@pytest.fixture(params=sorted(DAMAGES))
def damaged(request, tmp_path):
    """(damaged copy of the tiny Qwen3 checkpoint, path the message must name, phrase it must contain)."""
    damage, named, phrase = DAMAGES[request.param]
    ckpt = Path(shutil.copytree(tiny_checkpoints()["qwen3"][1], tmp_path / "ckpt"))
    damage(ckpt)
    return ckpt, str(ckpt / named), phrase


def test_the_intact_checkpoint_verifies():
    verify_checkpoint(tiny_checkpoints()["qwen3"][1])


def test_verify_checkpoint_names_the_damaged_file(damaged):
    ckpt, named, phrase = damaged
    with pytest.raises(CheckpointError) as info:
        verify_checkpoint(ckpt)
    assert isinstance(info.value, UserError) and named in str(info.value) and phrase in str(info.value)


def _load_on_each_rank(ckpt_dir):
    """What the trainer's loads do on every rank; returns the error each rank raised (or None)."""
    from megatron_truncdistill.parallel import destroy_parallel, initialize_parallel

    ctx = initialize_parallel(1, 1)
    try:
        mcore_jobs.load_stage(ckpt_dir, ctx)
        return None
    except UserError as err:
        return type(err).__name__, str(err)
    finally:
        destroy_parallel()


def test_every_rank_refuses_a_damaged_checkpoint(damaged):
    """Two data-parallel ranks load the student: both refuse with the same message (no hang, no traceback)."""
    ckpt, named, phrase = damaged
    results = run_gloo_ranks(_load_on_each_rank, 2, str(ckpt), timeout=60)
    assert results[0] == results[1] and results[0] is not None
    kind, message = results[0]
    assert kind == "CheckpointError" and named in message and phrase in message, message


def test_mcore_to_hf_refuses_a_damaged_checkpoint(damaged, tmp_path):
    ckpt, named, phrase = damaged
    (code, err), = run_gloo_ranks(mcore_jobs.cli, 1, ["mcore-to-hf", "--input", str(ckpt), "--output",
                                                       str(tmp_path / "hf")], timeout=60)
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert named in lines[0] and phrase in lines[0], lines[0]
    assert not (tmp_path / "hf").exists()


def _verify_on_rank_1_only_damaged(good, damaged):
    """Rank 1 sees a damaged copy (a node-local disk): rank 0 must refuse too instead of entering the load."""
    import torch.distributed as dist

    from megatron_truncdistill.checkpoint.dist_io import verify_on_every_rank

    try:
        verify_on_every_rank(damaged if dist.get_rank() == 1 else good)
        return None
    except CheckpointError as err:
        return str(err)


def test_one_rank_refusing_stops_every_rank(damaged):
    ckpt, named, _ = damaged
    good = str(tiny_checkpoints()["qwen3"][1])
    rank0, rank1 = run_gloo_ranks(_verify_on_rank_1_only_damaged, 2, good, str(ckpt), timeout=60)
    assert named in rank1 and rank0 == f"{rank1} (seen by rank 1)"


@pytest.mark.slow
def test_cut_torch_metadata_exits_2_as_a_real_process(tmp_path):
    """End to end, as a user runs it: once a process abort (exit 134) or a rank traceback, now one line."""
    ckpt = Path(shutil.copytree(tiny_checkpoints()["qwen3"][1], tmp_path / "ckpt"))
    _cut(ckpt / ".metadata", 0.5)
    proc = subprocess.run([sys.executable, str(REPO / "tools" / "convert_checkpoint.py"), "mcore-to-hf", "--input",
                           str(ckpt), "--output", str(tmp_path / "hf")], capture_output=True, text=True, timeout=180)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert f"{ckpt / '.metadata'}: unreadable" in errors[0]


def _resume_on_each_rank(init_dir, ckpt_root):
    """``checkpoint.load``: the trainer's resume (model, optimizer, schedule, RNG) from a damaged checkpoint."""
    from tiny_gpt import train_tiny_gpt

    try:
        train_tiny_gpt(2, 1, init_dir=init_dir, steps=range(2, 3), resume_dir=ckpt_root, distributed_optimizer=True)
        return None
    except UserError as err:
        return type(err).__name__, str(err)


def test_resuming_from_a_damaged_trainer_checkpoint_names_the_file(tmp_path):
    """A TP2 trainer checkpoint (optimizer state and RNG objects included) with one rank's shard cut short."""
    from functools import partial

    from megatron_truncdistill.checkpoint.train_state import iteration_dir
    from tiny_gpt import save_initial_weights, train_tiny_gpt

    init_dir, root = str(tmp_path / "init"), tmp_path / "checkpoints"
    run_gloo_ranks(save_initial_weights, 1, init_dir, timeout=120)
    run_gloo_ranks(partial(train_tiny_gpt, 2, 1, init_dir=init_dir, steps=range(0, 2), save_dir=str(root),
                           distributed_optimizer=True), 2, timeout=180)
    shard = iteration_dir(root, 2) / "__1_0.distcp"
    _cut(shard)
    results = run_gloo_ranks(_resume_on_each_rank, 2, init_dir, str(root), timeout=120)
    assert results[0] == results[1] == ("CheckpointError", results[0][1]), results
    assert f"{shard}: " in results[0][1] and "cut short" in results[0][1]
