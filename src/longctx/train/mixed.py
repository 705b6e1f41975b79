"""LongRoPE2's mixed context window training (Shang et al. 2025, arXiv 2502.20082, section 3.3, Fig. 5, App. B).

Every training sequence has the target length T and is one of two kinds:

- a *short window*: documents of at most ``short_max_length`` tokens (BOS and EOS included; the
  original context L by default), packed to T, trained with the original RoPE and a document mask
  (no attention across documents; positions restart at 0 in each);
- a *long window*: the longer documents, packed and cut to T, trained with the rescaled RoPE
  (full attention, or within documents when ``finetune.document_masking`` is on).

The model carries both RoPEs as LongRoPE factor sets (``longctx.rope.with_original_rope_below``);
at inference it picks one by sequence length. In training each micro-batch is of one kind, and
its RoPE is fixed explicitly - that of the length its documents have at inference (at most
``short_max_length`` for short windows, T for long ones) - rather than left to the rotary module,
which would pick by the longest position in the batch.

The order is seeded and a function of the sequence number only, so a resumed run reads the same
sequences: sequence k belongs to micro-batch group g = k // micro_batch_size, group g is short when
floor((g+1) f) > floor(g f) (exactly a fraction f of the groups), and each kind's sequences are its
pool's windows in a seeded order, epoch after epoch.
"""

from __future__ import annotations

import contextlib
import copy
import math

import numpy as np
import torch

from longctx.data import DataError, TokenFile
from longctx.train.packing import PackedBatch
from longctx.train.settings import TrainingError


def document_spans(data: TokenFile) -> np.ndarray:
    """[n, 2] stream offsets of each document with its BOS before and EOS after (``longctx.data``)."""
    bounds = np.asarray(data.bounds, dtype=np.int64).reshape(-1, 2)
    return np.stack([np.maximum(bounds[:, 0] - 1, 0), np.minimum(bounds[:, 1] + 1, len(data.tokens))], axis=1)


