"""vocab_parallel_kd_loss against a float64 full-vocabulary reference, at TP=1 (in process) and TP=2 (gloo).

All TP=2 cases run in one forked gloo job (module fixture); each case is then checked as its own test.
"""

import pytest
import torch
import torch.distributed as dist

from gloo_ranks import run_gloo_ranks
from losses.kd_reference import Case, assert_close_grad, assert_close_loss, case_id, logits_cases
from megatron_truncdistill.losses import vocab_parallel_kd_loss

CASES = logits_cases()


def _loss_and_grad(case: Case, *, tp_group=None, rank=0, tp=1):
    """This rank's (loss [s, b], grad shard [s, b, v/tp]) for ``case`` with upstream weights applied."""
    zs, zt, weights = case.inputs()
    width = zs.shape[-1] // tp
    shard = slice(rank * width, (rank + 1) * width)
    x = zs[..., shard].clone().requires_grad_()
    loss = vocab_parallel_kd_loss(x, zt[..., shard].clone(), tp_group=tp_group, chunk_size=case.chunk_size,
                                  vocab_size=case.vocab_size, **case.kwargs)
    assert loss.dtype == torch.float32 and loss.shape == zs.shape[:2]
    (loss * weights).sum().backward()
    return loss.detach(), x.grad


def _tp2_all_cases(cases):
    group = dist.new_group([0, 1])
    return [_loss_and_grad(c, tp_group=group, rank=dist.get_rank(), tp=2) for c in cases]


@pytest.fixture(scope="module")
def tp2_results():
    ranks = run_gloo_ranks(_tp2_all_cases, 2, CASES, timeout=120)
    return {case_id(c): (r0, r1) for c, r0, r1 in zip(CASES, *ranks)}


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_tp1_matches_float64_reference(case):
    loss, grad = _loss_and_grad(case)
    ref_loss, ref_grad = case.reference()
    assert_close_loss(loss, ref_loss, case)
    assert_close_grad(grad, ref_grad, case)
    if case.vocab_size is not None:
        assert torch.count_nonzero(grad[..., case.vocab_size:]) == 0


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_tp2_matches_float64_reference(case, tp2_results):
    (loss0, grad0), (loss1, grad1) = tp2_results[case_id(case)]
    ref_loss, ref_grad = case.reference()
    assert torch.equal(loss0, loss1), "TP ranks must agree on the per-token loss"
    assert_close_loss(loss0, ref_loss, case)
    assert_close_grad(torch.cat([grad0, grad1], dim=-1), ref_grad, case)


def test_jsd_endpoints_are_forward_and_reverse_kl():
    zs, zt, _ = Case("jsd").inputs()
    for beta, other in [(0.0, "forward_kl"), (1.0, "reverse_kl")]:
        jsd = vocab_parallel_kd_loss(zs, zt, divergence="jsd", beta=beta)
        assert torch.equal(jsd, vocab_parallel_kd_loss(zs, zt, divergence=other))


def test_identical_distributions_give_zero_and_teacher_gets_no_grad():
    zs, zt, _ = Case("forward_kl").inputs()
    for div in ("forward_kl", "reverse_kl", "jsd", "tvd", "skew_kl", "skew_reverse_kl"):
        x, t = zs.clone().requires_grad_(), zs.clone().requires_grad_()
        loss = vocab_parallel_kd_loss(x, t, divergence=div, chunk_size=4)
        assert loss.abs().max() < 1e-6, div
        loss.sum().backward()
        assert t.grad is None and x.grad.abs().max() < 1e-6
    x, t = zs.clone().requires_grad_(), zt.clone().requires_grad_()
    vocab_parallel_kd_loss(x, t).sum().backward()
    assert t.grad is None and x.grad is not None


@pytest.mark.parametrize("div", ["forward_kl", "reverse_kl", "jsd", "tvd", "skew_kl", "skew_reverse_kl"])
def test_logits_of_1e4_stay_finite_and_exact(div):
    case = Case(div, scale=1e4, vocab_size=45, chunk_size=5, seed=7)
    loss, grad = _loss_and_grad(case)
    ref_loss, ref_grad = case.reference()
    assert torch.isfinite(loss).all() and torch.isfinite(grad).all()
    torch.testing.assert_close(loss.double(), ref_loss, rtol=1e-5, atol=1e-2)
    torch.testing.assert_close(grad.double(), ref_grad, rtol=1e-4, atol=1e-5)


def test_padded_rows_get_no_probability_mass():
    zs, zt, _ = Case("forward_kl").inputs()
    base = vocab_parallel_kd_loss(zs, zt, vocab_size=40)
    for fill in (1e4, -1e4, 0.0):
        zs2, zt2 = zs.clone(), zt.clone()
        zs2[..., 40:], zt2[..., 40:] = fill, -fill
        x = zs2.requires_grad_()
        loss = vocab_parallel_kd_loss(x, zt2, vocab_size=40)
        assert torch.equal(loss, base)
        loss.sum().backward()
        assert torch.count_nonzero(x.grad[..., 40:]) == 0


def test_all_masked_gives_zero_loss_and_zero_grad():
    zs, zt, _ = Case("reverse_kl").inputs()
    x = zs.clone().requires_grad_()
    total = (vocab_parallel_kd_loss(x, zt, divergence="reverse_kl", chunk_size=4) * 0.0).sum()
    total.backward()
    assert total.item() == 0.0 and torch.count_nonzero(x.grad) == 0 and torch.isfinite(x.grad).all()


def test_width_mismatch_names_both_sizes():
    zs, zt, _ = Case("forward_kl").inputs()
    with pytest.raises(ValueError, match="48 vocabulary rows per rank but the teacher's have 50"):
        vocab_parallel_kd_loss(zs, torch.zeros(*zs.shape[:2], 50))
    with pytest.raises(ValueError, match="vocab_size 49 must be in"):
        vocab_parallel_kd_loss(zs, zt, vocab_size=49)
    with pytest.raises(ValueError, match="unknown divergence"):
        vocab_parallel_kd_loss(zs, zt, divergence="kl")


def test_backward_runs_once():
    """The saved gradient is scaled in place; a second backward must fail loudly, not return a wrong gradient."""
    zs, zt, _ = Case("forward_kl").inputs()
    loss = vocab_parallel_kd_loss(zs.clone().requires_grad_(), zt).sum()
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_inplace_backward_gives_the_same_gradient_in_the_logits_storage(dtype):
    zs, zt, weights = Case("skew_reverse_kl").inputs()
    zs, zt = zs.to(dtype), zt.to(dtype)
    x = zs.clone().requires_grad_()
    loss = vocab_parallel_kd_loss(x, zt, divergence="skew_reverse_kl", chunk_size=4, vocab_size=45)
    (loss * weights).sum().backward()
    y = zs.clone().requires_grad_()
    storage = y.data_ptr()
    loss2 = vocab_parallel_kd_loss(y, zt, divergence="skew_reverse_kl", chunk_size=4, vocab_size=45,
                                   inplace_backward=True)
    (loss2 * weights).sum().backward()
    assert torch.equal(loss, loss2) and torch.equal(x.grad, y.grad)
    assert y.grad.data_ptr() == storage, "the gradient must live in the logits' storage"
