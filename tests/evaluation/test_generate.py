"""``generate`` end to end on tiny Qwen3 models with the real tokenizer: records, grading, resumption."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from evaluation.tiny_qwen3 import answer_text, save_tiny_qwen3, teach_answers
from megatron_truncdistill.evaluation.benchmarks import load_benchmark
from megatron_truncdistill.evaluation.cli import main
from megatron_truncdistill.evaluation.generate import DEFAULT_PROMPT, render_prompts

REPO = Path(__file__).resolve().parents[2]


def _records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "generations.jsonl").read_text().splitlines()]


def _args(model, out, *benchmarks, n=2, tokens=3, extra=(), progress=False):
    return ["generate", "--model", str(model), "--benchmark", *map(str, benchmarks), "--output", str(out),
            "--n", str(n), "--max-new-tokens", str(tokens), "--backend", "transformers", "--device", "cpu",
            *([] if progress else ["--no-progress"]), *extra]


def test_prompts_use_the_chat_template_with_thinking_enabled(tiny_qwen3_dir, eval_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_qwen3_dir)
    problem = load_benchmark(eval_dir / "aime25_I.jsonl", limit=1)
    text = tokenizer.decode(render_prompts(tokenizer, problem, DEFAULT_PROMPT)[0])
    assert text == (f"<|im_start|>user\n{problem[0].problem}\n\nPlease reason step by step, and put your final "
                    "answer within \\boxed{}.<|im_end|>\n<|im_start|>assistant\n"), "no empty <think></think> block"


def test_generate_end_to_end_then_rerun_generates_nothing(tmp_path, eval_dir, tiny_qwen3_dir, capsys):
    out = tmp_path / "run"
    benchmarks = (f"aime25={eval_dir / 'aime25_I.jsonl'}", f"aime25={eval_dir / 'aime25_II.jsonl'}",
                  eval_dir / "gsm8k_test.jsonl")
    assert main(_args(tiny_qwen3_dir, out, *benchmarks, extra=["--limit", "2", "--batch-size", "4"])) == 0
    records = _records(out)
    assert [(r["benchmark"], r["source"], r["index"]) for r in records] == [
        ("aime25", "aime25_I.jsonl", 0), ("aime25", "aime25_I.jsonl", 1), ("aime25", "aime25_II.jsonl", 0),
        ("aime25", "aime25_II.jsonl", 1), ("gsm8k_test", "gsm8k_test.jsonl", 0), ("gsm8k_test", "gsm8k_test.jsonl", 1)]
    assert records[4]["answer"] == "18" and records[0]["answer"] == "70"
    assert all(len(r["generations"]) == 2 and all(0 < t <= 3 for t in r["num_tokens"]) for r in records)
    grades = json.loads((out / "grades.json").read_text())
    assert set(grades["pass@1"]) == {"aime25", "gsm8k_test"} and grades["pass@1"]["aime25"]["problems"] == 4
    settings = json.loads((out / "run.json").read_text())
    assert (settings["n"], settings["max_new_tokens"], settings["temperature"], settings["top_p"]) == (2, 3, 0.6, 0.95)
    before = (out / "generations.jsonl").read_bytes()
    capsys.readouterr()
    assert main(_args(tiny_qwen3_dir, out, *benchmarks, extra=["--limit", "2", "--batch-size", "4"])) == 0
    assert (out / "generations.jsonl").read_bytes() == before
    assert "(6 already in" in capsys.readouterr().err
    with open(out / "generations.jsonl", "a") as f:  # a kill in the middle of a write
        f.write('{"benchmark": "gsm8k_test", "source": "gsm8')
    assert main(_args(tiny_qwen3_dir, out, *benchmarks, extra=["--limit", "3", "--batch-size", "4"])) == 0
    keys = [(r["benchmark"], r["source"], r["index"]) for r in _records(out)]
    assert len(keys) == len(set(keys)) == 9 and (out / "generations.jsonl").read_bytes().startswith(before)


@pytest.mark.slow
def test_taught_model_scores_what_it_was_taught(tmp_path, eval_dir, qwen3_tokenizer_dir):
    """A model taught to answer 2 of 3 problems: pass@1 2/3, stopped at EOS, answers read back exactly."""
    model = save_tiny_qwen3(tmp_path / "taught", qwen3_tokenizer_dir)
    problems = load_benchmark(eval_dir / "aime25_I.jsonl", limit=3)
    assert teach_answers(model, problems[:2]) < 0.2
    out = tmp_path / "run"
    assert main(_args(model, out, eval_dir / "aime25_I.jsonl", n=2, tokens=24,
                      extra=["--limit", "3", "--temperature", "0"])) == 0
    records = _records(out)
    assert [r["generations"] for r in records[:2]] == [[answer_text(p.answer)] * 2 for p in problems[:2]]
    assert all(r["finished"] == [True, True] for r in records[:2]), "stopped at <|im_end|>, which is cut off"
    grades = json.loads((out / "grades.json").read_text())
    assert [r["correct"] for r in grades["records"]] == [[True, True], [True, True], [False, False]]
    assert grades["pass@1"]["aime25_I"]["mean"] == pytest.approx(2 / 3)


def _start(model, out, gsm, log):
    cmd = [sys.executable, str(REPO / "tools" / "evaluate.py"),
           *_args(model, out, gsm, n=1, tokens=4, extra=["--limit", "12", "--batch-size", "1"], progress=True)]
    env = dict(os.environ, PYTHONPATH=f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    return subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)


@pytest.mark.slow
def test_killed_generate_resumes_without_duplicates_or_losses(tmp_path, eval_dir, tiny_qwen3_dir):
    gsm, out = eval_dir / "gsm8k_test.jsonl", tmp_path / "killed"
    with open(tmp_path / "log1", "w") as log:
        proc = _start(tiny_qwen3_dir, out, gsm, log)
        deadline = time.time() + 240
        while time.time() < deadline and proc.poll() is None:
            path = out / "generations.jsonl"
            if path.exists() and path.read_text().count("\n") >= 3:
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the run ended before it could be killed: " + (tmp_path / "log1").read_text()
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    written = (out / "generations.jsonl").read_bytes()
    complete = written[: written.rfind(b"\n") + 1]
    kept = complete.count(b"\n")
    assert 3 <= kept < 12
    with open(tmp_path / "log2", "w") as log:
        assert _start(tiny_qwen3_dir, out, gsm, log).wait(timeout=300) == 0, (tmp_path / "log2").read_text()
    resumed = _records(out)
    assert sorted(r["index"] for r in resumed) == list(range(12)), "no record duplicated or lost"
    log2 = (tmp_path / "log2").read_text()
    assert f"({kept} already in" in log2 and "samples/s" in log2 and "ETA" in log2, log2
    assert (out / "generations.jsonl").read_bytes().startswith(complete), "records written before the kill stay"
    fresh = tmp_path / "fresh"
    assert main(_args(tiny_qwen3_dir, fresh, gsm, n=1, tokens=4, extra=["--limit", "12", "--batch-size", "1"])) == 0
    key = lambda r: r["index"]  # noqa: E731
    assert sorted(resumed, key=key) == sorted(_records(fresh), key=key), "same batches, same seeds, same samples"


@pytest.mark.slow
def test_checkpoint_as_model_is_exported_and_samples_like_its_source(tmp_path, eval_dir, tiny_qwen3_dir, capsys):
    """A run directory holding a checkpoint runs through the on-the-fly export: greedy generations equal the
    source HF model's, the export is gone afterwards, and a checkpoint whose tokenizer is gone is one line."""
    import shutil

    from gloo_ranks import run_gloo_ranks
    from mcore_jobs import convert_all

    run = tmp_path / "train_run"  # a trainer's layout: <run>/checkpoints/{latest, iter_*}
    ckpt = run / "checkpoints" / "iter_0000002"
    run_gloo_ranks(convert_all, 1, [(str(tiny_qwen3_dir), str(ckpt))], timeout=240)
    (run / "checkpoints" / "latest").write_text("iter_0000002\n")
    greedy = ["--limit", "2", "--temperature", "0"]
    bench = eval_dir / "aime24.jsonl"
    assert main(_args(tiny_qwen3_dir, tmp_path / "hf_run", bench, n=1, tokens=5, extra=greedy)) == 0
    assert main(_args(run, tmp_path / "ckpt_run", bench, n=1, tokens=5, extra=greedy)) == 0
    assert "exporting checkpoint" in capsys.readouterr().err
    assert [r["generations"] for r in _records(tmp_path / "ckpt_run")] == \
        [r["generations"] for r in _records(tmp_path / "hf_run")]
    assert not list((tmp_path / "ckpt_run").glob(".hf_export_*")), "the temporary export is removed"
    meta_path = ckpt / "truncdistill_model.json"
    meta = json.loads(meta_path.read_text())
    orphan = tmp_path / "orphan"
    shutil.copytree(ckpt, orphan)
    (orphan / meta_path.name).write_text(json.dumps(dict(meta, tokenizer={"path": str(tmp_path / "gone")})))
    assert main(_args(orphan, tmp_path / "orphan_run", bench, n=1, tokens=5, extra=greedy)) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error")]
    assert len(err) == 1 and "does not exist; pass --tokenizer" in err[0] and str(orphan) in err[0]
