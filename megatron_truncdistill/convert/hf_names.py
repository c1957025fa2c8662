"""HF ↔ megatron-core parameter names, one literal map per architecture, and the tensor surgery between them.

Megatron names are those of a GPTModel built with the *local* layer spec at TP1/PP1 (``model.state_dict()``),
which is what the converter builds; dist_checkpointing maps them to layout-free checkpoint keys on save.
``{i}`` is the layer index. A value is either a HF name (copied unchanged) or a rule that packs several HF tensors
into one megatron tensor and unpacks it again:

- ``PackQKV``: megatron's fused ``linear_qkv`` is laid out per query group, ``[ng, (q_per_group + 2) * d, h]``
  flattened to 2-D: each group's query heads, then its key head, then its value head. That grouping keeps a TP
  rank's slice (whole groups) self-contained, which is why it is not simply ``cat([q, k, v])``.
- ``FuseGateUp``: SwiGLU's ``linear_fc1`` is ``cat([gate, up])``, ``[2 * ffn, h]``; megatron applies
  ``silu(first half) * second half``.
- ``VocabRows``: embedding / output rows; megatron's row count is the padded vocabulary, HF's its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping

import torch

from megatron_truncdistill.models.hf_config import ModelArchitecture

Reader = Callable[[str, tuple], torch.Tensor]
"""``read(hf_name, expected_shape) -> tensor``: fetches one HF tensor, refusing a shape mismatch by name."""


@dataclass(frozen=True)
class PackQKV:
    q: str
    k: str
    v: str

    def hf_names(self) -> tuple[str, ...]:
        return (self.q, self.k, self.v)

    def to_mcore(self, read: Reader, arch: ModelArchitecture, *, bias: bool = False) -> torch.Tensor:
        ng, qpg, d, h = arch.num_query_groups, arch.queries_per_group, arch.head_dim, arch.hidden_size
        tail = () if bias else (h,)
        q = read(self.q, (ng * qpg * d, *tail)).reshape(ng, qpg * d, *tail)  # [nh*d, h] → [ng, qpg*d, h]
        k = read(self.k, (ng * d, *tail)).reshape(ng, d, *tail)  # [ng*d, h] → [ng, d, h]
        v = read(self.v, (ng * d, *tail)).reshape(ng, d, *tail)  # [ng*d, h] → [ng, d, h]
        qkv = torch.cat([q, k, v], dim=1)  # [ng, (qpg + 2) * d, h]
        return qkv.reshape(ng * (qpg + 2) * d, *tail)  # [ng * (qpg + 2) * d, h]

    def to_hf(self, qkv: torch.Tensor, arch: ModelArchitecture) -> dict[str, torch.Tensor]:
        ng, qpg, d = arch.num_query_groups, arch.queries_per_group, arch.head_dim
        tail = tuple(qkv.shape[1:])  # (h,) for the weight, () for the bias
        grouped = qkv.reshape(ng, (qpg + 2) * d, *tail)  # [ng * (qpg + 2) * d, h] → [ng, (qpg + 2) * d, h]
        q, k, v = torch.split(grouped, [qpg * d, d, d], dim=1)  # [ng, qpg*d, h], [ng, d, h], [ng, d, h]
        return {self.q: q.reshape(ng * qpg * d, *tail),  # [nh*d, h]
                self.k: k.reshape(ng * d, *tail),  # [ng*d, h]
                self.v: v.reshape(ng * d, *tail)}  # [ng*d, h]


@dataclass(frozen=True)
class FuseGateUp:
    gate: str
    up: str

    def hf_names(self) -> tuple[str, ...]:
        return (self.gate, self.up)

    def to_mcore(self, read: Reader, arch: ModelArchitecture) -> torch.Tensor:
        shape = (arch.ffn_hidden_size, arch.hidden_size)
        return torch.cat([read(self.gate, shape), read(self.up, shape)], dim=0)  # [2 * ffn, h]

    def to_hf(self, fc1: torch.Tensor, arch: ModelArchitecture) -> dict[str, torch.Tensor]:
        gate, up = torch.split(fc1, arch.ffn_hidden_size, dim=0)  # [2 * ffn, h] → 2 × [ffn, h]
        return {self.gate: gate, self.up: up}


@dataclass(frozen=True)
class VocabRows:
    name: str

    def hf_names(self) -> tuple[str, ...]:
        return (self.name,)


def _layer_map(arch: ModelArchitecture) -> Mapping[str, object]:
    """The per-layer map for ``arch.family`` (templates with ``{i}``)."""
    return {"qwen3": QWEN3_LAYER, "qwen2": QWEN2_LAYER, "llama": LLAMA_LAYER}[arch.family]


QWEN3_LAYER = {
    "decoder.layers.{i}.input_layernorm.weight": "model.layers.{i}.input_layernorm.weight",
    "decoder.layers.{i}.self_attention.linear_qkv.weight": PackQKV("model.layers.{i}.self_attn.q_proj.weight",
                                                                   "model.layers.{i}.self_attn.k_proj.weight",
                                                                   "model.layers.{i}.self_attn.v_proj.weight"),
    "decoder.layers.{i}.self_attention.q_layernorm.weight": "model.layers.{i}.self_attn.q_norm.weight",
    "decoder.layers.{i}.self_attention.k_layernorm.weight": "model.layers.{i}.self_attn.k_norm.weight",
    "decoder.layers.{i}.self_attention.linear_proj.weight": "model.layers.{i}.self_attn.o_proj.weight",
    "decoder.layers.{i}.pre_mlp_layernorm.weight": "model.layers.{i}.post_attention_layernorm.weight",
    "decoder.layers.{i}.mlp.linear_fc1.weight": FuseGateUp("model.layers.{i}.mlp.gate_proj.weight",
                                                           "model.layers.{i}.mlp.up_proj.weight"),
    "decoder.layers.{i}.mlp.linear_fc2.weight": "model.layers.{i}.mlp.down_proj.weight",
}

QWEN2_LAYER = {
    "decoder.layers.{i}.input_layernorm.weight": "model.layers.{i}.input_layernorm.weight",
    "decoder.layers.{i}.self_attention.linear_qkv.weight": PackQKV("model.layers.{i}.self_attn.q_proj.weight",
                                                                   "model.layers.{i}.self_attn.k_proj.weight",
                                                                   "model.layers.{i}.self_attn.v_proj.weight"),
    "decoder.layers.{i}.self_attention.linear_qkv.bias": PackQKV("model.layers.{i}.self_attn.q_proj.bias",
                                                                 "model.layers.{i}.self_attn.k_proj.bias",
                                                                 "model.layers.{i}.self_attn.v_proj.bias"),
    "decoder.layers.{i}.self_attention.linear_proj.weight": "model.layers.{i}.self_attn.o_proj.weight",
    "decoder.layers.{i}.pre_mlp_layernorm.weight": "model.layers.{i}.post_attention_layernorm.weight",
    "decoder.layers.{i}.mlp.linear_fc1.weight": FuseGateUp("model.layers.{i}.mlp.gate_proj.weight",
                                                           "model.layers.{i}.mlp.up_proj.weight"),
    "decoder.layers.{i}.mlp.linear_fc2.weight": "model.layers.{i}.mlp.down_proj.weight",
}

LLAMA_LAYER = {
    "decoder.layers.{i}.input_layernorm.weight": "model.layers.{i}.input_layernorm.weight",
    "decoder.layers.{i}.self_attention.linear_qkv.weight": PackQKV("model.layers.{i}.self_attn.q_proj.weight",
                                                                   "model.layers.{i}.self_attn.k_proj.weight",
                                                                   "model.layers.{i}.self_attn.v_proj.weight"),
    "decoder.layers.{i}.self_attention.linear_proj.weight": "model.layers.{i}.self_attn.o_proj.weight",
    "decoder.layers.{i}.pre_mlp_layernorm.weight": "model.layers.{i}.post_attention_layernorm.weight",
    "decoder.layers.{i}.mlp.linear_fc1.weight": FuseGateUp("model.layers.{i}.mlp.gate_proj.weight",
                                                           "model.layers.{i}.mlp.up_proj.weight"),
    "decoder.layers.{i}.mlp.linear_fc2.weight": "model.layers.{i}.mlp.down_proj.weight",
}

# Outside the layers, all three architectures agree. lm_head is absent when the embeddings are tied.
EMBEDDING = {"embedding.word_embeddings.weight": VocabRows("model.embed_tokens.weight")}
FINAL = {"decoder.final_layernorm.weight": "model.norm.weight"}
OUTPUT = {"output_layer.weight": VocabRows("lm_head.weight")}


def name_map(arch: ModelArchitecture) -> list[tuple[str, object]]:
    """All (megatron name, HF name or rule) pairs of ``arch`` in checkpoint order: embedding, layers, head."""
    pairs = list(EMBEDDING.items())
    for i in range(arch.num_layers):
        pairs += [(m.format(i=i), _format_rule(rule, i)) for m, rule in _layer_map(arch).items()]
    pairs += list(FINAL.items())
    if not arch.tie_word_embeddings:
        pairs += list(OUTPUT.items())
    return pairs


def _format_rule(rule, i: int):
    if isinstance(rule, str):
        return rule.format(i=i)
    return type(rule)(*(name.format(i=i) for name in rule.hf_names()))


def hf_shape(hf_name: str, arch: ModelArchitecture) -> tuple[int, ...]:
    """The shape ``arch`` implies for a directly copied HF tensor (norms and projections)."""
    h, d = arch.hidden_size, arch.head_dim
    if hf_name.endswith(("q_norm.weight", "k_norm.weight")):
        return (d,)
    if hf_name.endswith("norm.weight"):
        return (h,)
    if hf_name.endswith("o_proj.weight"):
        return (h, arch.num_attention_heads * d)
    if hf_name.endswith("down_proj.weight"):
        return (h, arch.ffn_hidden_size)
    raise KeyError(f"no shape rule for {hf_name}")
