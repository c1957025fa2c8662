"""Input formats, record layouts and per-record rejects: every record is written or listed with its reason."""

from __future__ import annotations

import filecmp
import gzip
import json

import pytest

from megatron_truncdistill.preprocess.document import FilterConfig
from megatron_truncdistill.preprocess.records import RecordSpec

BINS = ("_tokens.bin", "_tokens.idx", "_sections.bin", "_sections.idx")


def _same_bins(a: str, b: str) -> bool:
    return all(filecmp.cmp(a + s, b + s, shallow=False) for s in BINS)


def _rejects(prefix: str) -> list[dict]:
    return [json.loads(line) for line in open(f"{prefix}.rejects.jsonl", encoding="utf-8")]


def test_rejects_accounting_on_planted_bad_records(tmp_path, traces, preprocess):
    good = traces.short_rows(traces.r1, 2)
    long_row = max(traces.rows(traces.r1), key=lambda r: len(r["full_response"]))  # > 4,096 tokens
    lines = [
        good[0],                                                          # 1 written
        "{not json",                                                      # 2 malformed_json
        b'{"prompt": "caf\xe9", "full_response": "<think>a</think>b"}',   # 3 invalid_utf8 (latin-1 byte)
        {"prompt": 5, "full_response": "<think>a</think>b"},              # 4 wrong_type
        {"prompt": "  ", "full_response": "<think>a</think>b"},           # 5 empty_prompt
        {"prompt": "q", "full_response": ""},                             # 6 empty_response
        {"prompt": "q", "full_response": "no thinking here"},             # 7 missing_thinking
        [1, 2],                                                           # 8 not_an_object
        "   ",                                                            # 9 blank: not a record
        long_row,                                                         # 10 over_max_source_tokens
        {"conversations": [{"from": "user", "value": "hi"}]},             # 11 no_assistant_turn
        {"foo": 1},                                                       # 12 unknown_layout
        {"prompt": "q", "full_response": "<think>cut off mid-thought"},   # 13 written: unclosed, kept
        good[1],                                                          # 14 written
    ]
    src = traces.write_jsonl(tmp_path / "planted.jsonl", lines)
    prefix, manifest = preprocess([src], filters=FilterConfig(max_source_tokens=4096))
    counts = manifest["counts"]
    assert counts["read"] == 13 and counts["written"] == 3
    assert counts["read"] == counts["written"] + counts["rejected"]
    expected = {2: "malformed_json", 3: "invalid_utf8", 4: "wrong_type", 5: "empty_prompt", 6: "empty_response",
                7: "missing_thinking", 8: "not_an_object", 10: "over_max_source_tokens", 11: "no_assistant_turn",
                12: "unknown_layout"}
    rejects = _rejects(prefix)
    assert {r["line"]: r["reason"] for r in rejects} == expected
    assert all(r["source"] == str(src) and r["detail"] for r in rejects)
    assert counts["rejected_by_reason"] == {reason: 1 for reason in expected.values()}


def test_compressed_array_parquet_and_hf_dataset_inputs_give_the_same_bins(tmp_path, traces, preprocess):
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq
    import zstandard

    rows = [{"prompt": r["prompt"], "full_response": r["full_response"]} for r in traces.short_rows(traces.r1, 3)]
    plain = traces.write_jsonl(tmp_path / "a.jsonl", rows)
    payload = plain.read_bytes()
    (tmp_path / "a.jsonl.gz").write_bytes(gzip.compress(payload))
    (tmp_path / "a.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(payload))
    (tmp_path / "a.json").write_text(json.dumps(rows))
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "a.parquet")
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "hf"))
    ref, _ = preprocess([plain], name="ref")
    for name in ("a.jsonl.gz", "a.jsonl.zst", "a.json", "a.parquet", "hf"):
        prefix, manifest = preprocess([tmp_path / name], name=name.replace(".", "_"))
        assert manifest["counts"]["written"] == 3 and _same_bins(ref, prefix), name
    prefix, manifest = preprocess([str(tmp_path / "a.jsonl*")], name="glob")  # .jsonl, .jsonl.gz, .jsonl.zst
    assert manifest["counts"]["read"] == 9 and len(manifest["inputs"]) == 3
    assert manifest["inputs"][0]["files"][0]["bytes"] == len(payload)


def test_parquet_rejects_name_the_row(tmp_path, preprocess):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"prompt": "What is 2+2?", "full_response": "<think>2+2=4</think>4"},
            {"prompt": "What is 3+3?", "full_response": ""}]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "b.parquet")
    prefix, _ = preprocess([tmp_path / "b.parquet"])
    assert _rejects(prefix) == [{"source": str(tmp_path / "b.parquet"), "row": 1, "reason": "empty_response",
                                 "detail": "the response is empty"}]


def _bespoke(row: dict) -> str:
    return (f"<|begin_of_thought|>\n\n{row['reasoning_trace']}\n\n<|end_of_thought|>\n\n"
            f"<|begin_of_solution|>\n\n{row['answer_text']}\n\n<|end_of_solution|>")


