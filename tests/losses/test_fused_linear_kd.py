"""fused_linear_kd_loss: loss and gradients for student hidden states and output weight against float64, at TP=1,
TP=2 and TP=2 with sequence parallelism (one gloo job for all TP=2 cases)."""

from dataclasses import dataclass

import pytest
import torch
import torch.distributed as dist

from gloo_ranks import run_gloo_ranks
from losses.kd_reference import reference_kd
from megatron_truncdistill.losses import fused_linear_kd_loss


@dataclass(frozen=True)
class FusedCase:
    divergence: str
    temperature: float = 1.0
    t2_scale: bool = False
    chunk_size: int | None = None
    vocab_size: int | None = 37
    dtype: str = "float32"
    seed: int = 0

    def inputs(self, s=6, b=2, h=8, h_t=6, v=40):
        """Student hidden [s, b, h], weight [v, h]; teacher hidden [s, b, h_t], weight [v, h_t]; weights [s, b]."""
        g = torch.Generator().manual_seed(self.seed)
        dtype = getattr(torch, self.dtype)
        hs, ws = torch.randn(s, b, h, generator=g), torch.randn(v, h, generator=g)
        ht, wt = torch.randn(s, b, h_t, generator=g), torch.randn(v, h_t, generator=g)
        weights = torch.rand(s, b, generator=g) * (torch.rand(s, b, generator=g) > 0.25)
        return hs.to(dtype), ws.to(dtype), ht.to(dtype), wt.to(dtype), weights

    def kwargs(self):
        return dict(divergence=self.divergence, temperature=self.temperature, t2_scale=self.t2_scale,
                    chunk_size=self.chunk_size, vocab_size=self.vocab_size)

    def reference(self):
        """(loss, grad hidden [s, b, h], grad weight [v, h]) in float64."""
        hs, ws, ht, wt, weights = self.inputs()
        x, w = hs.double().requires_grad_(), ws.double().requires_grad_()
        per_token = reference_kd(x @ w.t(), ht.double() @ wt.double().t(), divergence=self.divergence,
                                 temperature=self.temperature, t2_scale=self.t2_scale, vocab_size=self.vocab_size)
        loss = (per_token * weights.double()).sum()
        loss.backward()
        return loss.detach(), x.grad, w.grad


CASES = [FusedCase("forward_kl", chunk_size=5), FusedCase("reverse_kl", 2.0, True, chunk_size=1, seed=1),
         FusedCase("jsd", chunk_size=None, vocab_size=None, seed=2), FusedCase("tvd", chunk_size=7, seed=3),
         FusedCase("skew_kl", 2.0, chunk_size=4, vocab_size=15, seed=4),
         FusedCase("skew_reverse_kl", chunk_size=12, seed=5),
         FusedCase("forward_kl", chunk_size=5, dtype="bfloat16", seed=6)]


def _case_id(case):
    return f"{case.divergence}-T{case.temperature:g}-c{case.chunk_size}-V{case.vocab_size}-{case.dtype}"


def _run(case, *, tp_group=None, rank=0, tp=1, sequence_parallel=False):
    """This rank's (loss, grad hidden (its sequence shard under SP), grad weight shard)."""
    hs, ws, ht, wt, weights = case.inputs()
    rows = slice(rank * ws.shape[0] // tp, (rank + 1) * ws.shape[0] // tp)
    seq = slice(rank * hs.shape[0] // tp, (rank + 1) * hs.shape[0] // tp) if sequence_parallel else slice(None)
    x, w = hs[seq].clone().requires_grad_(), ws[rows].clone().requires_grad_()
    t_h, t_w = ht[seq].clone().requires_grad_(), wt[rows].clone().requires_grad_()
    loss = fused_linear_kd_loss(x, w, t_h, t_w, token_weights=weights, tp_group=tp_group,
                                sequence_parallel=sequence_parallel, **case.kwargs())
    loss.backward()
    assert t_h.grad is None and t_w.grad is None, "the teacher must not receive a gradient"
    return loss.detach(), x.grad, w.grad


def _tp2_all(cases):
    group = dist.new_group([0, 1])
    rank = dist.get_rank()
    return [[_run(c, tp_group=group, rank=rank, tp=2, sequence_parallel=sp) for c in cases] for sp in (False, True)]


@pytest.fixture(scope="module")
def tp2_results():
    return run_gloo_ranks(_tp2_all, 2, CASES, timeout=120)


def _check(case, loss, grad_h, grad_w, ref):
    ref_loss, ref_h, ref_w = ref
    if case.dtype == "bfloat16":  # logits come from a bf16 GEMM, as in the output layer
        tol = dict(rtol=2e-2, atol=2e-2)
        torch.testing.assert_close(loss.double(), ref_loss, **tol)
        torch.testing.assert_close(grad_h.double(), ref_h, rtol=5e-2, atol=5e-2 * float(ref_h.abs().max()))
        torch.testing.assert_close(grad_w.double(), ref_w, rtol=5e-2, atol=5e-2 * float(ref_w.abs().max()))
        return
    torch.testing.assert_close(loss.double(), ref_loss, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grad_h.double(), ref_h, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(grad_w.double(), ref_w, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_tp1_matches_float64_reference(case):
    loss, grad_h, grad_w = _run(case)
    _check(case, loss, grad_h, grad_w, case.reference())
    if case.vocab_size is not None:
        assert torch.count_nonzero(grad_w[case.vocab_size:]) == 0, "padded rows must get zero gradient"


@pytest.mark.parametrize("sequence_parallel", [False, True], ids=["tp2", "tp2-sp"])
@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_tp2_matches_float64_reference(case, sequence_parallel, tp2_results):
    (loss0, h0, w0), (loss1, h1, w1) = (rank[int(sequence_parallel)][CASES.index(case)] for rank in tp2_results)
    assert torch.equal(loss0, loss1)
    grad_h = torch.cat([h0, h1]) if sequence_parallel else h0  # SP: each rank holds its sequence shard
    if not sequence_parallel:
        assert torch.equal(h0, h1), "without SP every TP rank holds the full, all-reduced hidden gradient"
    _check(case, loss0, grad_h, torch.cat([w0, w1]), case.reference())


def test_all_masked_gives_zero_and_width_mismatch_is_refused():
    case = FusedCase("forward_kl", chunk_size=5)
    hs, ws, ht, wt, _ = case.inputs()
    x, w = hs.clone().requires_grad_(), ws.clone().requires_grad_()
    loss = fused_linear_kd_loss(x, w, ht, wt, token_weights=torch.zeros(hs.shape[:2]), chunk_size=5)
    loss.backward()
    assert loss.item() == 0.0 and torch.count_nonzero(x.grad) == 0 and torch.count_nonzero(w.grad) == 0
    with pytest.raises(ValueError, match="40 vocabulary rows per rank but the teacher's has 41"):
        fused_linear_kd_loss(hs, ws, ht, torch.zeros(41, ht.shape[-1]))
