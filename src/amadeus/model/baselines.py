"""The comparison decoders on the NoteTransformer backbone, trainable and sampled like Amadeus.

A decoder is a (backbone, head) pair (`build_decoder`); `AmadeusModule(decoder=...)` trains any of them
with the same data, optimiser and logging, and `amadeus.sampling.generate` samples any of them:

- "amadeus": NoteTransformer + AttributeDiffusionHead (masked diffusion over the K slots; `head.py`).
- "flat" (REMI-like): the note matrix flattened row-major into one token stream over a shared vocabulary
  (the K vocabularies concatenated with offsets): K backbone steps per note (`FlatBackbone`,
  `FlatDecoder`).
- "nested" (NMT-like): one backbone step per note, then a small causal transformer over the K
  attribute positions (cross-attention to z) decodes the attributes in column order (`NestedDecoder`).
- "parallel": K independent linear heads on z: one step per note, attributes independent given z
  (`ParallelDecoder`).

The autoregressive heads share one interface: `context(z, prefix_states, prefix_mask) -> C` (z itself)
and `attribute_logits(C, tokens [..., K], k) -> [..., V_k]`, the logits of attribute k given the
attributes < k of `tokens` (later columns are ignored); `decoder_ce` gives the exact per-attribute
cross-entropy of the chain rule in column order (their NLL).

Also here, for the speed benchmark (`benchmarks/generate.py`): `FlatBaseline`, `NestedHead`,
`ParallelHead`, self-contained models with `loss(notes, mask) -> (loss, per_attribute [K])`,
`start(notes) -> state` and `generate_note(state, temperature, generator) -> [B, K]` (no grammar).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from amadeus.model.config import ModelConfig
from amadeus.model.embedding import AttributeTables
from amadeus.model.head import AttributeDiffusionHead, SlotBlock
from amadeus.model.transformer import KVCache, NoteTransformer, RMSNorm, TransformerOutput, init_weights

DECODERS = ("amadeus", "flat", "nested", "parallel")
AUTOREGRESSIVE = ("flat", "nested", "parallel")


def _offsets(vocab_sizes: tuple[int, ...]) -> torch.Tensor:
    sizes = torch.tensor(vocab_sizes)
    return torch.cumsum(sizes, 0) - sizes


class FlatBackbone(NoteTransformer):
    """A NoteTransformer over the flattened token stream (one token per attribute, shared vocabulary).

    Takes note rows like the note backbone (`notes [B, T, K]`, `notes_mask [B, T]`) plus `partial [B, j]`,
    the first j attributes of one more row, and returns one output per token: z [B, T*K + j, d]. `z[:, -1]`
    is the latent that predicts the next token. `max_rows` is the note limit (`cfg.max_notes`).
    """

    def __init__(self, cfg: ModelConfig):
        cfg.require_vocab()
        super().__init__(replace(cfg, vocab_sizes=(sum(cfg.vocab_sizes),), max_notes=cfg.max_notes * cfg.K))
        self.K, self.max_rows = cfg.K, cfg.max_notes
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
                partial: torch.Tensor | None = None) -> TransformerOutput:
        if notes.dim() != 3 or notes.shape[-1] != self.K:
            raise ValueError(f"notes must be [B, T, {self.K}], got shape {tuple(notes.shape)}")
        if notes_mask is not None:
            notes_mask = notes_mask.repeat_interleave(self.K, 1)
            if partial is not None:
                notes_mask = F.pad(notes_mask, (0, partial.shape[1]), value=True)
        return super().forward(self.flatten(notes, partial), prefix, prefix_mask, cache, use_cache, notes_mask)

    def step(self, values: torch.Tensor, k: int, cache: KVCache) -> torch.Tensor:
        """Feed attribute k's values [B] as one token each through the cache; z [B, d] after it."""
        token = (values + self.offsets[k])[:, None, None]
        return NoteTransformer.forward(self, token, cache=cache).z[:, -1]


class FlatDecoder(nn.Module):
    """The flat decoder's output layer: shared-vocabulary logits restricted to the attribute's range."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        cfg.require_vocab()
        self.cfg = cfg
        self.out = nn.Linear(cfg.d_model, sum(cfg.vocab_sizes), bias=False)
        init_weights(self.out, 1)
        self.offsets = tuple(int(o) for o in _offsets(cfg.vocab_sizes))

    def context(self, z: torch.Tensor, prefix_states=None, prefix_mask=None) -> torch.Tensor:
        """The latent after the last fed token (the prefix is already in the backbone)."""
        return z

    def attribute_logits(self, C: torch.Tensor, tokens: torch.Tensor, k: int) -> torch.Tensor:
        """Logits [..., V_k] of attribute k from the latent after attribute k - 1 (C)."""
        o = self.offsets[k]
        return self.out(C)[..., o: o + self.cfg.vocab_sizes[k]]


class ParallelDecoder(nn.Module):
    """K independent linear heads on z (all attributes at once, no dependency between them)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        cfg.require_vocab()
        self.cfg = cfg
        self.out = nn.ModuleList(nn.Linear(cfg.d_model, v) for v in cfg.vocab_sizes)
        init_weights(self.out, 1)

    def context(self, z: torch.Tensor, prefix_states=None, prefix_mask=None) -> torch.Tensor:
        return z

    def note_logits(self, z: torch.Tensor, targets: torch.Tensor | None = None) -> list[torch.Tensor]:
        return [head(z) for head in self.out]

    def attribute_logits(self, C: torch.Tensor, tokens: torch.Tensor, k: int) -> torch.Tensor:
        return self.out[k](C)


