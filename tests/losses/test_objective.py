"""The KD + CE objective: float64 reference, megatron-core's vocab_parallel_cross_entropy, per-section logging,
the fused entry point, and the error paths. TP=2 checks run in one gloo job."""

import pytest
import torch
import torch.distributed as dist

from gloo_ranks import run_gloo_ranks
from losses.kd_reference import reference_ce, reference_kd
from megatron_truncdistill.losses import STAT_NAMES, KDObjectiveConfig, kd_ce_objective, kd_ce_objective_fused
from megatron_truncdistill.parallel import destroy_parallel, initialize_parallel
from megatron_truncdistill.sections import Section

S, B, H, V, VOCAB = 6, 2, 8, 40, 37
PAD_CODE = 255  # any code outside Section marks a padding position


def _batch(seed=0, dtype=torch.float32):
    """Student/teacher hidden + weights, their logits [s, b, V], and [b, s] labels / loss mask / sections."""
    g = torch.Generator().manual_seed(seed)
    hs, ws = torch.randn(S, B, H, generator=g).to(dtype), torch.randn(V, H, generator=g).to(dtype)
    ht, wt = torch.randn(S, B, H, generator=g).to(dtype), torch.randn(V, H, generator=g).to(dtype)
    labels = torch.randint(0, VOCAB, (B, S), generator=g)
    sections = torch.tensor([[0, 0, 1, 1, 1, 2], [0, 1, 1, 2, 2, PAD_CODE]], dtype=torch.uint8)
    loss_mask = (sections == Section.COT).float()  # loss_sections=[COT]
    labels[1, 5] = 10_000  # a padding position's label may be anything: it is masked out
    return dict(hs=hs, ws=ws, ht=ht, wt=wt, labels=labels, loss_mask=loss_mask, sections=sections)


def _reference(batch, config, *, with_teacher=True):
    """(loss_sum, kd [s, b], ce [s, b], grad student logits) in float64 from the full vocabulary."""
    zs = (batch["hs"].double() @ batch["ws"].double().t()).requires_grad_()  # [s, b, V]
    zt = batch["ht"].double() @ batch["wt"].double().t()
    labels = torch.where(batch["loss_mask"] > 0, batch["labels"], 0).t()  # [b, s] -> [s, b]
    ce = reference_ce(zs, labels, vocab_size=VOCAB)
    mask = batch["loss_mask"].t().double()  # [b, s] -> [s, b]
    if with_teacher:
        kd = reference_kd(zs, zt, divergence=config.divergence, temperature=config.temperature,
                          t2_scale=config.t2_scale, beta=config.beta, alpha=config.alpha, vocab_size=VOCAB)
        per_token = config.kd_weight * kd + (1 - config.kd_weight) * ce
    else:
        kd, per_token = torch.zeros_like(ce), ce
    loss_sum = (per_token * mask).sum()
    loss_sum.backward()
    return loss_sum.detach(), kd.detach(), ce.detach(), zs.grad


