"""Analytic FLOP counts of a decoder forward pass: the one formula the trainer's logs and the planner share.

Counts multiply-adds as 2 FLOPs, matrix products only (norms, activations and softmax are < 1% at these shapes).
Per layer and token: QKV projection, attention scores and weighted values over the causal context, output
projection, SwiGLU MLP (three matrices); plus the output layer over the (padded) vocabulary. Backward costs twice
the forward; full activation recomputation adds one more forward.
"""

from __future__ import annotations

from dataclasses import dataclass

from megatron_truncdistill.models.hf_config import ModelArchitecture, architecture_from_hf


@dataclass(frozen=True)
class DecoderShape:
    """What FLOPs depend on: the matrix shapes of a ``ModelArchitecture``."""

    num_layers: int
    hidden_size: int
    ffn_hidden_size: int
    num_attention_heads: int
    num_query_groups: int
    head_dim: int
    vocab_size: int

    @classmethod
    def from_architecture(cls, arch: ModelArchitecture) -> "DecoderShape":
        return cls(num_layers=arch.num_layers, hidden_size=arch.hidden_size, ffn_hidden_size=arch.ffn_hidden_size,
                   num_attention_heads=arch.num_attention_heads, num_query_groups=arch.num_query_groups,
                   head_dim=arch.head_dim, vocab_size=arch.vocab_size)

    @classmethod
    def from_hf(cls, config: dict) -> "DecoderShape":
        return cls.from_architecture(architecture_from_hf(config))

    @property
    def parameters(self) -> int:
        """Matrix parameters (embedding counted once, as the output layer)."""
        h, d = self.hidden_size, self.head_dim
        attn = h * d * (self.num_attention_heads + 2 * self.num_query_groups) + self.num_attention_heads * d * h
        mlp = 3 * h * self.ffn_hidden_size
        return self.num_layers * (attn + mlp) + h * self.vocab_size


def dense_flops_per_token(shape: DecoderShape) -> float:
    """Projections, MLP and output layer: the FLOPs every token costs whatever the context length."""
    h, d = shape.hidden_size, shape.head_dim
    qkv = 2 * h * d * (shape.num_attention_heads + 2 * shape.num_query_groups)
    out_proj = 2 * shape.num_attention_heads * d * h
    mlp = 2 * 3 * h * shape.ffn_hidden_size
    return shape.num_layers * (qkv + out_proj + mlp) + 2 * h * shape.vocab_size


def attention_flops(shape: DecoderShape, seq_length: int, *, causal: bool = True) -> float:
    """Scores (QK^T) and weighted values (PV) over one sequence; causal counts only the unmasked pairs."""
    pairs = seq_length * (seq_length + 1) / 2 if causal else seq_length * seq_length
    return shape.num_layers * 2 * 2 * shape.num_attention_heads * shape.head_dim * pairs


def forward_flops(shape: DecoderShape, seq_length: int) -> float:
    """FLOPs of one forward pass over one causal sequence of ``seq_length`` tokens."""
    return seq_length * dense_flops_per_token(shape) + attention_flops(shape, seq_length)


def training_flops(student: DecoderShape, teacher: DecoderShape | None, seq_length: int, *,
                   recompute: bool = False) -> dict[str, float]:
    """Per sequence: student forward+backward (3× forward, 4× with full recompute) and teacher forward."""
    student_fwd = forward_flops(student, seq_length)
    return {
        "student": student_fwd * (4 if recompute else 3),
        "teacher": forward_flops(teacher, seq_length) if teacher is not None else 0.0,
    }


PEAK_TFLOPS_BF16 = {  # dense tensor-core peaks, per device
    "H100": 989.0, "H200": 989.0, "H800": 989.0, "A100": 312.0, "A800": 312.0, "L40S": 362.0, "B200": 2250.0,
}


def device_peak_tflops(device_name: str) -> float | None:
    """Peak bf16 TFLOP/s of a GPU by name (None when unknown, e.g. on CPU)."""
    for key, value in PEAK_TFLOPS_BF16.items():
        if key in device_name:
            return value
    return None
