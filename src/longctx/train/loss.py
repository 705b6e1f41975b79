"""The training objective on packed batches: the model plus its chunked loss, as one module."""

from __future__ import annotations

import torch

from longctx.models.loss import causal_lm_nll
from longctx.train import attention as attn
from longctx.train import parallel
from longctx.train.mixed import rotary_as
from longctx.train.settings import TrainingError


class LossModule(torch.nn.Module):
    """The model plus its chunked loss, as one module for accelerate to wrap.

    Builds the targets, position ids and attention inputs of a packed batch (document masking,
    flash-attn varlen flattening, the sequence-parallel shard) and returns
    (loss to back-propagate, mean NLL of the batch for the log).

    Mixed context window training (``rotaries`` {"short", "long"}, ``longctx.train.mixed``): a
    micro-batch flagged ``short`` is document-masked and rotated by the short rotary (the original
    RoPE), any other by the long one."""

    def __init__(self, model, chunk_size: int, backend: str = "sdpa", document_masking: bool = False,
                 sp: parallel.SequenceParallel | None = None, sdpa_backends=None, rotaries: dict | None = None):
        super().__init__()
        self.model, self.chunk_size = model, chunk_size
        self.backend, self.document_masking = backend, document_masking
        self.sp = sp or parallel.SequenceParallel()
        self.sdpa_backends = sdpa_backends
        self.rotaries = dict(rotaries) if rotaries else None  # a plain dict: not parameters or buffers of ours

    def forward(self, input_ids, segments, position_ids=None, attention_mask=None, short=None, labels=None):
        B, T = input_ids.shape
        # supervised examples (longctx.train.supervised) score only their labelled tokens
        scored = input_ids if labels is None else labels
        targets = torch.cat([scored[:, 1:], input_ids.new_full((B, 1), -100)], dim=1)
        kwargs = {}
        masking, rotary = self.document_masking, None
        if short is not None and self.rotaries is not None:
            is_short = bool(short.all())
            if not is_short and bool(short.any()):
                raise TrainingError("a micro-batch mixes short and long context windows (longctx.train.mixed "
                                    "groups them by micro-batch)")
            masking = masking or is_short
            rotary = self.rotaries["short" if is_short else "long"]
        if masking:
            targets = attn.document_targets(targets, segments)
            position_ids = attn.document_positions(segments, position_ids)
            if self.backend == "flash_attention_2":
                segments = attn.row_segments(segments)
                input_ids, targets, position_ids, segments = attn.flatten_rows(input_ids, targets, position_ids,
                                                                              segments)
        else:
            if position_ids is None:
                position_ids = torch.arange(T, device=input_ids.device).expand(B, T)
            if attention_mask is not None and self.sp.degree == 1:
                kwargs["attention_mask"] = attention_mask  # randomized positions: not packed documents
        kwargs.update(attn.attention_inputs(self.backend, segments, torch.float32, masking,
                                            explicit_causal=self.sp.degree > 1))
        if self.sp.degree > 1:
            input_ids, position_ids, targets = (self.sp.shard(x) for x in (input_ids, position_ids, targets))
        with attn.sdpa_kernel_context(self.sdpa_backends), rotary_as(self.model, rotary):
            nll, count = causal_lm_nll(self.model, input_ids, position_ids=position_ids, chunk_size=self.chunk_size,
                                       targets=targets, **kwargs)
        if self.sp.degree == 1:
            count = max(count, 1)
            return nll / count, nll.detach() / count
        # the group's tokens are scored across its ranks; data-parallel averaging divides by every
        # rank, so each rank's share is scaled by the group size
        total = self.sp.sum(torch.tensor(float(count), device=nll.device)).clamp(min=1)
        return nll * self.sp.degree / total, self.sp.sum(nll) / total
