"""Chat rendering: templates that strip thinking keep the CoT, multi-turn prompts, the SentencePiece backend."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from megatron.core.datasets.indexed_dataset import IndexedDataset

from megatron_truncdistill.preprocess.records import RecordSpec, normalize
from megatron_truncdistill.preprocess.rendering import probe_layout, render_trace
from megatron_truncdistill.sections import Section
from megatron_truncdistill.tokenization import load_tokenizer

# DeepSeek-R1's template, reduced to its thinking logic: assistant turns lose everything up to </think>, and the
# generation prompt opens the thinking itself.
R1_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}"
    "{{ '<｜User｜>' + message['content'] }}{% elif message['role'] == 'assistant' %}"
    "{% set content = message['content'] %}{% if '</think>' in content %}"
    "{% set content = content.split('</think>')[-1] %}{% endif %}"
    "{{ '<｜Assistant｜>' + content + '<｜end▁of▁sentence｜>' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<｜Assistant｜><think>\\n' }}{% endif %}"
)


def _tokenizer_dir(tmp_path: Path, qwen3_dir: str, template: str) -> Path:
    out = tmp_path / "r1_tokenizer"
    out.mkdir()
    os.symlink(Path(qwen3_dir) / "tokenizer.json", out / "tokenizer.json")
    config = json.loads((Path(qwen3_dir) / "tokenizer_config.json").read_text())
    config.update(chat_template=template, bos_token="<｜begin▁of▁sentence｜>")
    (out / "tokenizer_config.json").write_text(json.dumps(config))
    return out


def test_template_that_strips_thinking_still_gets_the_cot(tmp_path, traces, qwen3_dir, preprocess):
    tok_dir = _tokenizer_dir(tmp_path, qwen3_dir, R1_TEMPLATE)
    tok = load_tokenizer(tok_dir)
    layout = probe_layout(tok)
    assert not layout.template_keeps_thinking and layout.open_text == ""
    assert (layout.close_text, layout.turn_end) == ("\n</think>\n\n", "<｜end▁of▁sentence｜>")

    rows = traces.short_rows(traces.r1, 2)
    prefix, manifest = preprocess([traces.write_jsonl(tmp_path / "r1.jsonl", rows)], tokenizer=str(tok_dir))
    assert manifest["chat_layout"]["template_keeps_thinking"] is False
    tokens, sections = IndexedDataset(f"{prefix}_tokens"), IndexedDataset(f"{prefix}_sections")
    for i, row in enumerate(rows):
        prompt, cot, answer = (tok.decode(tokens[i][sections[i] == s]) for s in Section)
        assert prompt == f"<｜begin▁of▁sentence｜><｜User｜>{row['prompt']}<｜Assistant｜>"
        assert cot == f"<think>\n{row['reasoning_trace'].strip()}\n</think>"  # the CoT the template would drop
        assert answer == f"\n\n{row['answer_text'].strip()}<｜end▁of▁sentence｜>"


def test_qwen3_multi_turn_prompt_renders_like_inference(qwen3):
    """Earlier assistant turns lose their thinking (as Qwen3 serves them); the target turn keeps it."""
    row = {"messages": [{"role": "user", "content": "What is 2+2?"},
                        {"role": "assistant", "content": "<think>\nadd them\n</think>\n\n4"},
                        {"role": "user", "content": "And 3+3?"},
                        {"role": "assistant", "content": "<think>\nadd again\n</think>\n\n6"}]}
    layout = probe_layout(qwen3)
    r = render_trace(qwen3, layout, normalize(row, RecordSpec()))
    assert "add them" not in r.text and r.text[r.cot_start:r.answer_start] == "<think>\nadd again\n</think>"
    assert r.text[:r.cot_start].endswith("<|im_start|>user\nAnd 3+3?<|im_end|>\n<|im_start|>assistant\n")
    assert r.text[r.answer_start:] == "\n\n6<|im_end|>\n"


def test_sentencepiece_model_with_chatml(tmp_path, traces, preprocess):
    import sentencepiece

    rows = traces.short_rows(traces.r1, 3)
    text = [line for r in traces.rows(traces.r1_full) for line in r["full_response"].splitlines() if line.strip()]
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(text), model_prefix=str(tmp_path / "sp"), vocab_size=400, model_type="bpe",
        user_defined_symbols=["<|im_start|>", "<|im_end|>", "<think>", "</think>"], minloglevel=2)
    model = tmp_path / "sp.model"
    tok = load_tokenizer(model, chat_format="chatml")
    prefix, manifest = preprocess([traces.write_jsonl(tmp_path / "r1.jsonl", rows)], tokenizer=str(model),
                                  chat_format="chatml")
    assert manifest["token_dtype"] == "uint16" and manifest["tokenizer"]["kind"] == "sentencepiece"
    tokens, sections = IndexedDataset(f"{prefix}_tokens"), IndexedDataset(f"{prefix}_sections")
    assert tokens.index.dtype == np.uint16
    think, end_think = tok.token_id("<think>"), tok.token_id("</think>")
    for i in range(len(rows)):
        t, s = tokens[i], sections[i]
        assert np.all(np.diff(s.astype(int)) >= 0)
        assert t[s == Section.COT][0] == think and t[s == Section.COT][-1] == end_think
        assert tok.decode(t[s == Section.ANSWER]).endswith("<|im_end|>")
