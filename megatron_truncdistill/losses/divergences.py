"""Divergences between teacher and student token distributions, computed on one vocabulary shard of one chunk.

Notation (per token, temperature T already applied): a = z_s / T, p_s = softmax(a), p_t = softmax(z_t / T), and
ls = log p_s, lt = log p_t. Every divergence D(p_t, p_s) is a sum over the vocabulary, so on a vocab-parallel shard
it splits into per-rank partial sums that one all-reduce completes.

The gradient with respect to the student's (tempered) logits follows from the softmax Jacobian
dp_j/da_k = p_j (δ_jk − p_k): for g = ∂D/∂p_s (p_s treated as a free vector),

    ∂D/∂a = p_s ⊙ (g − <p_s, g>),

where <p_s, g> is a vocabulary sum (one more value in the same all-reduce). Constant terms of g cancel, which is
why several derivations below drop a "+1". The caller multiplies by 1/T (chain rule through a = z_s / T).

Protocol, shared by every class here (buffers are fp32 ``[n, v]`` views of one chunk's shard, owned by the caller):

1. ``partial_sums(ls, ps, lt, pt, scratch) -> [k, n]``: this shard's contributions; row 0 is the loss.
2. the caller all-reduces them over the TP group (sum), giving ``sums``;
3. ``grad(sums, ls, ps, lt, pt, scratch) -> [n, v]``: ∂D/∂a on this shard, written into one of ls/lt/pt/scratch.

Both steps may overwrite ls, lt, pt and scratch; neither ever writes ``ps``, which the training objective reuses for
the cross-entropy gradient. Mixture log-probabilities use logaddexp of log-probabilities (never log of a sum of
probabilities that may underflow), so logits of ±1e4 stay finite.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

DIVERGENCES = ("forward_kl", "reverse_kl", "jsd", "tvd", "skew_kl", "skew_reverse_kl")


def rowdot(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Σ_v x·y for each row of two ``[n, v]`` tensors, as a batched GEMV: no ``[n, v]`` product temporary."""
    return torch.bmm(x.unsqueeze(1), y.unsqueeze(2)).view(-1)  # [n, 1, v] @ [n, v, 1] -> [n, 1, 1] -> [n]


def _log(x: float) -> float:
    """log that maps 0 to -inf (a mixture weight of 0 drops that term from logaddexp)."""
    return math.log(x) if x > 0 else -math.inf


def _log_mixture(log_u: torch.Tensor, w_u: float, log_v: torch.Tensor, w_v: float, out: torch.Tensor) -> torch.Tensor:
    """log(w_u·u + w_v·v) from log u and log v, into ``out``; ``log_v`` is overwritten with log(w_v·v)."""
    torch.add(log_u, _log(w_u), out=out)
    log_v.add_(_log(w_v))
    return torch.logaddexp(out, log_v, out=out)


class ForwardKL:
    """KL(p_t ‖ p_s) = Σ p_t (lt − ls), the full KL (teacher entropy included, so 0 when the two agree).

    Gradient: with p_t fixed, D = const − Σ p_t·ls and ∂ls_j/∂a_k = δ_jk − p_s,k, so ∂D/∂a = p_s − p_t
    (Σ p_t = 1). No vocabulary sum is needed beyond the loss itself.
    """

    name = "forward_kl"

    def partial_sums(self, ls, ps, lt, pt, scratch):
        lt.sub_(ls)  # lt - ls, in place: [n, v]
        return rowdot(pt, lt).unsqueeze(0)  # [1, n]

    def grad(self, sums, ls, ps, lt, pt, scratch):
        return torch.sub(ps, pt, out=pt)


class ReverseKL:
    """KL(p_s ‖ p_t) = Σ p_s (ls − lt).

    Gradient: g_j = ∂D/∂p_j = (ls_j − lt_j) + 1; the 1 cancels and <p_s, ls − lt> = D, so
    ∂D/∂a = p_s ⊙ (ls − lt − D). D (already all-reduced as the loss) is the only vocabulary sum needed.
    """

    name = "reverse_kl"

    def partial_sums(self, ls, ps, lt, pt, scratch):
        ls.sub_(lt)  # r = ls - lt, in place: [n, v]
        return rowdot(ps, ls).unsqueeze(0)  # [1, n]

    def grad(self, sums, ls, ps, lt, pt, scratch):
        return ls.sub_(sums[0].unsqueeze(1)).mul_(ps)


class TotalVariation:
    """TVD = ½ Σ |p_t − p_s|.

    Gradient: g = ½ sign(p_s − p_t) (subgradient 0 where they are equal, as autograd's abs), so
    ∂D/∂a = p_s ⊙ (g − <p_s, g>); <p_s, g> is the second all-reduced sum.
    """

    name = "tvd"

    def partial_sums(self, ls, ps, lt, pt, scratch):
        diff = torch.sub(ps, pt, out=pt)  # p_s - p_t: [n, v]
        half_l1 = torch.linalg.vector_norm(diff, ord=1, dim=-1).mul_(0.5)
        sign = diff.sign_().mul_(0.5)  # g, in place of diff
        return torch.stack([half_l1, rowdot(ps, sign)])  # [2, n]

    def grad(self, sums, ls, ps, lt, pt, scratch):
        return pt.sub_(sums[1].unsqueeze(1)).mul_(ps)  # pt holds g


