"""One pipeline stage holding both models: the trainable student (DDP) and the frozen teacher, side by side.

megatron-core's schedule sees a single model per stage. Between stages the activation carries both hidden states
concatenated along the hidden dimension, ``[s, b, h_student + h_teacher]``, and is split on receipt; the teacher's
half never requires grad, so its part of the returned gradient is zeros (sent, but cheap next to the teacher's
forward it saves). The last stage returns both models' final hidden states; the loss function turns them into
logits shards (or feeds them straight to the fused loss) so that neither model's forward materializes a
``[b, s, v/tp]`` transpose copy.
"""

from __future__ import annotations

import torch

from megatron.core.packed_seq_params import PackedSeqParams

from megatron_truncdistill.data.samples import Batch
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


class ColocatedStage(torch.nn.Module):
    """Student stage (DDP-wrapped) + teacher stage (frozen, or None for student-only training)."""

    def __init__(self, student_ddp, teacher, *, is_last_stage: bool, packed_thd: bool = False) -> None:
        """``packed_thd``: packed documents go to Transformer Engine as THD sequences (``cu_seqlens``) instead of
        a block-diagonal mask, which TE's fused attention does not take."""
        super().__init__()
        self.packed_thd = packed_thd
        self.student = student_ddp
        self.teacher = teacher
        self.is_last_stage = is_last_stage
        self.config = student_ddp.config  # the schedule reads grad-sync hooks and dtypes from here
        self.model_type = student_ddp.module.model_type  # and the encoder/decoder kind
        self.student_hidden = student_ddp.config.hidden_size
        if teacher is not None:
            teacher.eval()
            teacher.requires_grad_(False)

    def set_input_tensor(self, input_tensor) -> None:
        """Receive ``[s, b, h_s + h_t]`` from the previous stage and hand each model its half."""
        tensor = input_tensor[0] if isinstance(input_tensor, (list, tuple)) else input_tensor
        if tensor is None:  # first stage: inputs come from the embedding
            self.student.module.set_input_tensor(None)
            if self.teacher is not None:
                self.teacher.set_input_tensor(None)
            return
        student_part = tensor[..., : self.student_hidden]  # [s, b, h_s]
        self.student.module.set_input_tensor(student_part)
        if self.teacher is not None:
            teacher_part = tensor[..., self.student_hidden:].detach()  # [s, b, h_t]
            self.teacher.set_input_tensor(teacher_part.to(self.teacher.config.params_dtype))

    def _inputs(self, batch: Batch) -> dict:
        if self.packed_thd and batch.cu_seqlens is not None:
            cu = batch.cu_seqlens.to(batch.tokens.device)
            longest = int((cu[1:] - cu[:-1]).max())
            params = PackedSeqParams(qkv_format="thd", cu_seqlens_q=cu, cu_seqlens_kv=cu, max_seqlen_q=longest,
                                     max_seqlen_kv=longest)
            return dict(attention_mask=None, packed_seq_params=params)
        return dict(attention_mask=batch.attention_mask)

    def _run(self, model, batch: Batch) -> torch.Tensor:
        inputs = self._inputs(batch)
        if not self.is_last_stage:
            return model(batch.tokens, batch.position_ids, **inputs)  # [s, b, h]
        core = model.module if hasattr(model, "module") else model
        with final_hidden_states(core):
            hidden = model(batch.tokens, batch.position_ids, **inputs)  # [b, s, h] (transposed)
        return hidden.transpose(0, 1)  # [s, b, h] view

    def forward(self, batch: Batch):
        """Non-last stages: ``[s, b, h_s + h_t]``. Last stage: ``(student_hidden, teacher_hidden or None)``."""
        student_out = self._run(self.student, batch)
        teacher_out = None
        if self.teacher is not None:
            with torch.no_grad():
                teacher_out = self._run(self.teacher, batch)
        if self.is_last_stage:
            return student_out, teacher_out
        if teacher_out is None:
            return student_out
        return torch.cat([student_out, teacher_out.to(student_out.dtype)], dim=-1)  # [s, b, h_s + h_t]
