"""Samples from section-tagged documents: labels stay inside documents, packing keeps documents apart."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gloo_ranks import run_gloo_ranks
from megatron_truncdistill.data.samples import block_causal_mask, collate, plan_samples
from megatron_truncdistill.sections import NO_SECTION
from megatron_truncdistill.sections import Section

P, C, A = int(Section.PROMPT), int(Section.COT), int(Section.ANSWER)


def _doc(n, first, sections):
    return np.arange(first, first + n, dtype=np.int64), np.asarray(sections, dtype=np.uint8)


DOCS = [_doc(5, 10, [P, P, C, C, A]), _doc(4, 20, [P, C, C, A]), _doc(3, 30, [P, C, A])]


def test_plan_packs_first_fit_in_order_and_pads_one_per_sample():
    lengths = np.array([5, 4, 3, 9, 1])
    assert [s.tolist() for s in plan_samples(lengths, np.arange(5), seq_length=9, packing=True)] == [[0, 1], [2], [3]]
    assert [s.tolist() for s in plan_samples(lengths, np.arange(5), seq_length=9, packing=False)] == \
        [[0], [1], [2], [3]]  # the 1-token document predicts nothing and is skipped


def test_padded_sample_labels_mask_and_sections():
    batch = collate([[DOCS[0]]], seq_length=8, loss_sections=[Section.COT, Section.ANSWER], packing=False)
    assert batch.tokens[0].tolist() == [10, 11, 12, 13, 14, 0, 0, 0]
    assert batch.labels[0, :4].tolist() == [11, 12, 13, 14]
    assert batch.sections[0].tolist() == [P, C, C, A] + [NO_SECTION] * 4  # section of the predicted token
    assert batch.loss_mask[0].tolist() == [0, 1, 1, 1, 0, 0, 0, 0]
    assert not batch.packed and batch.real_tokens == 5 and batch.cu_seqlens is None


def test_packed_sample_never_predicts_across_documents():
    batch = collate([[DOCS[0], DOCS[1]]], seq_length=12, loss_sections=list(Section), packing=True, cu_seqlens=True)
    assert batch.position_ids[0].tolist() == [0, 1, 2, 3, 4, 0, 1, 2, 3, 0, 1, 2]  # the padding tail: one more doc
    assert batch.loss_mask[0].tolist() == [1, 1, 1, 1, 0, 1, 1, 1, 0, 0, 0, 0]  # a doc's last token predicts nothing
    assert batch.labels[0, 3].item() == 14 and batch.labels[0, 5].item() == 21
    assert batch.cu_seqlens.tolist() == [0, 5, 9, 12] and batch.max_seqlen == 5 and batch.real_tokens == 9


def test_block_mask_from_position_ids_equals_the_document_mask():
    samples = [[DOCS[0], DOCS[1]], [DOCS[2], DOCS[1]], [DOCS[1]]]
    batch = collate(samples, seq_length=12, loss_sections=list(Section), packing=True)
    assert all(t.numel() <= 3 * 12 for t in vars(batch).values() if isinstance(t, torch.Tensor)), \
        "the data layer builds no [s, s] attention mask"
    doc = torch.tensor([[0] * 5 + [1] * 4 + [2] * 3, [0] * 3 + [1] * 4 + [2] * 5, [0] * 4 + [1] * 8])  # [b, s]
    causal = torch.ones(12, 12, dtype=torch.bool).tril()
    allowed = (doc.unsqueeze(2) == doc.unsqueeze(1)) & causal  # [b, s, s]: same document, not in the future
    mask = block_causal_mask(batch.position_ids)
    assert mask.shape == (3, 1, 12, 12) and torch.equal(mask[:, 0], ~allowed)


def test_cu_seqlens_only_for_one_packed_sample():
    with pytest.raises(ValueError, match="micro_batch_size=1"):
        collate([[DOCS[0]], [DOCS[1]]], seq_length=8, loss_sections=list(Section), packing=True, cu_seqlens=True)


def _packed_equals_separate():
    from megatron_truncdistill.models.builder import build_gpt_model
    from megatron_truncdistill.models.hf_config import architecture_from_hf
    from megatron_truncdistill.parallel import destroy_parallel, initialize_parallel

    arch = architecture_from_hf({"model_type": "qwen3", "num_hidden_layers": 2, "hidden_size": 32,
                                 "intermediate_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2,
                                 "head_dim": 8, "vocab_size": 64, "max_position_embeddings": 64,
                                 "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "tie_word_embeddings": False})
    ctx = initialize_parallel(1, 1, seed=2)
    model = build_gpt_model(arch, ctx, padded_vocab_size=128).eval()
    packed = collate([[DOCS[0], DOCS[1], DOCS[2]]], seq_length=14, loss_sections=list(Section), packing=True)
    with torch.no_grad():
        together = model(packed.tokens, packed.position_ids, block_causal_mask(packed.position_ids))[0]  # [s, v]
        apart = [model(torch.from_numpy(t)[None], torch.arange(len(t))[None], None)[0] for t, _ in DOCS]
    destroy_parallel()
    return float((together[:12] - torch.cat(apart)).abs().max())


def test_packed_forward_equals_each_document_alone():
    assert run_gloo_ranks(_packed_equals_separate, 1, timeout=120)[0] < 1e-5