class NestedDecoder(nn.Module):
    """`head_layers` causal blocks over the K attribute positions (input k: embedding of attribute k-1,
    a learned BOS for k=0), cross-attending to proj(z); K head passes per note when sampling."""

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

    def context(self, z: torch.Tensor, prefix_states=None, prefix_mask=None) -> torch.Tensor:
        return z

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


def build_decoder(cfg: ModelConfig, decoder: str = "amadeus") -> tuple[nn.Module, nn.Module]:
    """(backbone, head) of a decoder (one of DECODERS)."""
    if decoder not in DECODERS:
        raise ValueError(f"unknown decoder {decoder!r}; choose one of {', '.join(DECODERS)}")
    if decoder == "flat":
        return FlatBackbone(cfg), FlatDecoder(cfg)
    head = {"amadeus": AttributeDiffusionHead, "nested": NestedDecoder, "parallel": ParallelDecoder}[decoder]
    return NoteTransformer(cfg), head(cfg)


def cross_entropy(logits: list[torch.Tensor], targets: torch.Tensor) -> torch.Tensor:
    """-log p of every target: K logits [..., V_k], targets [..., K] -> [..., K] (float32)."""
    return torch.stack([F.cross_entropy(lg.float().flatten(0, -2), targets[..., k].flatten(), reduction="none")
                        for k, lg in enumerate(logits)], -1).reshape(targets.shape)


def decoder_ce(backbone: nn.Module, head: nn.Module, notes: torch.Tensor, prefix: torch.Tensor | None = None,
               prefix_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
    """Exact chain-rule terms of an autoregressive decoder on rows 1..T of notes [B, T+1, K]:
    (ce [B, T, K] = -log p(attribute k | earlier rows, attributes < k), logits K x [B, T, V_k],
    mid [B, T, d] (the backbone's MLSDES features, one per input row)). ce summed over k is the NLL per note."""
    inputs, targets = notes[:, :-1], notes[:, 1:]
    B, T, K = targets.shape
    if isinstance(head, FlatDecoder):
        out = backbone(inputs, prefix, prefix_mask, partial=notes[:, -1, :-1])  # z [B, (T+1)K - 1, d]
        z = out.z[:, K - 1:].reshape(B, T, K, -1)  # z[:, t, k] predicts attribute k of row t + 1
        logits = [head.attribute_logits(z[:, :, k], targets, k) for k in range(K)]
        mid = out.mid[:, K - 1:].reshape(B, T, K, -1)[:, :, 0]  # after each input row's last token
    else:
        out = backbone(inputs, prefix, prefix_mask)
        logits, mid = head.note_logits(out.z, targets), out.mid
    return cross_entropy(logits, targets), logits, mid


# ----------------------------------------------------------------------------------------------
# self-contained models for the speed benchmark


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


def note_loss(ce: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean CE per attribute over valid notes (ce [..., K], valid [...]) -> (their mean, per_attribute [K])."""
    w = valid.reshape(-1, 1).float()
    per_attribute = (ce.reshape(-1, ce.shape[-1]) * w).sum(0) / w.sum().clamp_min(1)
    return per_attribute.mean(), per_attribute


class _Baseline(nn.Module):
    """A decoder's backbone and head with a loss and a plain (grammar-free) note sampler."""

    decoder = ""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.backbone, self.head = build_decoder(cfg, self.decoder)

    def loss(self, notes, mask, prefix=None, prefix_mask=None) -> tuple[torch.Tensor, torch.Tensor]:
        ce, _, _ = decoder_ce(self.backbone, self.head, notes, prefix, prefix_mask)
        return note_loss(ce, mask[:, 1:] & mask[:, :-1])

    @torch.no_grad()
    def start(self, notes, prefix=None, prefix_mask=None) -> BaselineState:
        cache = self.backbone.new_cache(notes.shape[0])
        return BaselineState(cache, self.backbone(notes, prefix, prefix_mask, cache=cache).z[:, -1])

    @torch.no_grad()
    def generate_note(self, state: BaselineState, temperature: float = 1.0, generator=None) -> torch.Tensor:
        note = torch.zeros(state.z.shape[0], self.cfg.K, dtype=torch.long, device=state.z.device)
        C = state.z
        for k in range(self.cfg.K):
            note[:, k] = sample(self.head.attribute_logits(C, note, k), temperature, generator)
            if self.decoder == "flat":  # K backbone steps per note
                C = state.z = self.backbone.step(note[:, k], k, state.cache)
        if self.decoder != "flat":
            state.z = self.backbone(note[:, None], cache=state.cache).z[:, -1]
        return note


class FlatBaseline(_Baseline):
    decoder = "flat"

    def flatten(self, notes: torch.Tensor) -> torch.Tensor:
        return self.backbone.flatten(notes)


class NestedHead(_Baseline):
    decoder = "nested"


class ParallelHead(_Baseline):
    decoder = "parallel"