def _objective(batch, config, *, fused, with_teacher=True, tp_group=None, rank=0, tp=1, sequence_parallel=False):
    """This rank's (ObjectiveTerms, grad wrt its logits shard (or hidden + weight shard when fused))."""
    rows = slice(rank * V // tp, (rank + 1) * V // tp)
    seq = slice(rank * S // tp, (rank + 1) * S // tp) if sequence_parallel else slice(None)
    hs, ws = batch["hs"][seq].clone().requires_grad_(), batch["ws"][rows].clone().requires_grad_()
    ht, wt = (batch["ht"][seq], batch["wt"][rows]) if with_teacher else (None, None)
    fields = dict(labels=batch["labels"], loss_mask=batch["loss_mask"], sections=batch["sections"], config=config,
                  tp_group=tp_group, vocab_size=VOCAB)
    if fused:
        terms = kd_ce_objective_fused(hs, ws, ht, wt, sequence_parallel=sequence_parallel, **fields)
        terms.loss_sum.backward()
        return terms, (hs.grad, ws.grad)
    zs = (batch["hs"] @ batch["ws"][rows].t()).requires_grad_()  # [s, b, V/tp]
    zt = None if ht is None else batch["ht"] @ wt.t()
    terms = kd_ce_objective(zs, zt, **fields)
    terms.loss_sum.backward()
    return terms, zs.grad


CONFIGS = [KDObjectiveConfig(chunk_size=5), KDObjectiveConfig("reverse_kl", 2.0, kd_weight=0.3, t2_scale=True),
           KDObjectiveConfig("jsd", 2.0, kd_weight=1.0, beta=0.3, chunk_size=1)]


@pytest.mark.parametrize("fused", [False, True], ids=["logits", "fused"])
@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: f"{c.divergence}-T{c.temperature:g}-a{c.kd_weight}")
def test_matches_float64_reference(config, fused):
    batch = _batch()
    terms, grads = _objective(batch, config, fused=fused)
    ref_loss, kd, ce, ref_grad = _reference(batch, config)
    mask, sections = batch["loss_mask"].t().double(), batch["sections"].t()  # [b, s] -> [s, b]
    torch.testing.assert_close(terms.loss_sum.double(), ref_loss, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(terms.kd_sum.double(), (kd * mask).sum(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(terms.ce_sum.double(), (ce * mask).sum(), rtol=1e-5, atol=1e-5)
    assert terms.num_tokens.item() == mask.sum().item()
    for code in Section:  # per section over every real token, masked or not
        torch.testing.assert_close(terms.section_kd_sum[code].double(), kd[sections == code].sum(), rtol=1e-5,
                                   atol=1e-5)
        assert terms.section_tokens[code].item() == (sections == code).sum().item()
    if fused:  # chain rule through logits = hidden @ weightᵀ
        grad_h = ref_grad @ batch["ws"].double()
        grad_w = torch.einsum("sbv,sbh->vh", ref_grad, batch["hs"].double())
        torch.testing.assert_close(grads[0].double(), grad_h, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(grads[1].double(), grad_w, rtol=1e-4, atol=1e-5)
    else:
        torch.testing.assert_close(grads.double(), ref_grad, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("fused", [False, True], ids=["logits", "fused"])
def test_without_teacher_is_plain_cross_entropy(fused):
    batch, config = _batch(1), KDObjectiveConfig()
    terms, grads = _objective(batch, config, fused=fused, with_teacher=False)
    ref_loss, _, ce, ref_grad = _reference(batch, config, with_teacher=False)
    torch.testing.assert_close(terms.loss_sum.double(), ref_loss, rtol=1e-5, atol=1e-5)
    assert terms.kd_sum.item() == 0.0 and terms.section_kd_sum.abs().sum().item() == 0.0
    if not fused:
        torch.testing.assert_close(grads.double(), ref_grad, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("fused", [False, True], ids=["logits", "fused"])
def test_all_masked_gives_zero_loss_and_zero_grad(fused):
    batch = _batch(2)
    batch["loss_mask"] = torch.zeros_like(batch["loss_mask"])
    terms, grads = _objective(batch, KDObjectiveConfig(), fused=fused)
    assert terms.loss_sum.item() == 0.0 and terms.num_tokens.item() == 0.0
    for grad in grads if fused else (grads,):
        assert torch.count_nonzero(grad) == 0 and torch.isfinite(grad).all()
    assert torch.isfinite(terms.stat_vector()).all() and terms.stat_vector().shape == (len(STAT_NAMES),)


def test_masked_label_in_padding_rows_is_an_error():
    batch = _batch(3)
    batch["labels"][0, 3] = VOCAB  # a COT (masked-in) position pointing at a padded row
    with pytest.raises(ValueError, match=rf"label {VOCAB} at \(batch 0, position 3\) is outside the real"):
        _objective(batch, KDObjectiveConfig(), fused=False)


def test_config_is_validated_by_key():
    with pytest.raises(ValueError, match="kd_weight must be in"):
        KDObjectiveConfig(kd_weight=1.5)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        KDObjectiveConfig(temperature=0.0)
    with pytest.raises(ValueError, match="jsd beta must be in"):
        KDObjectiveConfig("jsd", beta=2.0)


def _megatron_ce_vs_objective(tp):
    """(our ce_sum, megatron's, our grad, megatron's grad) for the logits shard of this rank at TP=tp."""
    from megatron.core.tensor_parallel import vocab_parallel_cross_entropy

    ctx = initialize_parallel(tp, 1, seed=1)
    batch = _batch(4)
    batch["loss_mask"] = torch.ones_like(batch["loss_mask"])
    batch["labels"][1, 5] = 3
    rows = slice(ctx.tp_rank * V // tp, (ctx.tp_rank + 1) * V // tp)
    logits = batch["hs"] @ batch["ws"][rows].t()  # [s, b, V/tp]: megatron's CE sees every row as real
    ours = logits.clone().requires_grad_()
    terms = kd_ce_objective(ours, None, labels=batch["labels"], loss_mask=batch["loss_mask"],
                            sections=batch["sections"], config=KDObjectiveConfig(), tp_group=ctx.tp_group)
    terms.loss_sum.backward()
    theirs = logits.clone().requires_grad_()
    ce = vocab_parallel_cross_entropy(theirs.clone(), batch["labels"].t().contiguous())  # [s, b]
    ce.sum().backward()
    destroy_parallel()
    return terms.ce_sum.detach(), ce.sum().detach(), ours.grad, theirs.grad


def _tp2_job():
    results = {"megatron_tp1": _megatron_ce_vs_objective(1), "megatron_tp2": _megatron_ce_vs_objective(2)}
    group, rank = dist.new_group([0, 1]), dist.get_rank()
    for i, config in enumerate(CONFIGS):
        for fused, sp in [(False, False), (True, False), (True, True)]:
            terms, grads = _objective(_batch(), config, fused=fused, tp_group=group, rank=rank, tp=2,
                                      sequence_parallel=sp)
            results[(i, fused, sp)] = (terms.stat_vector(), grads)
    return results


@pytest.fixture(scope="module")
def tp2_results():
    return run_gloo_ranks(_tp2_job, 2, timeout=120)


@pytest.mark.parametrize("key", ["megatron_tp1", "megatron_tp2"])
def test_cross_entropy_equals_megatron_vocab_parallel_cross_entropy(key, tp2_results):
    for ours_sum, theirs_sum, ours_grad, theirs_grad in (rank[key] for rank in tp2_results):
        torch.testing.assert_close(ours_sum, theirs_sum, rtol=1e-6, atol=1e-5)
        torch.testing.assert_close(ours_grad, theirs_grad, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("layout", [(False, False), (True, False), (True, True)], ids=["logits", "fused", "fused-sp"])
@pytest.mark.parametrize("index", range(len(CONFIGS)), ids=lambda i: CONFIGS[i].divergence)
def test_tp2_matches_tp1(index, layout, tp2_results):
    fused, sp = layout
    tp1_terms, tp1_grads = _objective(_batch(), CONFIGS[index], fused=fused)
    (stats0, grads0), (stats1, grads1) = (rank[(index, *layout)] for rank in tp2_results)
    assert torch.equal(stats0, stats1)
    torch.testing.assert_close(stats0, tp1_terms.stat_vector(), rtol=1e-5, atol=1e-5)
    if not fused:
        torch.testing.assert_close(torch.cat([grads0, grads1], dim=-1), tp1_grads, rtol=1e-4, atol=1e-6)
        return
    grad_h = torch.cat([grads0[0], grads1[0]]) if sp else grads0[0]
    torch.testing.assert_close(grad_h, tp1_grads[0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(torch.cat([grads0[1], grads1[1]]), tp1_grads[1], rtol=1e-4, atol=1e-5)
