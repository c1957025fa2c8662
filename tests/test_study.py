"""A two-cell truncation study runs end to end (preprocess -> torchrun training -> evaluation -> table)."""

import json

import yaml

from gloo_ranks import run_gloo_ranks
from megatron_truncdistill.quickstart.corpus import generate, write_jsonl
from megatron_truncdistill.quickstart.tiny_tokenizer import build_tiny_tokenizer
from megatron_truncdistill.study import Cell, cells, load_study, run_study, write_results

ARCH = {"model_type": "qwen3", "num_hidden_layers": 2, "hidden_size": 32, "intermediate_size": 64,
        "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 16, "vocab_size": 128,
        "max_position_embeddings": 512, "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "tie_word_embeddings": True}


def test_grid_covers_sections_and_window_ablation():
    grid = cells({"lsp": [1.0, 0.5], "loss_sections": [["PROMPT", "COT", "ANSWER"], "CoT+A"],
                  "window": {"lsp": 0.5, "keep": ["left", "middle", "right"]}})
    assert len(grid) == 7
    assert grid[1] == Cell("lead-span", "1.0", None, ("COT", "ANSWER"))
    assert [c.keep for c in grid[4:]] == ["left", "middle", "right"] and grid[4].sections == ("PROMPT", "COT", "ANSWER")


def _study(path):
    study = load_study(path)
    rows = run_study(study)
    write_results(rows, study["out_dir"])
    return rows


def test_two_cell_study_end_to_end(tmp_path):
    build_tiny_tokenizer(tmp_path / "tok")
    write_jsonl(generate(48, seed=1), tmp_path / "corpus.jsonl")
    (tmp_path / "base.yaml").write_text(yaml.safe_dump({
        "data": {"seq_length": 0, "valid_fraction": 0.0}, "student": {"architecture": ARCH}, "teacher": None,
        "distill": {"kd_weight": 0.0}, "train": {"train_steps": 2, "micro_batch_size": 4, "global_batch_size": 4},
        "logging": {"tensorboard": False}}))
    (tmp_path / "study.yaml").write_text(yaml.safe_dump({
        "corpus": {"inputs": ["corpus.jsonl"], "tokenizer": "tok"},
        "eval": {"records": "corpus.jsonl", "limit": 3, "max_new_tokens": 4}, "base_config": "base.yaml",
        "ranks": 1, "sweep": {"lsp": [1.0, 0.5]}, "out_dir": "out"}))
    rows = run_gloo_ranks(_study, 1, str(tmp_path / "study.yaml"), timeout=300)[0]
    assert [r["lsp"] for r in rows] == ["1.0", "0.5"]
    assert rows[1]["input_tokens"] < 0.6 * rows[0]["input_tokens"], "LSP 0.5 trains on about half the tokens"
    assert all(0.0 <= r["accuracy"] <= 1.0 and r["final_loss"] > 0 for r in rows)
    assert json.loads((tmp_path / "out" / "results.json").read_text()) == rows
    assert "| lead-span_lsp0.5__PROMPT+COT+ANSWER |" in (tmp_path / "out" / "results.md").read_text()
