"""The comparison decoders on the NoteTransformer backbone, trained, scored and sampled like Amadeus.

A decoder is a (backbone, head) pair (`build_decoder`); `AmadeusModule(decoder=...)` trains any of them
with the same data, optimiser and logging, and `amadeus.sampling.generate` samples any of them through
the interface of `amadeus.model.note_decoder`:

- "amadeus": NoteTransformer + AttributeDiffusionHead (masked diffusion over the K slots; `head.py`).
- "flat" (REMI-like): the note matrix flattened row-major into one token stream over a shared vocabulary
  (the K vocabularies concatenated with offsets): K backbone steps per note (`FlatBackbone`,
  `FlatDecoder`).
- "nested" (NMT-like): one backbone step per note, then a small causal transformer over the K
  attribute positions (cross-attention to z) decodes the attributes in column order (`NestedDecoder`).
- "parallel": K independent linear heads on z: one step per note, attributes independent given z
  (`ParallelDecoder`).

The three are autoregressive over the attributes (`AutoregressiveDecoder`): `teacher_forced` gives the
logits of every attribute given the earlier rows and the attributes before it, whose cross-entropy is both
their training loss and their exact NLL (the chain rule in column order); the sampler calls
`attribute_logits(C, tokens [..., K], k) -> [..., V_k]` (attribute k given the attributes < k of `tokens`).
"""

from __future__ import annotations

from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import nn

from amadeus.model.config import ModelConfig
from amadeus.model.embedding import AttributeTables
from amadeus.model.head import AttributeDiffusionHead, SlotBlock
from amadeus.model.note_decoder import DecoderLoss, NoteDecoder
from amadeus.model.transformer import KVCache, NoteTransformer, RMSNorm, TransformerOutput, init_weights

DECODERS = ("amadeus", "flat", "nested", "parallel")


def _offsets(vocab_sizes: tuple[int, ...]) -> torch.Tensor:
    sizes = torch.tensor(vocab_sizes)
    return torch.cumsum(sizes, 0) - sizes


def cross_entropy(logits: list[torch.Tensor], targets: torch.Tensor) -> torch.Tensor:
    """-log p of every target: K logits [..., V_k], targets [..., K] -> [..., K] (float32)."""
    return torch.stack([F.cross_entropy(lg.float().flatten(0, -2), targets[..., k].flatten(), reduction="none")
                        for k, lg in enumerate(logits)], -1).reshape(targets.shape)


