"""``--append-eod``: an end-of-document token after each document, as Megatron-LM's preprocessing writes one, so its
GPTDataset (``reset_position_ids``/``reset_attention_mask``/``eod_mask_loss``) finds the document boundaries."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig
from megatron.core.datasets.indexed_dataset import IndexedDataset

from megatron_truncdistill.data.samples import collate
from megatron_truncdistill.preprocess.document import FilterConfig, Job
from megatron_truncdistill.preprocess.pipeline import PreprocessConfig, PreprocessError, run
from megatron_truncdistill.preprocess.records import RecordSpec
from megatron_truncdistill.preprocess.truncation import make_policy
from megatron_truncdistill.sections import NO_SECTION, Section

ENDOFTEXT = 151643  # Qwen3 <|endoftext|> (its pad token; the template never writes it)


def _run(src, prefix, tokenizer, *, eod_token="<|endoftext|>", lsp="0.1"):
    job = Job(tokenizer=tokenizer, chat_format=None, spec=RecordSpec(), policy=make_policy("lead-span", lsp=lsp),
              filters=FilterConfig(), append_eod=True, eod_token=eod_token)
    return run(PreprocessConfig(inputs=[str(src)], output_prefix=str(prefix), job=job, progress=False))


def test_eod_section_is_the_no_loss_code_of_the_trainer():
    """The EOD token is tagged 255 (no Section): our trainer gives it no loss whatever ``loss_sections`` says."""
    assert NO_SECTION not in set(Section)
    tokens = np.array([5, 6, 7, ENDOFTEXT])
    sections = np.array([Section.PROMPT, Section.COT, Section.ANSWER, NO_SECTION], dtype=np.uint8)
    batch = collate([[(tokens, sections)]], seq_length=6, loss_sections=tuple(Section), packing=False)
    assert batch.loss_mask[0].tolist() == [1, 1, 0, 0, 0, 0]  # predicting COT, ANSWER count; predicting EOD does not


def test_appended_eod_marks_document_boundaries_for_megatron_gpt_dataset(tmp_path, traces, qwen3_dir):
    rows = traces.short_rows(traces.r1, 6)
    src = traces.write_jsonl(tmp_path / "r1.jsonl", rows)
    manifest = _run(src, tmp_path / "eod", qwen3_dir)
    assert manifest["eod"] == {"token": "<|endoftext|>", "id": ENDOFTEXT, "section_code": NO_SECTION}
    tokens, sections = IndexedDataset(str(tmp_path / "eod_tokens")), IndexedDataset(str(tmp_path / "eod_sections"))
    plain = _plain_lengths(src, tmp_path, qwen3_dir)
    for i in range(len(rows)):
        assert tokens[i][-1] == ENDOFTEXT and np.count_nonzero(tokens[i] == ENDOFTEXT) == 1
        assert sections[i][-1] == NO_SECTION and np.all(sections[i][:-1] <= Section.ANSWER)
        assert tokens[i].size == plain[i] + 1
    assert sum(manifest["tokens_after_truncation"].values()) == sum(plain)  # the EOD is no section's token

    seq = 512
    config = GPTDatasetConfig(random_seed=1, sequence_length=seq, blend=([str(tmp_path / "eod_tokens")], None),
                              split="1,0,0", tokenizer=SimpleNamespace(vocab_size=151669, eod=ENDOFTEXT, pad=-1,
                                                                       unique_identifiers={"name": "qwen3"}),
                              reset_position_ids=True, reset_attention_mask=True, eod_mask_loss=True,
                              path_to_cache=str(tmp_path / "cache"), mid_level_dataset_surplus=0.005)
    train, _, _ = BlendedMegatronDatasetBuilder(GPTDataset, [4, None, None], lambda: True, config).build()
    boundaries = 0
    for sample in (train[j] for j in range(len(train))):
        ids, positions = sample["tokens"], sample["position_ids"]
        for i in np.flatnonzero(ids.numpy() == ENDOFTEXT):
            assert sample["loss_mask"][i] == 0  # nothing is predicted across the boundary
            if i + 1 < seq:
                boundaries += 1
                assert positions[i + 1] == 0 and positions[i] > 0  # the next document starts at position 0
                assert sample["attention_mask"][0, i + 1, : i + 1].all()  # True = masked: it sees no earlier doc
    assert boundaries >= 2


def _plain_lengths(src, tmp_path, qwen3_dir) -> list[int]:
    job = Job(tokenizer=qwen3_dir, chat_format=None, spec=RecordSpec(), policy=make_policy("lead-span", lsp="0.1"),
              filters=FilterConfig())
    run(PreprocessConfig(inputs=[str(src)], output_prefix=str(tmp_path / "plain"), job=job, progress=False))
    tokens = IndexedDataset(str(tmp_path / "plain_tokens"))
    return [int(n) for n in tokens.sequence_lengths]


def test_an_eod_the_template_writes_is_refused(tmp_path, traces, qwen3_dir):
    """Qwen3's EOS <|im_end|> ends every turn: as EOD it would cut each document at its first turn end."""
    src = traces.write_jsonl(tmp_path / "r1.jsonl", traces.short_rows(traces.r1, 1))
    with pytest.raises(PreprocessError, match=r"'<\|im_end\|>' \(id 151645\) is written by the chat template.*"
                                              r"pass --eod-token '<\|endoftext\|>' \(the pad token\)"):
        _run(src, tmp_path / "out", qwen3_dir, eod_token=None)
    with pytest.raises(PreprocessError, match="--eod-token 'two words': not a single token"):
        _run(src, tmp_path / "out", qwen3_dir, eod_token="two words")
    assert not list(tmp_path.glob("out*")) and not list(tmp_path.glob(".out*"))


def test_a_document_holding_the_eod_token_is_rejected(tmp_path, traces, qwen3_dir):
    ok = {"prompt": "Compute 2+2.", "full_response": "<think>2+2=4</think>4"}
    bad = {"prompt": "What is <|endoftext|>?", "full_response": "<think>a token</think>a token"}
    manifest = _run(traces.write_jsonl(tmp_path / "r.jsonl", [bad, ok]), tmp_path / "out", qwen3_dir, lsp="1")
    assert manifest["counts"]["rejected_by_reason"] == {"eod_in_document": 1} and manifest["counts"]["written"] == 1
