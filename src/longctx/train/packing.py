"""Packed training sequences: fixed-length windows of a token stream in a seeded order, with each
token's document (for document masking)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from longctx.data import DataError, TokenFile


@dataclass
class PackedBatch:
    input_ids: torch.Tensor  # [B, T]
    segments: torch.Tensor  # [B, T] document index within the row, from 0
    short: torch.Tensor | None = None  # [B] bool: short context windows (mixed context window training)
    labels: torch.Tensor | None = None  # [B, T] supervised examples: the tokens trained, -100 elsewhere


class PackedSequences:
    """Fixed-length windows of the token stream, visited in a seeded random order, epoch after epoch.

    ``doc_starts`` (sorted stream offsets where a document's BOS sits) give each token its document,
    for document masking; a window that starts inside a document begins a segment there."""

    def __init__(self, tokens: np.ndarray, seq_len: int, seed: int, doc_starts: np.ndarray | None = None):
        self.tokens, self.seq_len, self.seed = tokens, seq_len, seed
        self.doc_starts = np.asarray(doc_starts if doc_starts is not None else [0], dtype=np.int64)
        self.n = len(tokens) // seq_len
        if self.n == 0:
            raise DataError(f"training data has {len(tokens)} tokens, fewer than one sequence of {seq_len}")

    @classmethod
    def from_token_file(cls, data: TokenFile, seq_len: int, seed: int) -> "PackedSequences":
        # each document's BOS sits just before its own tokens (see longctx.data)
        starts = np.maximum(np.asarray(data.bounds)[:, 0] - 1, 0) if len(data.bounds) else None
        return cls(data.tokens, seq_len, seed, starts)

    def _order(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(self.n)

    def _starts(self, position: int, size: int) -> list[int]:
        out = []
        for k in range(position, position + size):
            epoch, i = divmod(k, self.n)
            out.append(int(self._order(epoch)[i]) * self.seq_len)
        return out

    def batch(self, position: int, size: int) -> torch.Tensor:
        """Sequences number position .. position+size-1 of the endless seeded stream."""
        starts = self._starts(position, size)
        return torch.from_numpy(np.stack([np.asarray(self.tokens[a : a + self.seq_len], dtype=np.int64)
                                          for a in starts]))

    def segments(self, position: int, size: int) -> torch.Tensor:
        """Each token's document within its sequence (0 for the first), for the same sequences."""
        rows = []
        for a in self._starts(position, size):
            doc = np.searchsorted(self.doc_starts, np.arange(a, a + self.seq_len), side="right")
            rows.append(doc - doc[0])
        return torch.from_numpy(np.stack(rows))

    def packed(self, position: int, size: int) -> PackedBatch:
        return PackedBatch(self.batch(position, size), self.segments(position, size))
