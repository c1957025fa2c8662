"""One pipeline stage holding both models: the trainable student (DDP) and the frozen teacher, side by side.

megatron-core's schedule sees a single model per stage; ``ColocatedStage`` is that model, and everything
co-location means to the schedule is decided here:

- **The activation between stages** carries both hidden states concatenated along the hidden dimension,
  ``[s, b, h_student + h_teacher]`` (``p2p_width``), split on receipt. The schedule sizes its p2p buffers for one
  model's hidden size; ``adjust_tensor_shapes`` widens them, and the step hands it to every schedule (the
  pipelined one applies it whenever PP > 1; the others ignore it). The teacher's half never requires grad, so its
  part of the returned gradient is zeros (sent, but cheap next to the teacher's forward it saves).
- **Its dtype** (``boundary_dtype``) is the wider of the two models' params dtypes: with an fp32 teacher beside a
  bf16 student the activation crosses in fp32, so neither half is rounded at a boundary (the student's half is
  widened exactly and narrowed back to bf16 exactly on receipt). The price is a fp32 copy of the student's half;
  the alternative, rounding the teacher to bf16 at every boundary, would make its soft targets depend on PP.
- **The schedule's config** (``config``) is a copy of the student's TransformerConfig carrying that pipeline
  dtype and the student DDP's grad-sync hooks (the schedule calls them with the stage; the grads live in the
  student's DDP chunk). The student's own config is left as it was built.
- **Each model's attention input** (``AttentionInput``) is its own: a Transformer Engine model takes packed
  documents as THD (``cu_seqlens``), a local-attention model as a block mask built on the device.

The last stage returns both models' final hidden states; the loss function turns them into logits shards (or feeds
them straight to the fused loss) so that neither model's forward materializes a ``[b, s, v/tp]`` transpose copy.
"""

from __future__ import annotations

import copy

import torch
from megatron.core.distributed import finalize_model_grads
from megatron.core.packed_seq_params import PackedSeqParams

from megatron_truncdistill.data.samples import AttentionInput, Batch, block_causal_mask
from megatron_truncdistill.mcore_compat import final_hidden_states


def output_weight(model) -> torch.Tensor:
    """The ``[v/tp, h]`` output-layer weight shard (the embedding's when tied)."""
    if model.share_embeddings_and_output_weights:
        return model.shared_embedding_or_output_weight()
    return model.output_layer.weight


def logits_from_hidden(model, hidden: torch.Tensor) -> torch.Tensor:
    """``[s, b, h]`` final hidden states -> ``[s, b, v/tp]`` vocab-parallel logits through the model's output layer."""
    weight = model.shared_embedding_or_output_weight() if model.share_embeddings_and_output_weights else None
    logits, _ = model.output_layer(hidden, weight=weight)
    return logits


def boundary_dtype(*dtypes: torch.dtype) -> torch.dtype:
    """The dtype an activation of all these models crosses a stage boundary in: the widest (fp32 > bf16)."""
    return max(dtypes, key=lambda d: torch.finfo(d).bits)


def attention_input(*, packing: bool, transformer_engine: bool) -> AttentionInput:
    """How one model takes a micro-batch's documents: causal when padded; THD (TE) or a block mask when packed."""
    if not packing:
        return AttentionInput.CAUSAL
    return AttentionInput.THD if transformer_engine else AttentionInput.BLOCK_MASK


