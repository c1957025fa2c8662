"""Bins round trip: sections decode to the rendered text, megatron-core reads both bins, workers don't change bytes."""

from __future__ import annotations

import filecmp
import json
from types import SimpleNamespace

import numpy as np
from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig
from megatron.core.datasets.indexed_dataset import IndexedDataset

from megatron_truncdistill.preprocess.document import FilterConfig
from megatron_truncdistill.preprocess.records import RecordSpec, normalize
from megatron_truncdistill.preprocess.rendering import probe_layout, render_trace
from megatron_truncdistill.sections import Section

THINK, END_THINK, IM_END = 151667, 151668, 151645  # Qwen3 <think>, </think>, <|im_end|>


def _read(prefix: str) -> tuple[IndexedDataset, IndexedDataset]:
    return IndexedDataset(f"{prefix}_tokens"), IndexedDataset(f"{prefix}_sections")


def _section_texts(tok, tokens: np.ndarray, sections: np.ndarray) -> list[str]:
    return [tok.decode(tokens[sections == s]) for s in Section]


def test_round_trip_each_section_decodes_to_its_rendered_text(tmp_path, traces, preprocess, qwen3):
    rows = traces.short_rows(traces.r1, 3) + traces.short_rows(traces.distill, 3)
    src = traces.write_jsonl(tmp_path / "mix.jsonl", rows)
    spec = RecordSpec(implicit_think_open=True)
    prefix, manifest = preprocess([src], spec=spec)
    tokens, sections = _read(prefix)
    layout = probe_layout(qwen3)
    assert manifest["counts"] == {"read": 6, "written": 6, "rejected": 0, "rejected_by_reason": {}}
    for i, row in enumerate(rows):
        r = render_trace(qwen3, layout, normalize(row, spec))
        expected = [r.text[:r.cot_start], r.text[r.cot_start:r.answer_start], r.text[r.answer_start:]]
        assert _section_texts(qwen3, tokens[i], sections[i]) == expected
        assert np.all(np.diff(sections[i].astype(int)) >= 0)  # PROMPT, then COT, then ANSWER
        assert expected[1].startswith("<think>") and expected[1].endswith("</think>")
        assert expected[2].endswith("<|im_end|>\n")


def test_r1_distill_without_opening_think_gets_sections(tmp_path, traces, preprocess, qwen3):
    rows = traces.short_rows(traces.distill, 2)
    assert not any(r["full_response"].lstrip().startswith("<think>") for r in rows)
    prefix, _ = preprocess([traces.write_jsonl(tmp_path / "d.jsonl", rows)], spec=RecordSpec())
    tokens, sections = _read(prefix)
    for i, row in enumerate(rows):
        t, s = tokens[i], sections[i]
        cot, answer = t[s == Section.COT], t[s == Section.ANSWER]
        assert cot[0] == THINK and cot[-1] == END_THINK and np.count_nonzero(t == THINK) == 1
        assert qwen3.decode(t[s == Section.PROMPT]).endswith("<|im_start|>assistant\n")
        assert qwen3.decode(cot[1:-1]).strip() == row["full_response"].split("</think>")[0].strip()
        assert qwen3.decode(answer).strip() == row["full_response"].split("</think>")[1].strip() + "<|im_end|>"


