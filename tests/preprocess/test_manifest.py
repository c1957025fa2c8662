"""The manifest: written with the bins, read back, and used to refuse a tokenizer with another id mapping."""

from __future__ import annotations

import hashlib

import pytest

from megatron_truncdistill.preprocess.manifest import check_tokenizer, load_manifest


def test_manifest_records_inputs_tokenizer_and_counts(tmp_path, traces, preprocess, qwen3):
    src = traces.write_jsonl(tmp_path / "r1.jsonl", traces.short_rows(traces.r1, 2))
    prefix, written = preprocess([src], policy="lead-span", lsp="0.5")
    manifest = load_manifest(prefix)
    assert manifest == written
    assert manifest["inputs"] == [{"path": str(src), "files": [
        {"name": "r1.jsonl", "bytes": src.stat().st_size, "sha256": hashlib.sha256(src.read_bytes()).hexdigest()}]}]
    assert manifest["tokenizer"]["vocab_size"] == 151669 and manifest["tokenizer"]["think_ids"] == [151667, 151668]
    assert manifest["chat_layout"]["template_keeps_thinking"] is True  # Qwen3 keeps the final turn's thinking
    assert manifest["truncation"] == {"kind": "lead-span", "lsp": "1/2", "max_tokens": None, "keep": None,
                                      "window_scope": None, "rounding": "exact", "count_generation_prompt": False,
                                      "generation_prompt_tokens": 0}
    assert manifest["protocol"] == "default" and manifest["eod"] is None
    assert manifest["records"]["drop_system"] is False and manifest["records"]["parsing"] == "default"
    before, after = manifest["tokens_before_truncation"], manifest["tokens_after_truncation"]
    assert sum(after.values()) <= sum(before.values()) // 2 and before["PROMPT"] == after["PROMPT"]
    assert sum(b["count"] for b in manifest["length_histogram"]["written"]) == manifest["counts"]["written"] == 2
    check_tokenizer(manifest, qwen3)  # same tokenizer: accepted


def test_check_tokenizer_refuses_another_vocabulary(tmp_path, traces, preprocess, qwen3):
    src = traces.write_jsonl(tmp_path / "r1.jsonl", traces.short_rows(traces.r1, 1))
    prefix, _ = preprocess([src])
    manifest = load_manifest(prefix)
    manifest["tokenizer"]["files_sha256"] = "0" * 64
    with pytest.raises(ValueError, match="preprocess again with this tokenizer"):
        check_tokenizer(manifest, qwen3)
    with pytest.raises(FileNotFoundError, match="no manifest"):
        load_manifest(tmp_path / "missing")
