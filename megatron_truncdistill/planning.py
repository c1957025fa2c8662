"""Predict what lead-span truncation saves: tokens, FLOPs, memory and step time per LSP, before training.

From the exact document lengths of an LSP-1.0 bins prefix (its ``_tokens.idx``), each LSP r keeps
max(1, floor(r·n)) tokens of an n-token document (the paper's protocol, as ``tools/preprocess.py`` applies it).
FLOPs use ``flops.forward_flops`` per document (causal attention over the document only, i.e. packed training);
memory follows Korthikanti et al. (2022) for activations of one micro-batch at the longest kept document.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from megatron_truncdistill.flops import DecoderShape, forward_flops
from megatron_truncdistill.preprocess.truncation import parse_fraction

DEFAULT_LSPS = tuple(round(0.1 * i, 1) for i in range(1, 11))


@dataclass(frozen=True)
class Layout:
    tensor_model_parallel_size: int = 1
    pipeline_model_parallel_size: int = 1
    data_parallel_size: int = 1
    micro_batch_size: int = 1
    bytes_per_activation: int = 2  # bf16
    loss_chunk_tokens: int | None = None  # chunked/fused KD loss: logits memory bounded by the chunk

    @property
    def devices(self) -> int:
        return self.tensor_model_parallel_size * self.pipeline_model_parallel_size * self.data_parallel_size


@dataclass(frozen=True)
class LspPrediction:
    lsp: float
    tokens: int
    teacher_forward_flops: float
    student_train_flops: float  # forward + backward
    longest_document: int
    activation_bytes_per_microbatch: float  # student, per pipeline stage
    logits_bytes_per_microbatch: float  # student + teacher logits shards (fp32) on the last stage
    step_time_s: float | None  # per optimizer step of ``samples_per_step`` documents, if a peak was given

    def as_dict(self) -> dict:
        return asdict(self)


def truncate_lengths(lengths: np.ndarray, lsp: float) -> np.ndarray:
    """Lead-span lengths with the preprocessor's exact decimal arithmetic: max(1, floor(r·n))."""
    r = parse_fraction(str(lsp))
    return np.maximum(1, (lengths.astype(np.int64) * r.numerator) // r.denominator)


def corpus_flops(shape: DecoderShape, lengths: np.ndarray) -> float:
    """Σ over documents of one forward pass each (per-document causal attention)."""
    unique, counts = np.unique(lengths, return_counts=True)
    return float(sum(c * forward_flops(shape, int(n)) for n, c in zip(unique, counts)))


def activation_bytes(shape: DecoderShape, seq: int, layout: Layout) -> float:
    """Stored activations of one micro-batch on one pipeline stage (no recompute, no sequence parallel).

    Korthikanti et al. eq. (2) with TP: per layer s·b·h·(10 + 24/t + 5·a·s/(h·t)) bytes at 16-bit; scaled by
    ``bytes_per_activation / 2`` for other widths.
    """
    s, b, h, a = seq, layout.micro_batch_size, shape.hidden_size, shape.num_attention_heads
    t = layout.tensor_model_parallel_size
    per_layer = s * b * h * (10 + 24 / t + 5 * a * s / (h * t)) * layout.bytes_per_activation / 2
    return per_layer * shape.num_layers / layout.pipeline_model_parallel_size


def logits_bytes(vocab: int, seq: int, layout: Layout, *, models: int) -> float:
    """fp32 logits shards held by the loss (whole micro-batch, or one chunk with the chunked/fused loss)."""
    tokens = seq * layout.micro_batch_size
    if layout.loss_chunk_tokens:
        tokens = min(tokens, layout.loss_chunk_tokens)
    return tokens * vocab / layout.tensor_model_parallel_size * 4 * models


def predict(lengths: np.ndarray, student: DecoderShape, teacher: DecoderShape | None, layout: Layout, *,
            lsps=DEFAULT_LSPS, peak_tflops: float | None = None, mfu: float = 0.4,
            samples_per_step: int | None = None) -> list[LspPrediction]:
    """One prediction per LSP for one pass over ``lengths`` (the documents of an LSP-1.0 prefix)."""
    rows = []
    for lsp in lsps:
        kept = truncate_lengths(lengths, lsp)
        student_flops = 3 * corpus_flops(student, kept)
        teacher_flops = corpus_flops(teacher, kept) if teacher is not None else 0.0
        longest = int(kept.max())
        step_time = None
        if peak_tflops and samples_per_step:
            per_doc = (student_flops + teacher_flops) / len(kept)
            step_time = per_doc * samples_per_step / (layout.devices * peak_tflops * 1e12 * mfu)
        rows.append(LspPrediction(
            lsp=lsp, tokens=int(kept.sum()), teacher_forward_flops=teacher_flops, student_train_flops=student_flops,
            longest_document=longest, activation_bytes_per_microbatch=activation_bytes(student, longest, layout),
            logits_bytes_per_microbatch=logits_bytes(student.vocab_size, longest, layout,
                                                     models=2 if teacher is not None else 1),
            step_time_s=step_time))
    return rows


def markdown_table(rows: list[LspPrediction]) -> str:
    base = rows[-1] if rows and rows[-1].lsp == 1.0 else None
    lines = ["| LSP | tokens | teacher fwd PFLOP | student fwd+bwd PFLOP | FLOPs vs 1.0 | activations/µbatch GiB "
             "| logits/µbatch GiB | step s |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        total = r.teacher_forward_flops + r.student_train_flops
        ratio = f"{total / (base.teacher_forward_flops + base.student_train_flops):.2f}" if base else "-"
        step = f"{r.step_time_s:.3g}" if r.step_time_s is not None else "-"
        lines.append(f"| {r.lsp:.1f} | {r.tokens:,} | {r.teacher_forward_flops / 1e15:.4g} | "
                     f"{r.student_train_flops / 1e15:.4g} | {ratio} | {r.activation_bytes_per_microbatch / 2**30:.3g} | "
                     f"{r.logits_bytes_per_microbatch / 2**30:.3g} | {step} |")
    return "\n".join(lines)


def plot(rows: list[LspPrediction], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lsps = [r.lsp for r in rows]
    base = rows[-1]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(lsps, [r.tokens / base.tokens for r in rows], "o-", label="tokens")
    ax.plot(lsps, [(r.student_train_flops + r.teacher_forward_flops) /
                   (base.student_train_flops + base.teacher_forward_flops) for r in rows], "s-", label="FLOPs")
    ax.plot(lsps, [r.activation_bytes_per_microbatch / base.activation_bytes_per_microbatch for r in rows], "^-",
            label="activation memory (longest doc)")
    ax.set_xlabel("lead-span proportion (LSP)")
    ax.set_ylabel("relative to LSP 1.0")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
