"""Float64 full-vocabulary references: plain torch on unsharded logits, autograd for gradients.

Written from the definitions (TRL's JSD, DistiLLM's skew divergences), independently of the shard math under test.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


def _log_mix(log_u, w_u, log_v, w_v):
    """log(w_u·u + w_v·v) by logsumexp (weights may be 0)."""
    shift = lambda lx, w: lx + math.log(w) if w > 0 else torch.full_like(lx, -math.inf)  # noqa: E731
    return torch.logsumexp(torch.stack([shift(log_u, w_u), shift(log_v, w_v)]), dim=0)


def reference_kd(zs, zt, *, divergence="forward_kl", temperature=1.0, beta=0.5, alpha=0.1, t2_scale=False,
                 vocab_size=None):
    """``[s, b]`` float64 divergence of ``[s, b, V]`` logits (padded rows >= vocab_size dropped)."""
    v = zs.shape[-1] if vocab_size is None else vocab_size
    ls = torch.log_softmax(zs[..., :v].double() / temperature, dim=-1)
    lt = torch.log_softmax(zt[..., :v].double() / temperature, dim=-1)
    ps, pt = ls.exp(), lt.exp()
    if divergence == "forward_kl" or (divergence == "jsd" and beta == 0):
        loss = (pt * (lt - ls)).sum(-1)
    elif divergence == "reverse_kl" or (divergence == "jsd" and beta == 1):
        loss = (ps * (ls - lt)).sum(-1)
    elif divergence == "jsd":
        lm = _log_mix(ls, 1 - beta, lt, beta)
        loss = beta * (pt * (lt - lm)).sum(-1) + (1 - beta) * (ps * (ls - lm)).sum(-1)
    elif divergence == "tvd":
        loss = 0.5 * (pt - ps).abs().sum(-1)
    elif divergence == "skew_kl":
        loss = (pt * (lt - _log_mix(lt, alpha, ls, 1 - alpha))).sum(-1)
    elif divergence == "skew_reverse_kl":
        loss = (ps * (ls - _log_mix(ls, alpha, lt, 1 - alpha))).sum(-1)
    else:
        raise ValueError(divergence)
    return loss * (temperature**2 if t2_scale else 1.0)


def reference_ce(zs, labels_sb, *, vocab_size=None):
    """``[s, b]`` float64 cross-entropy of ``[s, b, V]`` logits against ``[s, b]`` labels."""
    v = zs.shape[-1] if vocab_size is None else vocab_size
    logp = torch.log_softmax(zs[..., :v].double(), dim=-1)
    return -logp.gather(-1, labels_sb.long().unsqueeze(-1)).squeeze(-1)


@dataclass(frozen=True)
class Case:
    """One loss configuration and its inputs' recipe (seeded, so every rank builds the same full tensors)."""

    divergence: str
    temperature: float = 1.0
    t2_scale: bool = False
    beta: float = 0.5
    alpha: float = 0.1
    chunk_size: int | None = None
    vocab_size: int | None = None
    dtype: str = "float32"
    scale: float = 3.0  # logits ~ N(0, scale²)
    seed: int = 0

    @property
    def kwargs(self) -> dict:
        return dict(divergence=self.divergence, temperature=self.temperature, beta=self.beta, alpha=self.alpha,
                    t2_scale=self.t2_scale)

    def inputs(self, s=7, b=3, v=48):
        """Full ``[s, b, v]`` student and teacher logits (fp32 or bf16) and ``[s, b]`` upstream weights with zeros."""
        g = torch.Generator().manual_seed(self.seed)
        dtype = getattr(torch, self.dtype)
        zs = (torch.randn(s, b, v, generator=g) * self.scale).to(dtype)
        zt = (torch.randn(s, b, v, generator=g) * self.scale).to(dtype)
        weights = torch.rand(s, b, generator=g) * (torch.rand(s, b, generator=g) > 0.25)
        return zs, zt, weights

    def reference(self):
        """(loss [s, b], weighted-sum gradient [s, b, v]) in float64."""
        zs, zt, weights = self.inputs()
        x = zs.double().requires_grad_()
        loss = reference_kd(x, zt.double(), vocab_size=self.vocab_size, **self.kwargs)
        (loss * weights.double()).sum().backward()
        return loss.detach(), x.grad


def logits_cases() -> list[Case]:
    """Every divergence (JSD endpoints included) × T ∈ {1, 2} × t2_scale, cycling chunk sizes that do not divide
    the 21 tokens and padded vocabularies (20 of 48: rank 1 of TP=2 holds only padding), plus bf16 inputs."""
    divs = [("forward_kl", 0.5), ("reverse_kl", 0.5), ("jsd", 0.5), ("jsd", 0.0), ("jsd", 1.0), ("jsd", 0.9),
            ("tvd", 0.5), ("skew_kl", 0.5), ("skew_reverse_kl", 0.5)]
    chunks, vocabs, cases = [None, 4, 1, 5, 21], [None, 45, 20], []
    for i, ((div, beta), (temp, t2)) in enumerate(
            (d, t) for d in divs for t in [(1.0, False), (2.0, False), (2.0, True)]):
        cases.append(Case(div, temp, t2, beta=beta, alpha=0.1 + 0.3 * (i % 3), chunk_size=chunks[i % 5],
                          vocab_size=vocabs[i % 3], seed=i))
    for j, (div, beta) in enumerate(divs):
        cases.append(Case(div, 1.5, beta=beta, chunk_size=4, vocab_size=45, dtype="bfloat16", seed=100 + j))
    return cases


def case_id(case: Case) -> str:
    extra = f"b{case.beta}" if case.divergence == "jsd" else (f"a{case.alpha:.1f}" if "skew" in case.divergence
                                                              else "")
    return (f"{case.divergence}{extra}-T{case.temperature:g}{'-t2' if case.t2_scale else ''}-c{case.chunk_size}"
            f"-V{case.vocab_size}-{case.dtype}")


def assert_close_loss(actual, expected, case: Case):
    torch.testing.assert_close(torch.as_tensor(actual).double(), expected, rtol=1e-5, atol=1e-5)


def assert_close_grad(actual, expected, case: Case):
    actual = torch.as_tensor(actual).double()
    if case.dtype == "bfloat16":  # the gradient is returned in the logits' dtype
        torch.testing.assert_close(actual, expected, rtol=1e-2, atol=1e-2 * float(expected.abs().max()))
    else:
        torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-6)
