"""Comparison models on the same NoteTransformer backbone (for the generation benchmark).

- FlatBaseline (REMI-like): one attribute per autoregressive step over one shared vocabulary (the K
  vocabularies concatenated with offsets): K backbone steps per note.
- NestedHead (NMT-like): one backbone step per note, then a 1-layer causal head decodes the
  attributes one after another (cross-attention to z): K head steps per note.
- ParallelHead: K independent linear heads on z: one step per note.

Common API: `loss(notes [B, T+1, K], mask [B, T+1], prefix=None, prefix_mask=None) -> (loss,
per_attribute [K])` (mean CE per attribute over the predicted rows 1..T; loss = their mean, i.e.
per-note NLL / K), `start(notes [B, T, K], prefix, prefix_mask) -> state` (fills a KV cache with the
prompt) and `generate_note(state, temperature, generator) -> [B, K]` (samples the next note and
appends it to the state).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from amadeus.model.config import ModelConfig
from amadeus.model.embedding import AttributeTables
from amadeus.model.head import SlotBlock
from amadeus.model.transformer import KVCache, NoteTransformer, RMSNorm, init_weights


@dataclass
class BaselineState:
    cache: KVCache
    z: torch.Tensor  # [B, d] backbone output at the last position


def sample(logits: torch.Tensor, temperature: float = 1.0, generator: torch.Generator | None = None) -> torch.Tensor:
    """One index per row of logits [B, V] (argmax when temperature <= 0)."""
    if temperature <= 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def note_loss(logits: list[torch.Tensor], targets: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean CE per attribute over valid notes -> (mean over attributes, per_attribute [K])."""
    ce = torch.stack(
        [F.cross_entropy(lg.float().flatten(0, -2), targets[..., k].flatten(), reduction="none") for k, lg in enumerate(logits)],
        dim=-1,
    )  # [N, K]
    w = valid.reshape(-1, 1).float()
    per_attribute = (ce * w).sum(0) / w.sum().clamp_min(1)
    return per_attribute.mean(), per_attribute


class _NoteBaseline(nn.Module):
    """One backbone step per note; subclasses say how a note is predicted from z."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.backbone = NoteTransformer(cfg)

    def note_logits(self, z: torch.Tensor, targets: torch.Tensor) -> list[torch.Tensor]:
        raise NotImplementedError

    def sample_note(self, z: torch.Tensor, temperature: float, generator) -> torch.Tensor:
        raise NotImplementedError

    def loss(self, notes, mask, prefix=None, prefix_mask=None) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.backbone(notes[:, :-1], prefix, prefix_mask).z  # [B, T, d]
        targets = notes[:, 1:]
        return note_loss(self.note_logits(z.flatten(0, 1), targets.flatten(0, 1)), targets.flatten(0, 1), mask[:, 1:])

    @torch.no_grad()
    def start(self, notes, prefix=None, prefix_mask=None) -> BaselineState:
        cache = self.backbone.new_cache(notes.shape[0])
        return BaselineState(cache, self.backbone(notes, prefix, prefix_mask, cache=cache).z[:, -1])

    @torch.no_grad()
    def generate_note(self, state: BaselineState, temperature: float = 1.0, generator=None) -> torch.Tensor:
        note = self.sample_note(state.z, temperature, generator)  # [B, K]
        state.z = self.backbone(note[:, None], cache=state.cache).z[:, -1]
        return note


class ParallelHead(_NoteBaseline):
    """K independent linear heads on z (all attributes at once, no dependency between them)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        self.out = nn.ModuleList(nn.Linear(cfg.d_model, v) for v in cfg.vocab_sizes)
        init_weights(self.out, 1)

    def note_logits(self, z, targets=None):
        return [head(z) for head in self.out]

    def sample_note(self, z, temperature, generator):
        return torch.stack([sample(lg, temperature, generator) for lg in self.note_logits(z)], dim=-1)