def test_conversation_and_fields_layouts_match_prompt_response(tmp_path, traces, preprocess):
    """Bespoke/OpenThoughts markers, role/content messages and explicit fields all render like <think> responses."""
    rows = traces.short_rows(traces.r1, 2)
    system = "Your role as an assistant involves thoroughly exploring questions."
    canonical = [{"system": system, "prompt": r["prompt"],
                  "full_response": f"<think>\n{r['reasoning_trace']}\n</think>\n\n{r['answer_text']}"} for r in rows]
    bespoke = [{"system": system, "conversations": [{"from": "user", "value": r["prompt"]},
                                                    {"from": "assistant", "value": _bespoke(r)}]} for r in rows]
    messages = [{"messages": [{"role": "system", "content": system}, {"role": "user", "content": r["prompt"]},
                              {"role": "assistant", "content": c["full_response"]}]} for r, c in zip(rows, canonical)]
    fields = [{"system": system, "problem": r["prompt"], "reasoning_trace": r["reasoning_trace"],
               "answer_text": r["answer_text"]} for r in rows]
    ref, _ = preprocess([traces.write_jsonl(tmp_path / "c.jsonl", canonical)], name="ref")
    for name, data in (("bespoke", bespoke), ("messages", messages)):
        prefix, _ = preprocess([traces.write_jsonl(tmp_path / f"{name}.jsonl", data)], name=name)
        assert _same_bins(ref, prefix), name
    spec = RecordSpec(format="fields", prompt_key="problem", cot_key="reasoning_trace", answer_key="answer_text")
    prefix, _ = preprocess([traces.write_jsonl(tmp_path / "f.jsonl", fields)], name="fields", spec=spec)
    assert _same_bins(ref, prefix)


@pytest.mark.parametrize("response, reason", [("<think>a</think>b", None), ("a</think>b", None),
                                              ("<think>never closed", None), ("text <think>a</think>b",
                                                                              "text_before_thinking")])
def test_response_shapes(tmp_path, traces, preprocess, response, reason):
    ok = {"prompt": "Compute 2+2.", "full_response": "<think>2+2=4</think>4"}
    src = traces.write_jsonl(tmp_path / "r.jsonl", [{"prompt": "Compute 1+1.", "full_response": response}, ok])
    prefix, manifest = preprocess([src])
    assert manifest["counts"]["rejected_by_reason"] == ({reason: 1} if reason else {})


@pytest.mark.parametrize("response, reason", [
    ("</think>", "empty_response"),                                  # markers only: nothing to learn from
    ("<think></think>", "empty_response"),
    ("<think>\n \n</think>\n\n", "empty_response"),
    ("<think>a</think>b<think>c</think>d", "multiple_thinking_blocks"),  # the 2nd block would be tagged ANSWER
    ("<think>a</think>b</think>c", "multiple_thinking_blocks"),
    ("a</think>b<think>c", "misordered_thinking_markers"),           # </think> before <think>
    ("<|begin_of_thought|>a<|end_of_thought|>b<|begin_of_thought|>c<|end_of_thought|>", "multiple_thinking_blocks"),
    ("<|begin_of_thought|>a<think>b</think><|end_of_thought|>c", "multiple_thinking_blocks"),
    ("<|end_of_thought|>a<|begin_of_thought|>b", "misordered_thinking_markers"),
])
def test_responses_without_one_faithful_thinking_block_are_rejected(tmp_path, traces, preprocess, response, reason):
    ok = {"prompt": "Compute 2+2.", "full_response": "<think>2+2=4</think>4"}
    src = traces.write_jsonl(tmp_path / "r.jsonl", [{"prompt": "Compute 1+1.", "full_response": response}, ok])
    prefix, manifest = preprocess([src])
    assert manifest["counts"]["rejected_by_reason"] == {reason: 1} and manifest["counts"]["written"] == 1
    assert _rejects(prefix)[0]["line"] == 1


def test_a_lone_surrogate_rejects_its_record_not_the_run(tmp_path, traces, preprocess):
    """``"\\ud800"`` is valid JSON but no Unicode text: the tokenizer raised, the whole run died ("internal error")."""
    lines = ['{"prompt": "q", "full_response": "<think>half a pair \\ud800 here</think>a"}',
             '{"prompt": "q", "full_response": "<think>a real pair \\ud83d\\ude00</think>a"}']
    prefix, manifest = preprocess([traces.write_jsonl(tmp_path / "s.jsonl", lines)])
    assert manifest["counts"]["written"] == 1 and manifest["counts"]["rejected_by_reason"] == {"invalid_utf8": 1}
    assert "U+D800" in _rejects(prefix)[0]["detail"]


def _tool_chat(final_tool_calls: bool = False) -> dict:
    call = [{"type": "function", "function": {"name": "lookup_prime_table", "arguments": {"n": 7}}}]
    messages = [{"role": "user", "content": "Is 7 prime?"}, {"role": "assistant", "content": "", "tool_calls": call},
                {"role": "tool", "content": "prime"}, {"role": "assistant", "content": "<think>ok</think>Yes."}]
    if final_tool_calls:
        messages[-1]["tool_calls"] = call
    return {"messages": messages}


def test_tool_calls_are_rendered_by_the_template_or_rejected(tmp_path, traces, preprocess, qwen3):
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    plain = {"prompt": "Compute 2+2.", "full_response": "<think>2+2=4</think>4"}
    src = traces.write_jsonl(tmp_path / "t.jsonl", [_tool_chat(), _tool_chat(final_tool_calls=True), plain])
    prefix, manifest = preprocess([src])  # Qwen3's template renders tool calls
    assert manifest["counts"]["rejected_by_reason"] == {"tool_calls_in_response": 1}
    tokens = IndexedDataset(f"{prefix}_tokens")
    assert '"name": "lookup_prime_table"' in qwen3.decode(tokens[0])  # used to vanish from the rendered prompt
    prefix, manifest = preprocess([src], name="chatml", chat_format="chatml")  # ChatML ignores tool_calls
    assert manifest["counts"]["rejected_by_reason"] == {"tool_calls_not_rendered": 1, "tool_calls_in_response": 1}
    assert manifest["counts"]["written"] == 1
