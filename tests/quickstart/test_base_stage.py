"""The base student's corpus is easier and disjoint from the study's problems; its run and the students' configs."""

import sys
from pathlib import Path

from megatron_truncdistill.evaluation.exact_match import answer_line
from megatron_truncdistill.quickstart import report
from megatron_truncdistill.quickstart.corpus import EASY_TASKS, TASKS, generate
from megatron_truncdistill.quickstart.run import STUDENT_ARCH, QuickstartSettings, run_config

sys.path.insert(0, str(Path(__file__).parent))  # tests/ is no package: reuse the corpus test's own solver
from test_corpus import independent_answer  # noqa: E402


def test_easy_corpus_is_correct_and_disjoint_from_the_study():
    easy = generate(3000, seed=1, tasks=EASY_TASKS)
    study = {r["prompt"] for r in generate(20000, seed=0)}
    assert {r["task"] for r in easy} == {"addition", "linear", "conversion"}
    assert not ({r["prompt"] for r in easy} & study)
    for r in easy:
        assert int(r["answer"]) == independent_answer(r["prompt"]) and answer_line(r["response"]) == r["answer"]
        assert r["response"].endswith("\n</think>\n\nAnswer: " + r["answer"]), "the base learns the full tail"


def test_study_corpus_unchanged_by_the_easy_families():
    assert generate(30, seed=3) == generate(30, seed=3, tasks=TASKS)


def _config(**kw):
    return run_config(QuickstartSettings(), prefix=Path("/p"), tokenizer=Path("/t"), run_dir=Path("/r"),
                      arch=STUDENT_ARCH, steps=7, **kw)


def test_base_run_is_student_only():
    c = _config(teacher_ckpt=None)
    assert c["teacher"] is None and c["distill"]["kd_weight"] == 0.0
    assert c["distill"]["loss_sections"] == ["COT", "ANSWER"] and "load" not in c["student"]


def test_students_start_from_the_base():
    c = _config(teacher_ckpt="/cache/teacher/checkpoints/iter_0000010", student_load="/cache/base/iter_0000007")
    assert c["student"]["load"] == "/cache/base/iter_0000007" and c["student"]["architecture"] == STUDENT_ARCH
    assert c["teacher"] == {"load": "/cache/teacher/checkpoints/iter_0000010"} and c["distill"]["kd_weight"] > 0


def test_report_has_base_row_and_protocol():
    costs = {"input_tokens": 10, "flops_per_device": 1.0, "train_time_s": 1.0, "peak_mem_bytes": 2**30}
    results = {name: {"lsp": lsp, "accuracy": acc, "per_task": {"addition": acc}, "accuracy_unforced": acc / 2,
                      "forced_fraction": 0.5, "costs": dict(costs)}
               for name, lsp, acc in (("teacher", "1.0", 0.5), ("base", "1.0", 0.1), ("student_lsp1.0", "1.0", 0.4),
                                      ("student_lsp0.5", "0.5", 0.2))}
    rows = report.build_rows(results)
    text = report.markdown(rows, predicted=None, machine="m", eval_budget=128)
    assert "| base | 1.0 | 0.100 | 0.050 | 0.50 | - |" in text
    assert "| student_lsp0.5 | 0.5 | 0.200 | 0.100 | 0.50 | 0.50 |" in text
    assert "thinking budget 128" in text and "\\n</think>\\n\\nAnswer: " in text