class ColocatedStage(torch.nn.Module):
    """Student stage (DDP-wrapped) + teacher stage (frozen, or None for student-only training)."""

    def __init__(self, student_ddp, teacher, *, is_last_stage: bool, student_attention: AttentionInput,
                 teacher_attention: AttentionInput | None = None) -> None:
        super().__init__()
        self.student = student_ddp
        self.teacher = teacher
        self.is_last_stage = is_last_stage
        self.attention = {"student": student_attention, "teacher": teacher_attention}
        self.model_type = student_ddp.module.model_type  # the schedule reads the encoder/decoder kind
        self.student_hidden = student_ddp.config.hidden_size
        models = [student_ddp.module] + ([teacher] if teacher is not None else [])
        self.p2p_width = sum(m.config.hidden_size for m in models)
        self.boundary_dtype = boundary_dtype(*(m.config.params_dtype for m in models))
        self.config = self._schedule_config(student_ddp)
        if teacher is not None:
            teacher.eval()
            teacher.requires_grad_(False)

    def _schedule_config(self, student_ddp):
        """What megatron-core's schedule reads from "the model": the student's config, with the boundary dtype and
        the grad-sync hooks pointed at the student's DDP chunk (the schedule calls them with this stage)."""
        config = copy.copy(student_ddp.config)  # shallow: the student's model keeps its own config object
        config.pipeline_dtype = self.boundary_dtype
        config.no_sync_func = student_ddp.no_sync
        config.finalize_model_grads_func = (
            lambda _stages, num_tokens=None, **kwargs: finalize_model_grads([student_ddp], num_tokens, **kwargs))
        return config

    @property
    def attention_inputs(self) -> set[AttentionInput]:
        """Every representation of packed documents this stage's models take (the data layer builds those)."""
        return {a for a in self.attention.values() if a is not None}

    def adjust_tensor_shapes(self, recv_shapes: list, send_shapes: list) -> tuple[list, list]:
        """``adjust_tensor_shapes_fn`` of the pipelined schedule: ``[s, b, h_student]`` -> ``[s, b, p2p_width]``."""
        widen = lambda shapes: [(*shape[:-1], self.p2p_width) for shape in shapes]  # noqa: E731
        return widen(recv_shapes), widen(send_shapes)

    def set_input_tensor(self, input_tensor) -> None:
        """Receive ``[s, b, h_s + h_t]`` (in ``boundary_dtype``) and hand each model its half, in its own dtype."""
        tensor = input_tensor[0] if isinstance(input_tensor, (list, tuple)) else input_tensor
        if tensor is None:  # first stage: inputs come from the embedding
            self.student.module.set_input_tensor(None)
            if self.teacher is not None:
                self.teacher.set_input_tensor(None)
            return
        student_part = tensor[..., : self.student_hidden]  # [s, b, h_s]
        self.student.module.set_input_tensor(student_part.to(self.student.config.params_dtype))
        if self.teacher is not None:
            teacher_part = tensor[..., self.student_hidden:].detach()  # [s, b, h_t]
            self.teacher.set_input_tensor(teacher_part.to(self.teacher.config.params_dtype))

    def _inputs(self, batch: Batch, attention: AttentionInput, cache: dict) -> dict:
        """The attention keyword arguments of one model for ``batch`` (already on the device)."""
        if attention is AttentionInput.CAUSAL or not batch.packed:
            return dict(attention_mask=None)
        if attention is AttentionInput.THD:
            params = PackedSeqParams(qkv_format="thd", cu_seqlens_q=batch.cu_seqlens, cu_seqlens_kv=batch.cu_seqlens,
                                     max_seqlen_q=batch.max_seqlen, max_seqlen_kv=batch.max_seqlen)
            return dict(attention_mask=None, packed_seq_params=params)
        if "mask" not in cache:  # both models may take it: build the [b, 1, s, s] mask once per micro-batch
            cache["mask"] = block_causal_mask(batch.position_ids)
        return dict(attention_mask=cache["mask"])

    def _run(self, model, batch: Batch, inputs: dict) -> torch.Tensor:
        if not self.is_last_stage:
            return model(batch.tokens, batch.position_ids, **inputs)  # [s, b, h]
        core = model.module if hasattr(model, "module") else model
        with final_hidden_states(core):
            hidden = model(batch.tokens, batch.position_ids, **inputs)  # [b, s, h] (transposed)
        return hidden.transpose(0, 1)  # [s, b, h] view

    def forward(self, batch: Batch):
        """Non-last stages: ``[s, b, h_s + h_t]`` in ``boundary_dtype``. Last stage: ``(student_hidden,
        teacher_hidden or None)`` in each model's dtype."""
        cache: dict = {}
        student_out = self._run(self.student, batch, self._inputs(batch, self.attention["student"], cache))
        teacher_out = None
        if self.teacher is not None:
            with torch.no_grad():
                teacher_out = self._run(self.teacher, batch, self._inputs(batch, self.attention["teacher"], cache))
        if self.is_last_stage:
            return student_out, teacher_out
        parts = [student_out] + ([teacher_out] if teacher_out is not None else [])
        return torch.cat([p.to(self.boundary_dtype) for p in parts], dim=-1)  # [s, b, h_s + h_t]
