"""Attention for training: which kernel runs, and the document mask of packed sequences.

Backends (``finetune.attention``), all through transformers' attention interface:

- ``flash_attention_2``: the flash-attn package (CUDA, bf16/fp16). Document masking uses its varlen
  kernel: the micro-batch is flattened into one row and ``cu_seq_lens`` mark every document start.
- ``sdpa``: ``torch.nn.functional.scaled_dot_product_attention``. Without a mask it runs causal with
  the fastest kernel PyTorch has (flash or cuDNN on Hopper; ``finetune.sdpa_backends`` sets the
  order). Document masking gives it a dense [B, 1, T, T] boolean mask: exact, but O(T^2) memory,
  for CPU and short sequences.
- ``flex_attention``: PyTorch FlexAttention with a block-sparse ``BlockMask`` (causal and same
  document), compiled; the document-masked path on a GPU without flash-attn. (No backward on CPU.)
- ``eager``: transformers' reference implementation (additive float mask).

``auto`` picks flash-attn 2 when it is installed and the device is CUDA, else FlexAttention on CUDA
when documents are masked, else SDPA.

A document is a run of equal segment ids in a packed row (``segments`` [B, T], from
``longctx.train.PackedSequences``). With masking on, a token attends only to earlier tokens of its
own document, and position ids restart at 0 at each document.
"""

from __future__ import annotations

import contextlib
import importlib.util

import torch

from longctx.models.kernels import AttentionError, sdpa_kernels  # noqa: F401  (AttentionError: this module's errors)

BACKENDS = ("auto", "flash_attention_2", "sdpa", "flex_attention", "eager")


def flash_attn_installed() -> bool:
    return importlib.util.find_spec("flash_attn") is not None


def flex_attention_available() -> bool:
    try:
        from torch.nn.attention.flex_attention import create_block_mask  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_backend(requested: str, device: torch.device, document_masking: bool) -> str:
    """The transformers attention implementation to use (``requested`` is ``finetune.attention``)."""
    if requested not in BACKENDS:
        raise AttentionError(f"config key 'finetune.attention': unknown backend {requested!r}; one of {BACKENDS}")
    device = torch.device(device)
    if requested == "auto":
        if device.type == "cuda" and flash_attn_installed():
            return "flash_attention_2"
        if device.type == "cuda" and document_masking and flex_attention_available():
            return "flex_attention"
        return "sdpa"
    if requested == "flash_attention_2":
        if not flash_attn_installed():
            raise AttentionError("config key 'finetune.attention': flash_attention_2 asked for, but the flash-attn "
                                 "package is not installed (pip install flash-attn, or use sdpa)")
        if device.type != "cuda":
            raise AttentionError("config key 'finetune.attention': flash_attention_2 needs a CUDA device")
    if requested == "flex_attention" and not flex_attention_available():
        raise AttentionError("config key 'finetune.attention': this PyTorch has no FlexAttention")
    return requested


def sdpa_kernel_context(kernels) -> contextlib.AbstractContextManager:
    """SDPA kernels in priority order (``finetune.sdpa_backends``); None = PyTorch's own choice."""
    return sdpa_kernels(kernels, "finetune.sdpa_backends")


# --- packed documents -------------------------------------------------------------------------


def segment_starts(segments: torch.Tensor) -> torch.Tensor:
    """[B, T] bool: true where a document begins (the first token of every row counts)."""
    starts = torch.ones_like(segments, dtype=torch.bool)
    starts[:, 1:] = segments[:, 1:] != segments[:, :-1]
    return starts


