"""NoteEmbedding: a note (one row of K attribute indices) becomes one vector, the sum of K embeddings."""

from __future__ import annotations

import torch
from torch import nn

from amadeus.model.config import ModelConfig


class AttributeTables(nn.Module):
    """K embedding tables of one width stored as one table with offsets (one gather instead of K).

    `forward(tokens [..., K]) -> [..., K, width]` (one vector per attribute, not summed).
    """

    def __init__(self, vocab_sizes: tuple[int, ...], width: int):
        super().__init__()
        sizes = torch.tensor(vocab_sizes, dtype=torch.long)
        self.vocab_sizes = tuple(vocab_sizes)
        self.register_buffer("offsets", torch.cumsum(sizes, 0) - sizes, persistent=False)  # [K]
        self.register_buffer("sizes", sizes, persistent=False)  # [K]
        self.table = nn.Embedding(int(sizes.sum()), width)

    def check(self, tokens: torch.Tensor) -> None:
        """Clear error for indices outside an attribute's vocabulary (instead of an opaque index error)."""
        if tokens.shape[-1] != len(self.vocab_sizes):
            raise ValueError(f"notes have {tokens.shape[-1]} attributes, the model expects {len(self.vocab_sizes)}")
        if tokens.numel() == 0:
            return
        bad = (tokens < 0) | (tokens >= self.sizes)  # [..., K]
        if bool(bad.any()):
            k = int(bad.reshape(-1, bad.shape[-1]).any(0).nonzero()[0])
            col = tokens[..., k]
            raise ValueError(
                f"attribute {k} has indices in [{int(col.min())}, {int(col.max())}] "
                f"but its vocabulary size is {self.vocab_sizes[k]}"
            )

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.table(tokens + self.offsets)  # [..., K, width]


class NoteEmbedding(nn.Module):
    """n = sum_k E_k[x_k], then dropout. No position table: positions come from RoPE in attention."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        cfg.require_vocab()
        self.tables = AttributeTables(cfg.vocab_sizes, cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, notes: torch.Tensor) -> torch.Tensor:
        """notes [B, T, K] int -> [B, T, d]."""
        self.tables.check(notes)
        return self.drop(self.tables(notes).sum(-2))
