"""``benchmarks/gpu_check.py --cpu-dry-run``: the GPU check's whole path on CPU ranks, under the device check."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_gpu_check_dry_run_passes_every_section_under_the_device_check(tmp_path):
    env = dict(os.environ, PYTHONPATH=f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", PYTHONUNBUFFERED="1")
    proc = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--cpu-dry-run", "--out", str(tmp_path)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=850)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-6000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["benchmark"] == "gpu_check" and report["mode"] == "cpu-dry-run"
    assert {name: r["status"] for name, r in report["sections"].items()} == {
        "kd_tp1": "ok", "tp2pp2_one_gpu": "ok", "kd_loss": "ok", "train_step": "ok"}, report["sections"]
    assert report["sections"]["kd_tp1"]["resume_rel_diff"] <= 1e-3
    assert "under the CPU device check" in output, "the launched trainers must run the device check"
    assert "| section | status |" in proc.stdout