def document_positions(segments: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
    """Position ids restarting at 0 at every document start.

    ``positions`` (e.g. Giraffe's randomized positions) are shifted so each document starts at 0;
    by default positions are 0, 1, 2, ... within each document."""
    B, T = segments.shape
    if positions is None:
        positions = torch.arange(T, device=segments.device).expand(B, T)
    index = torch.arange(T, device=segments.device).expand(B, T)
    # index of each token's document start: running max of the start indices
    start_index = torch.where(segment_starts(segments), index, torch.zeros_like(index)).cummax(dim=1).values
    return positions - positions.gather(1, start_index)


def document_targets(targets: torch.Tensor, segments: torch.Tensor) -> torch.Tensor:
    """Next-token targets with the step from one document into the next left out (-100).

    ``targets[:, t]`` is the token predicted at position t (input t+1)."""
    out = targets.clone()
    crosses = torch.zeros_like(segments, dtype=torch.bool)
    crosses[:, :-1] = segments[:, 1:] != segments[:, :-1]
    out[crosses] = -100
    return out


def document_mask_function(segments: torch.Tensor):
    """FlexAttention ``mask_mod``: causal and same document."""

    def mask_mod(b, h, q_idx, kv_idx):
        return (q_idx >= kv_idx) & (segments[b, q_idx] == segments[b, kv_idx])

    return mask_mod


def dense_document_mask(segments: torch.Tensor) -> torch.Tensor:
    """[B, 1, T, T] bool, true where attention is allowed (causal and same document)."""
    T = segments.shape[1]
    causal = torch.ones(T, T, dtype=torch.bool, device=segments.device).tril()
    same = segments[:, :, None] == segments[:, None, :]
    return (same & causal)[:, None]


def causal_block_mask(segments: torch.Tensor | None, batch: int, length: int, device):
    from torch.nn.attention.flex_attention import create_block_mask

    if segments is None:
        def mask_mod(b, h, q_idx, kv_idx):
            return q_idx >= kv_idx
    else:
        mask_mod = document_mask_function(segments)
    # compiled on CUDA: the mask is then built block by block, never as a dense [B, T, T] tensor
    return create_block_mask(mask_mod, batch, None, length, length, device=str(device),
                             _compile=torch.device(device).type == "cuda")


def attention_inputs(backend: str, segments: torch.Tensor, dtype: torch.dtype, document_masking: bool,
                     explicit_causal: bool = False) -> dict:
    """Forward kwargs that make attention causal (within documents, when masking), for one backend.

    ``segments`` [B, T] are the rows' segment ids (only their shape matters without masking).
    Without masking nothing is passed - transformers builds its own causal mask - unless
    ``explicit_causal`` (the sequence-parallel wrapper, for which transformers builds none): then a
    causal ``BlockMask`` for flex and a dense mask for eager; sdpa and flash-attn run causal by flag.
    For ``flash_attention_2`` with masking the batch must be flattened to one row (``flatten_rows``).
    """
    B, T = segments.shape
    if not document_masking:
        if not explicit_causal or backend in ("sdpa", "flash_attention_2"):
            return {}
        if backend == "flex_attention":
            return {"attention_mask": causal_block_mask(None, B, T, segments.device)}
        causal = torch.ones(T, T, dtype=torch.bool, device=segments.device).tril()
        return {"attention_mask": _additive(causal.expand(B, 1, T, T), dtype)}
    if backend == "flash_attention_2":
        if B != 1:
            raise AttentionError("flash-attn varlen needs the micro-batch flattened to one row")
        starts = segment_starts(segments)[0].nonzero().flatten()
        cu = torch.cat([starts, torch.tensor([T], device=starts.device)]).to(torch.int32)
        longest = int((cu[1:] - cu[:-1]).max())
        return {"cu_seq_lens_q": cu, "cu_seq_lens_k": cu, "max_length_q": longest, "max_length_k": longest}
    if backend == "flex_attention":
        return {"attention_mask": causal_block_mask(segments, B, T, segments.device)}
    dense = dense_document_mask(segments)
    return {"attention_mask": _additive(dense, dtype) if backend == "eager" else dense}


def _additive(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The eager backend's mask: 0 where allowed, the dtype's minimum elsewhere."""
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(~allowed, torch.finfo(dtype).min)


def flatten_rows(*tensors: torch.Tensor) -> list[torch.Tensor]:
    """[B, T] -> [1, B*T] each (the varlen layout: one row, documents marked by cu_seq_lens)."""
    return [t.reshape(1, -1) for t in tensors]


def row_segments(segments: torch.Tensor) -> torch.Tensor:
    """Segment ids made distinct across rows, so flattening rows never joins two documents."""
    B, T = segments.shape
    return segments + torch.arange(B, device=segments.device)[:, None] * (int(segments.max()) + 1)