class NestedHead(_NoteBaseline):
    """A 1-layer causal transformer over the K attribute positions (input k: embedding of attribute
    k-1, a learned BOS for k=0), cross-attending to proj(z); K head steps per note when sampling."""

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        w = cfg.head_width
        self.proj = nn.Linear(cfg.d_model, w, bias=False)
        self.bos = nn.Parameter(torch.zeros(1, w))
        self.slot = nn.Parameter(torch.zeros(cfg.K, w))
        self.tables = AttributeTables(cfg.vocab_sizes, w)
        self.block = SlotBlock(w, cfg.head_heads, cfg.head_ffn_hidden, cfg.dropout, causal=True)
        self.norm = RMSNorm(w)
        self.out = nn.ModuleList(nn.Linear(w, v) for v in cfg.vocab_sizes)
        init_weights(nn.ModuleList([self.proj, self.tables, self.block, self.out]), 1)
        nn.init.normal_(self.bos, std=0.02)
        nn.init.normal_(self.slot, std=0.02)

    def note_logits(self, z, targets):
        """Teacher-forced: logits of attribute k see z and the true attributes < k. z [N, d], targets [N, K]."""
        emb = self.tables(targets)[:, :-1]  # [N, K-1, w]
        x = torch.cat([self.bos.expand(z.shape[0], 1, -1).to(emb.dtype), emb], dim=1) + self.slot  # [N, K, w]
        x = self.norm(self.block(x, self.proj(z)[:, None]))
        return [head(x[:, k]) for k, head in enumerate(self.out)]

    def sample_note(self, z, temperature, generator):
        note = torch.zeros(z.shape[0], self.cfg.K, dtype=torch.long, device=z.device)
        for k in range(self.cfg.K):  # position k only sees attributes < k (causal), so zeros after are ignored
            note[:, k] = sample(self.note_logits(z, note)[k], temperature, generator)
        return note


class FlatBaseline(nn.Module):
    """REMI-like: the note matrix flattened row-major into one token stream over a shared vocabulary;
    the attribute of each step is known from its position, so logits are restricted to its range."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        cfg.require_vocab()
        self.cfg, self.K = cfg, cfg.K
        total = sum(cfg.vocab_sizes)
        self.backbone = NoteTransformer(replace(cfg, vocab_sizes=(total,), max_notes=cfg.max_notes * cfg.K))
        self.out = nn.Linear(cfg.d_model, total, bias=False)
        init_weights(self.out, 1)
        sizes = torch.tensor(cfg.vocab_sizes)
        offsets = torch.cumsum(sizes, 0) - sizes
        idx = torch.arange(total)
        self.register_buffer("offsets", offsets, persistent=False)  # [K]
        self.register_buffer("allowed", (idx >= offsets[:, None]) & (idx < (offsets + sizes)[:, None]), persistent=False)  # [K, V]

    def flatten(self, notes: torch.Tensor) -> torch.Tensor:
        """notes [B, T, K] -> shared-vocabulary tokens [B, T*K, 1]."""
        return (notes + self.offsets).reshape(notes.shape[0], -1, 1)

    def _restrict(self, logits: torch.Tensor, attr: torch.Tensor | int) -> torch.Tensor:
        return logits.float().masked_fill(~self.allowed[attr], float("-inf"))

    def loss(self, notes, mask, prefix=None, prefix_mask=None) -> tuple[torch.Tensor, torch.Tensor]:
        flat = self.flatten(notes)  # [B, L, 1], L = (T+1) K
        L = flat.shape[1]
        z = self.backbone(flat[:, :-1], prefix, prefix_mask).z  # [B, L-1, d]
        j = torch.arange(1, L, device=flat.device)  # positions of the targets
        attr, row = j % self.K, j // self.K
        logits = self._restrict(self.out(z), attr)  # [B, L-1, V]
        ce = F.cross_entropy(logits.transpose(1, 2), flat[:, 1:, 0], reduction="none")  # [B, L-1]
        valid = (mask[:, row] & (row >= 1)).float()  # row 0 (SOS) is given, never predicted
        per_attribute = torch.zeros(self.K, device=ce.device).index_add_(0, attr, (ce * valid).sum(0))
        per_attribute = per_attribute / torch.zeros(self.K, device=ce.device).index_add_(0, attr, valid.sum(0)).clamp_min(1)
        return per_attribute.mean(), per_attribute

    @torch.no_grad()
    def start(self, notes, prefix=None, prefix_mask=None) -> BaselineState:
        cache = self.backbone.new_cache(notes.shape[0])
        return BaselineState(cache, self.backbone(self.flatten(notes), prefix, prefix_mask, cache=cache).z[:, -1])

    @torch.no_grad()
    def generate_note(self, state: BaselineState, temperature: float = 1.0, generator=None) -> torch.Tensor:
        cols = []
        for k in range(self.K):  # K backbone steps per note
            token = sample(self._restrict(self.out(state.z), k), temperature, generator)  # [B] shared index
            cols.append(token - self.offsets[k])
            state.z = self.backbone(token[:, None, None], cache=state.cache).z[:, -1]
        return torch.stack(cols, dim=-1)