@dataclass(frozen=True)
class GeneralizedJSD:
    """β·KL(p_t ‖ m) + (1 − β)·KL(p_s ‖ m) with m = (1 − β)·p_s + β·p_t (TRL's ``generalized_jsd_loss``).

    Endpoints: the formula tends to 0 at β → 0 and β → 1 (m collapses onto the distribution that keeps weight), so
    like TRL ``make_divergence`` maps β = 0 to ``forward_kl`` and β = 1 to ``reverse_kl`` exactly; this class only
    sees 0 < β < 1.

    Gradient: ∂m_j/∂p_s,j = 1 − β, so
        g_j = −β(1 − β) p_t,j / m_j + (1 − β)(ls_j − log m_j + 1) − (1 − β)² p_s,j / m_j
            = (1 − β)(ls_j − log m_j + 1 − (β p_t,j + (1 − β) p_s,j) / m_j) = (1 − β)(ls_j − log m_j),
    hence ∂D/∂a = (1 − β)·p_s ⊙ (r − KL(p_s ‖ m)) with r = ls − log m; KL(p_s ‖ m) is the second all-reduced sum.
    """

    beta: float
    name = "jsd"

    def partial_sums(self, ls, ps, lt, pt, scratch):
        beta = self.beta
        log_m = _log_mixture(ls, 1.0 - beta, lt, beta, out=scratch)  # lt <- lt + log β: [n, v]
        lt.sub_(log_m).sub_(math.log(beta))  # lt - log m
        ls.sub_(log_m)  # r = ls - log m
        kl_s = rowdot(ps, ls)
        return torch.stack([rowdot(pt, lt).mul_(beta).add_(kl_s, alpha=1.0 - beta), kl_s])  # [2, n]

    def grad(self, sums, ls, ps, lt, pt, scratch):
        return ls.sub_(sums[1].unsqueeze(1)).mul_(ps).mul_(1.0 - self.beta)


@dataclass(frozen=True)
class SkewKL:
    """DistiLLM's skew KL: KL(p_t ‖ m), m = α·p_t + (1 − α)·p_s.

    Gradient: g_j = −(1 − α)·p_t,j / m_j = −(1 − α)·q_j with q = exp(lt − log m) ∈ [0, 1/α], so
    ∂D/∂a = −(1 − α)·p_s ⊙ (q − <p_s, q>); <p_s, q> is the second all-reduced sum. α = 0 is forward KL.
    """

    alpha: float
    name = "skew_kl"

    def partial_sums(self, ls, ps, lt, pt, scratch):
        log_m = _log_mixture(lt, self.alpha, ls, 1.0 - self.alpha, out=scratch)  # ls <- ls + log(1-α): [n, v]
        lt.sub_(log_m)  # lt - log m
        loss = rowdot(pt, lt)
        q = lt.exp_()  # p_t / m, in place
        return torch.stack([loss, rowdot(ps, q)])  # [2, n]

    def grad(self, sums, ls, ps, lt, pt, scratch):
        return lt.sub_(sums[1].unsqueeze(1)).mul_(ps).mul_(-(1.0 - self.alpha))  # lt holds q


@dataclass(frozen=True)
class SkewReverseKL:
    """DistiLLM's skew reverse KL: KL(p_s ‖ m), m = α·p_s + (1 − α)·p_t.

    Gradient: ∂m_j/∂p_s,j = α, so g_j = ls_j − log m_j + 1 − α·p_s,j / m_j; dropping the 1,
    g = r − α·q with r = ls − log m and q = exp(r) = p_s / m, and <p_s, g> = D − α·<p_s, q>, hence
    ∂D/∂a = p_s ⊙ (r − α·q − D + α·<p_s, q>); <p_s, q> is the second all-reduced sum. α = 0 is reverse KL.
    """

    alpha: float
    name = "skew_reverse_kl"

    def partial_sums(self, ls, ps, lt, pt, scratch):
        log_m = _log_mixture(ls, self.alpha, lt, 1.0 - self.alpha, out=scratch)  # lt <- lt + log(1-α): [n, v]
        ls.sub_(log_m)  # r = ls - log m
        loss = rowdot(ps, ls)
        q = torch.exp(ls, out=scratch)  # p_s / m, over log m (no longer needed)
        return torch.stack([loss, rowdot(ps, q)])  # [2, n]

    def grad(self, sums, ls, ps, lt, pt, scratch):
        centre = sums[0] - self.alpha * sums[1]  # <p_s, g>: [n]
        return ls.add_(scratch, alpha=-self.alpha).sub_(centre.unsqueeze(1)).mul_(ps)  # scratch holds q


Divergence = ForwardKL | ReverseKL | TotalVariation | GeneralizedJSD | SkewKL | SkewReverseKL


def make_divergence(name: str, *, beta: float = 0.5, alpha: float = 0.1) -> Divergence:
    """The divergence called ``name``; ``beta`` is read by ``jsd`` only, ``alpha`` by the two skew divergences."""
    if name not in DIVERGENCES:
        raise ValueError(f"unknown divergence {name!r}: expected one of {', '.join(DIVERGENCES)}")
    if name == "jsd":
        if not 0.0 <= beta <= 1.0:
            raise ValueError(f"jsd beta must be in [0, 1], got {beta}")
        if beta == 0.0:
            return ForwardKL()
        return ReverseKL() if beta == 1.0 else GeneralizedJSD(beta)
    if name in ("skew_kl", "skew_reverse_kl"):
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"{name} alpha must be in [0, 1], got {alpha}")
        return SkewKL(alpha) if name == "skew_kl" else SkewReverseKL(alpha)
    return {"forward_kl": ForwardKL, "reverse_kl": ReverseKL, "tvd": TotalVariation}[name]()