class DocumentPool:
    """Some documents of a token stream, concatenated in file order and cut into windows of ``seq_len``
    tokens (the remainder is dropped), visited in a seeded order per epoch."""

    def __init__(self, tokens: np.ndarray, spans: np.ndarray, seq_len: int, seed: int, salt: int):
        self.tokens, self.spans, self.seq_len, self.seed, self.salt = tokens, spans, seq_len, seed, salt
        lengths = spans[:, 1] - spans[:, 0] if len(spans) else np.zeros(0, dtype=np.int64)
        self.cum = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        self.n = int(self.cum[-1] // seq_len)
        self._epoch, self._order = None, None

    def window(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """(tokens [T], segment ids [T]) of the pool's ``index``-th window of the endless seeded stream."""
        epoch, i = divmod(index, self.n)
        if epoch != self._epoch:
            self._epoch, self._order = epoch, np.random.default_rng([self.seed, epoch, self.salt]).permutation(self.n)
        lo = int(self._order[i]) * self.seq_len
        hi = lo + self.seq_len
        doc = int(np.searchsorted(self.cum, lo, side="right")) - 1
        ids, segments, segment = [], [], 0
        while lo < hi:
            a, b = self.spans[doc]
            start = a + (lo - self.cum[doc])
            take = min(b - start, hi - lo)
            ids.append(np.asarray(self.tokens[start : start + take], dtype=np.int64))
            segments.append(np.full(take, segment, dtype=np.int64))
            lo += take
            doc += 1
            segment += 1
        return np.concatenate(ids), np.concatenate(segments)


class MixedSequences:
    """The endless seeded stream of short and long windows (see the module docstring)."""

    def __init__(self, long_pool: DocumentPool, short_pool: DocumentPool, short_fraction: float, group: int):
        self.long, self.short, self.fraction, self.group = long_pool, short_pool, float(short_fraction), int(group)

    @classmethod
    def from_token_files(cls, data: TokenFile, short_data: TokenFile | None, seq_len: int, seed: int,
                         short_max_length: int, short_fraction: float, group: int) -> "MixedSequences":
        """Long windows from ``data``'s documents longer than ``short_max_length``; short windows from
        ``short_data``'s (or ``data``'s) documents of at most that many tokens."""
        spans = document_spans(data)
        long_spans = spans[spans[:, 1] - spans[:, 0] > short_max_length]
        source = short_data if short_data is not None else data
        short_spans = document_spans(source)
        short_spans = short_spans[short_spans[:, 1] - short_spans[:, 0] <= short_max_length]
        out = cls(DocumentPool(data.tokens, long_spans, seq_len, seed, 0),
                  DocumentPool(source.tokens, short_spans, seq_len, seed, 1), short_fraction, group)
        for kind, pool, needed, where in (("long", out.long, short_fraction < 1, data.prefix),
                                          ("short", out.short, short_fraction > 0, source.prefix)):
            if needed and pool.n == 0:
                bound = "longer than" if kind == "long" else "of at most"
                raise DataError(
                    f"config key 'finetune.mixed_context': {where} has {int(pool.cum[-1])} tokens in documents {bound} "
                    f"{short_max_length} tokens, fewer than one {kind} window of {seq_len} (short_max_length, "
                    f"short_fraction, short_corpus)")
        return out

    def is_short(self, row: int) -> bool:
        g = row // self.group
        return math.floor((g + 1) * self.fraction) > math.floor(g * self.fraction)

    def _window(self, row: int) -> tuple[np.ndarray, np.ndarray, bool]:
        g, r = divmod(row, self.group)
        shorts_before = math.floor(g * self.fraction)
        short = self.is_short(row)
        index = (shorts_before if short else g - shorts_before) * self.group + r
        ids, segments = (self.short if short else self.long).window(index)
        return ids, segments, short

    def packed(self, position: int, size: int) -> PackedBatch:
        rows = [self._window(k) for k in range(position, position + size)]
        return PackedBatch(torch.from_numpy(np.stack([r[0] for r in rows])),
                           torch.from_numpy(np.stack([r[1] for r in rows])),
                           short=torch.tensor([r[2] for r in rows]))


# --- the RoPE of each kind of window -------------------------------------------------------------------


def _rotary_slot(model) -> tuple[torch.nn.Module, str]:
    """(parent module, attribute name) of the model's decoder-level rotary module."""
    found = [name for name, _ in model.named_modules() if name.endswith("rotary_emb")]
    if len(found) != 1:
        raise TrainingError(f"config key 'finetune.mixed_context.enabled': the model needs one rotary module to switch "
                            f"between the original and the rescaled RoPE, it has {len(found)}")
    parent, _, attr = found[0].rpartition(".")
    return (model.get_submodule(parent) if parent else model), attr


def rotaries_at(model, lengths: dict[str, int], device) -> dict[str, torch.nn.Module]:
    """For each name, a rotary module that rotates every sequence as ``model`` rotates one of that
    many tokens (the factor set it picks there; ``longctx.rope.rope_at_length``)."""
    from longctx.rope import rope_at_length

    params = model.config.rope_parameters
    if params.get("rope_type") not in ("longrope", "longctx_longrope"):
        raise TrainingError(f"config key 'finetune.mixed_context.enabled': the model's RoPE ({params.get('rope_type')}) "
                            f"has no short and long factor sets; mixed context window training is for longrope "
                            f"variants")
    parent, attr = _rotary_slot(model)
    original = getattr(parent, attr)
    out = {}
    for name, length in lengths.items():
        config = copy.deepcopy(model.config)
        config.rope_parameters = rope_at_length(params, int(length))
        out[name] = type(original)(config=config).to(device)
    return out


@contextlib.contextmanager
def rotary_as(model, rotary: torch.nn.Module | None):
    """Inside, ``model`` rotates with ``rotary`` (None: its own)."""
    if rotary is None:
        yield
        return
    parent, attr = _rotary_slot(model)
    own = getattr(parent, attr)
    setattr(parent, attr, rotary)
    try:
        yield
    finally:
        setattr(parent, attr, own)