def exact_loss(ce: torch.Tensor, valid: torch.Tensor, weight: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """An autoregressive decoder's loss from its chain-rule terms ce [B, T, K]: (the mean over valid notes
    (weighted by `weight` [B, T] in training) of the NLL per note / K, i.e. per attribute slot like the
    diffusion loss; per-attribute means [K] over the valid notes = the NLL's terms in nats per note)."""
    w = valid.float() if weight is None else valid.float() * weight
    loss = (ce.sum(-1) * w).sum() / (w.sum().clamp_min(1e-8) * ce.shape[-1])
    v = valid.float()[..., None]
    per_attr = (ce * v).sum((0, 1)) / v.sum((0, 1)).clamp_min(1)
    return loss, per_attr


class AutoregressiveDecoder(NoteDecoder):
    """A decoder that factorises a note attribute by attribute in column order (flat, nested, parallel)."""

    autoregressive = True
    per_attribute_metric = "nll"  # the exact chain-rule term of each attribute, nats per note

    def teacher_forced(self, backbone: nn.Module, notes: torch.Tensor, prefix: torch.Tensor | None,
                       prefix_mask: torch.Tensor | None, segments: torch.Tensor | None = None
                       ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """(logits K x [B, T, V_k] of rows 1..T of notes [B, T+1, K], attribute k given the earlier rows and
        the attributes < k; mid [B, T, d], the backbone's MLSDES features, one per input row). segments
        [B, T+1]: packed rows (see `NoteDecoder.loss`)."""
        raise NotImplementedError

    def attribute_logits(self, C: torch.Tensor, tokens: torch.Tensor, k: int) -> torch.Tensor:
        """Logits [..., V_k] of attribute k given C and the attributes < k of tokens [..., K]."""
        raise NotImplementedError

    def context(self, z: torch.Tensor, prefix_states: torch.Tensor | None = None,
                prefix_mask: torch.Tensor | None = None) -> torch.Tensor:
        """z itself: the prefix is already in the backbone."""
        return z

    def loss(self, backbone: nn.Module, notes: torch.Tensor, valid: torch.Tensor,
             prefix: torch.Tensor | None = None, prefix_mask: torch.Tensor | None = None,
             weight: torch.Tensor | None = None, segments: torch.Tensor | None = None) -> DecoderLoss:
        logits, mid = self.teacher_forced(backbone, notes, prefix, prefix_mask, segments)
        targets = notes[:, 1:]
        loss, per_attribute = exact_loss(cross_entropy(logits, targets), valid, weight)
        return DecoderLoss(loss, per_attribute, logits, torch.ones_like(targets, dtype=torch.bool), mid)

    def exact_nll(self, backbone: nn.Module, notes: torch.Tensor, valid: torch.Tensor,
                  prefix: torch.Tensor | None = None, prefix_mask: torch.Tensor | None = None,
                  segments: torch.Tensor | None = None) -> torch.Tensor:
        logits, _ = self.teacher_forced(backbone, notes, prefix, prefix_mask, segments)
        return cross_entropy(logits, notes[:, 1:])[valid]


class FlatBackbone(NoteTransformer):
    """A NoteTransformer over the flattened token stream (one token per attribute, shared vocabulary).

    Takes note rows like the note backbone (`notes [B, T, K]`, `notes_mask [B, T]`) plus `partial [B, j]`,
    the first j attributes of one more row, and returns one output per token: z [B, T*K + j, d]. `z[:, -1]`
    is the latent that predicts the next token. `max_rows` is the note limit (`cfg.max_notes`).
    """

    def __init__(self, cfg: ModelConfig):
        cfg.require_vocab()
        super().__init__(replace(cfg, vocab_sizes=(sum(cfg.vocab_sizes),), max_notes=cfg.max_notes * cfg.K))
        self.K, self.max_rows, self.tokens_per_note = cfg.K, cfg.max_notes, cfg.K  # max_rows: notes, not tokens
        self.register_buffer("offsets", _offsets(cfg.vocab_sizes), persistent=False)  # [K]

    def flatten(self, notes: torch.Tensor, partial: torch.Tensor | None = None) -> torch.Tensor:
        """notes [B, T, K] (+ partial [B, j]) -> shared-vocabulary tokens [B, T*K + j, 1]."""
        flat = (notes + self.offsets).reshape(notes.shape[0], -1)
        if partial is not None:
            flat = torch.cat([flat, partial + self.offsets[: partial.shape[1]]], 1)
        return flat[..., None]

    def new_cache(self, batch_size: int, capacity: int = 256) -> KVCache:
        return super().new_cache(batch_size, capacity * self.K)

    def forward(self, notes: torch.Tensor, prefix: torch.Tensor | None = None, prefix_mask: torch.Tensor | None = None,
                cache: KVCache | None = None, use_cache: bool = False, notes_mask: torch.Tensor | None = None,
                partial: torch.Tensor | None = None, segments: torch.Tensor | None = None) -> TransformerOutput:
        """As NoteTransformer.forward, one token per attribute; `partial` continues the last row's piece."""
        if notes.dim() != 3 or notes.shape[-1] != self.K:
            raise ValueError(f"notes must be [B, T, {self.K}], got shape {tuple(notes.shape)}")
        j = 0 if partial is None else partial.shape[1]
        if notes_mask is not None:
            notes_mask = F.pad(notes_mask.repeat_interleave(self.K, 1), (0, j), value=True)
        if segments is not None:
            segments = torch.cat([segments.repeat_interleave(self.K, 1), segments[:, -1:].expand(-1, j)], 1)
        return super().forward(self.flatten(notes, partial), prefix, prefix_mask, cache, use_cache, notes_mask,
                               segments)

    def step(self, values: torch.Tensor, k: int, cache: KVCache) -> torch.Tensor:
        """Feed attribute k's values [B] as one token each through the cache; z [B, d] after it."""
        token = (values + self.offsets[k])[:, None, None]
        return NoteTransformer.forward(self, token, cache=cache).z[:, -1]


class FlatDecoder(AutoregressiveDecoder):
    """The flat decoder's output layer: shared-vocabulary logits restricted to the attribute's range."""

    name = "flat"

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        cfg.require_vocab()
        self.cfg = cfg
        self.out = nn.Linear(cfg.d_model, sum(cfg.vocab_sizes), bias=False)
        init_weights(self.out, 1)
        self.offsets = tuple(int(o) for o in _offsets(cfg.vocab_sizes))

    def attribute_logits(self, C: torch.Tensor, tokens: torch.Tensor, k: int) -> torch.Tensor:
        """Logits [..., V_k] of attribute k from the latent after attribute k - 1 (C)."""
        o = self.offsets[k]
        return self.out(C)[..., o: o + self.cfg.vocab_sizes[k]]

    def teacher_forced(self, backbone: nn.Module, notes: torch.Tensor, prefix: torch.Tensor | None,
                       prefix_mask: torch.Tensor | None, segments: torch.Tensor | None = None
                       ) -> tuple[list[torch.Tensor], torch.Tensor]:
        B, T, K = notes.shape[0], notes.shape[1] - 1, notes.shape[2]
        targets = notes[:, 1:]
        out = backbone(notes[:, :-1], prefix, prefix_mask, partial=notes[:, -1, :-1],
                       segments=None if segments is None else segments[:, :-1])  # z [B, (T+1)K - 1, d]
        z = out.z[:, K - 1:].reshape(B, T, K, -1)  # z[:, t, k] predicts attribute k of row t + 1
        logits = [self.attribute_logits(z[:, :, k], targets, k) for k in range(K)]
        mid = out.mid[:, K - 1:].reshape(B, T, K, -1)[:, :, 0]  # after each input row's last token
        return logits, mid


class ParallelDecoder(AutoregressiveDecoder):
    """K independent linear heads on z (all attributes at once, no dependency between them)."""

    name = "parallel"

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        cfg.require_vocab()
        self.cfg = cfg
        self.out = nn.ModuleList(nn.Linear(cfg.d_model, v) for v in cfg.vocab_sizes)
        init_weights(self.out, 1)

    def attribute_logits(self, C: torch.Tensor, tokens: torch.Tensor, k: int) -> torch.Tensor:
        return self.out[k](C)

    def teacher_forced(self, backbone: nn.Module, notes: torch.Tensor, prefix: torch.Tensor | None,
                       prefix_mask: torch.Tensor | None, segments: torch.Tensor | None = None
                       ) -> tuple[list[torch.Tensor], torch.Tensor]:
        out = backbone(notes[:, :-1], prefix, prefix_mask, segments=None if segments is None else segments[:, :-1])
        return [head(out.z) for head in self.out], out.mid


class NestedDecoder(AutoregressiveDecoder):
    """`head_layers` causal blocks over the K attribute positions (input k: embedding of attribute k-1,
    a learned BOS for k=0), cross-attending to proj(z); K head passes per note when sampling."""

    name = "nested"

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        cfg.require_vocab()
        self.cfg = cfg
        w = cfg.head_width
        self.proj = nn.Linear(cfg.d_model, w, bias=False)
        self.bos = nn.Parameter(torch.zeros(1, w))
        self.slot = nn.Parameter(torch.zeros(cfg.K, w))
        self.tables = AttributeTables(cfg.vocab_sizes, w)
        self.blocks = nn.ModuleList(SlotBlock(w, cfg.head_heads, cfg.head_ffn_hidden, cfg.dropout, causal=True)
                                    for _ in range(cfg.head_layers))
        self.norm = RMSNorm(w)
        self.out = nn.ModuleList(nn.Linear(w, v) for v in cfg.vocab_sizes)
        init_weights(nn.ModuleList([self.proj, self.tables, self.blocks, self.out]), cfg.head_layers)
        nn.init.normal_(self.bos, std=0.02)
        nn.init.normal_(self.slot, std=0.02)

    def note_logits(self, z: torch.Tensor, targets: torch.Tensor) -> list[torch.Tensor]:
        """Teacher-forced: logits of attribute k see z and the attributes < k. z [..., d], targets [..., K]."""
        lead = targets.shape[:-1]
        z, targets = z.reshape(-1, z.shape[-1]), targets.reshape(-1, targets.shape[-1])
        emb = self.tables(targets)[:, :-1]  # [N, K-1, w]
        x = torch.cat([self.bos.expand(z.shape[0], 1, -1).to(emb.dtype), emb], dim=1) + self.slot  # [N, K, w]
        mem = self.proj(z)[:, None]
        for block in self.blocks:
            x = block(x, mem)
        x = self.norm(x)
        return [head(x[:, k]).reshape(*lead, -1) for k, head in enumerate(self.out)]

    def attribute_logits(self, C: torch.Tensor, tokens: torch.Tensor, k: int) -> torch.Tensor:
        return self.note_logits(C, tokens)[k]

    def teacher_forced(self, backbone: nn.Module, notes: torch.Tensor, prefix: torch.Tensor | None,
                       prefix_mask: torch.Tensor | None, segments: torch.Tensor | None = None
                       ) -> tuple[list[torch.Tensor], torch.Tensor]:
        out = backbone(notes[:, :-1], prefix, prefix_mask, segments=None if segments is None else segments[:, :-1])
        return self.note_logits(out.z, notes[:, 1:]), out.mid


def build_decoder(cfg: ModelConfig, decoder: str = "amadeus") -> tuple[NoteTransformer, NoteDecoder]:
    """(backbone, head) of a decoder (one of DECODERS)."""
    if decoder not in DECODERS:
        raise ValueError(f"unknown decoder {decoder!r}; choose one of {', '.join(DECODERS)}")
    if decoder == "flat":
        return FlatBackbone(cfg), FlatDecoder(cfg)
    head = {"amadeus": AttributeDiffusionHead, "nested": NestedDecoder, "parallel": ParallelDecoder}[decoder]
    return NoteTransformer(cfg), head(cfg)