def test_cut_off_trace_follows_the_configured_rule(tmp_path, traces, preprocess):
    """math500_0009 has neither marker: missing thinking by default; unclosed thinking for R1-Distill inputs."""
    row = traces.item(traces.distill, traces.cut_off_item)
    assert "</think>" not in row["full_response"]
    src = traces.write_jsonl(tmp_path / "cut.jsonl", [row, traces.short_rows(traces.distill, 1)[0]])

    _, manifest = preprocess([src], name="default")
    assert manifest["counts"]["rejected_by_reason"] == {"missing_thinking": 1}

    strict_spec = RecordSpec(implicit_think_open=True)
    prefix, manifest = preprocess([src], name="closed", spec=strict_spec,
                                  filters=FilterConfig(require_closed_thinking=True))
    assert manifest["counts"]["rejected_by_reason"] == {"unclosed_thinking": 1}
    rejects = [json.loads(line) for line in open(f"{prefix}.rejects.jsonl")]
    assert rejects == [{"source": str(src), "line": 1, "reason": "unclosed_thinking",
                        "detail": "the response ends before the thinking is closed"}]

    full, _ = preprocess([src], name="full", spec=strict_spec)
    prefix, manifest = preprocess([src], name="keep", spec=strict_spec, policy="lead-span", lsp="0.1")
    full_tokens, _ = _read(full)  # keep the dataset alive: sequence_lengths is a view into its mmap
    n_full = full_tokens.sequence_lengths.tolist()
    tokens, sections = _read(prefix)
    assert manifest["counts"]["written"] == 2
    assert sections.sequence_lengths.tolist() == [max(1, n // 10) for n in n_full]
    assert END_THINK not in tokens[0] and IM_END not in tokens[0][sections[0] != Section.PROMPT]
    assert set(sections[0].tolist()) == {Section.PROMPT, Section.COT}
    assert tokens[0][sections[0] == Section.COT][0] == THINK


def test_bins_load_in_indexed_dataset_and_gpt_dataset(tmp_path, traces, preprocess, qwen3):
    rows = traces.short_rows(traces.r1, 4)
    prefix, manifest = preprocess([traces.write_jsonl(tmp_path / "r1.jsonl", rows)], policy="lead-span", lsp="0.5")
    tokens, sections = _read(prefix)
    assert tokens.index.dtype == np.int32 and sections.index.dtype == np.uint8  # vocab 151,669 >= 65,500
    assert manifest["token_dtype"] == "int32"
    assert np.array_equal(tokens.sequence_lengths, sections.sequence_lengths)
    assert np.array_equal(tokens.document_indices, np.arange(len(rows) + 1))  # one document per record
    assert np.array_equal(tokens.document_indices, sections.document_indices)

    config = GPTDatasetConfig(random_seed=1, sequence_length=64, blend=([f"{prefix}_tokens"], None), split="1,0,0",
                              tokenizer=SimpleNamespace(vocab_size=qwen3.vocab_size, eod=qwen3.eos_id,
                                                        pad=qwen3.pad_id, unique_identifiers={"name": "qwen3"}),
                              reset_position_ids=False,
                              reset_attention_mask=False, eod_mask_loss=False,
                              path_to_cache=str(tmp_path / "cache"), mid_level_dataset_surplus=0.005)
    train, _, _ = BlendedMegatronDatasetBuilder(GPTDataset, [8, None, None], lambda: True, config).build()
    sample = train[0]
    assert sample["tokens"].shape == (64,) and int(sample["tokens"].max()) < qwen3.vocab_size
    flat = np.concatenate([tokens[i] for i in range(len(rows))])
    assert set(sample["tokens"].tolist()) <= set(flat.tolist())


def test_one_and_two_workers_write_identical_bytes(tmp_path, traces, preprocess):
    rows = traces.short_rows(traces.r1_full, 6) + ["{not json", {"prompt": "p", "full_response": ""}]
    rows += traces.short_rows(traces.distill, 3)
    src = traces.write_jsonl(tmp_path / "mix.jsonl", rows)
    spec = RecordSpec(implicit_think_open=True)
    one, m1 = preprocess([src], name="one", workers=1, spec=spec, policy="lead-span", lsp="0.5", chunk_docs=2)
    two, m2 = preprocess([src], name="two", workers=2, spec=spec, policy="lead-span", lsp="0.5", chunk_docs=2)
    for suffix in ("_tokens.bin", "_tokens.idx", "_sections.bin", "_sections.idx", ".rejects.jsonl"):
        assert filecmp.cmp(one + suffix, two + suffix, shallow=False), suffix
    assert m1["counts"] == m2["counts"] and m1["counts"]["rejected"] == 2
