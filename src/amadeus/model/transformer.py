"""NoteTransformer (the Note Generator): a causal pre-norm decoder over notes, with RoPE and a KV cache.

Layout of one forward call: [prefix tokens (text, optional, first call only)] + [notes]. Attention is
causal over the whole sequence (prefix included) and never looks at padded positions (`prefix_mask`,
`notes_mask`: True = real token). A padded query only sees itself, so its (discarded) output is finite.

RoPE positions count real tokens only, per row: the first real prefix token is position 0, the notes
follow the real prefix tokens consecutively (no prefix: notes start at 0). So padding the prefix (left
or right) changes nothing, and RoPE has no table: `max_notes` is only a sanity bound.

Packed rows (`segments`, training and evaluation: several pieces laid end to end in one row, see
`amadeus.windows`) attend within their own piece only and restart their positions at each piece, so a
piece's outputs in a packed row are those of the piece alone (`segment_positions`, `segment_mask`).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from amadeus.model.config import ModelConfig
from amadeus.model.embedding import NoteEmbedding


def _cache_dtype(like: torch.Tensor) -> torch.dtype:
    """The dtype the attention's keys and values have: autocast's (e.g. bf16) when it is on for the
    residual stream's device, else the stream's own. `like` is the residual stream, which stays fp32
    under autocast while the qkv projection's output does not."""
    kind = like.device.type
    if torch.is_autocast_enabled(kind) and like.is_floating_point():
        return torch.get_autocast_dtype(kind)
    return like.dtype


class KVCache:
    """Keys and values of every layer, for token-by-token generation.

    Tensors are preallocated (`k`, `v`: [n_layers, B, heads, capacity, head_dim]) and grow by doubling;
    `valid` [B, capacity] marks real (non-padded) positions and `pos` [B] is the next RoPE position of
    each row. Rows can be dropped or reordered with `select` (finished sequences leave the batch).

    Static decoding (`freeze`, after the prompt went in): no more growth, and the index of the next
    position lives on the device (`t` [1]), so that a one-position step (`NoteTransformer.forward` with
    T = 1 on a frozen cache) is a fixed-shape function of device tensors, which torch.compile and CUDA
    graphs can capture once and replay. Such a step attends over the first `window` positions (a size
    the caller picks from a few buckets) with the validity mask, whatever the number filled.
    """

    def __init__(self, n_layers: int, batch_size: int, n_heads: int, head_dim: int, capacity: int = 256):
        self.n_layers, self.n_heads, self.head_dim = n_layers, n_heads, head_dim
        self.batch_size = batch_size
        self.initial_capacity = max(1, capacity)
        self.k: torch.Tensor | None = None  # allocated at the first write, in the compute dtype (_cache_dtype)
        self.v: torch.Tensor | None = None
        self.valid: torch.Tensor | None = None  # [B, capacity] bool
        self.pos: torch.Tensor | None = None  # [B] long
        self.length = 0  # filled positions (prefix included)
        self.n_prefix = 0  # prefix positions at the start of the cache
        self.padded = False  # some cached position is padding (then attention needs an explicit mask)
        self.t: torch.Tensor | None = None  # [1] long on the device once frozen: the next position's index
        self.window = 0  # frozen steps attend over positions [0, window) (0: the whole capacity)

    @property
    def capacity(self) -> int:
        return 0 if self.k is None else self.k.shape[3]

    @property
    def n_notes(self) -> int:
        return self.length - self.n_prefix

    def _reserve(self, extra: int, like: torch.Tensor) -> None:
        need = self.length + extra
        if self.k is None:
            cap = max(self.initial_capacity, need)
            shape = (self.n_layers, self.batch_size, self.n_heads, cap, self.head_dim)
            self.k = like.new_zeros(shape, dtype=_cache_dtype(like))
            self.v = like.new_zeros(shape, dtype=_cache_dtype(like))
            self.valid = torch.zeros(self.batch_size, cap, dtype=torch.bool, device=like.device)
            self.pos = torch.zeros(self.batch_size, dtype=torch.long, device=like.device)
        elif need > self.capacity:
            if self.frozen:
                raise ValueError(f"a frozen KV cache holds {self.capacity} positions, {need} asked for")
            grow = max(need, 2 * self.capacity) - self.capacity
            self.k = torch.cat([self.k, self.k.new_zeros(*self.k.shape[:3], grow, self.head_dim)], 3)
            self.v = torch.cat([self.v, self.v.new_zeros(*self.v.shape[:3], grow, self.head_dim)], 3)
            self.valid = torch.cat([self.valid, self.valid.new_zeros(self.batch_size, grow)], 1)

    def begin(self, valid: torch.Tensor, padded: bool, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Reserve room for L new positions (`valid` [B, L]); return their RoPE positions [B, L] and the
        key validity [B, length + L] (None when nothing cached or new is padding)."""
        L = valid.shape[1]
        self._reserve(L, like)
        self.valid[:, self.length : self.length + L] = valid
        self.padded = self.padded or padded
        positions = self.pos[:, None] + torch.cumsum(valid.long(), 1) - 1  # [B, L]
        key_valid = self.valid[:, : self.length + L] if self.padded else None
        return positions.clamp_min(0), key_valid

    @property
    def frozen(self) -> bool:
        return self.t is not None

    def freeze(self) -> None:
        """Fix the shapes from here on (static decoding): no growth, and the next position's index on the
        device, advanced by every frozen step without the host (`length` stops counting)."""
        if self.k is None:
            raise ValueError("freeze a KV cache after its first call (the prompt), which allocates it")
        self.t = torch.full((1,), self.length, dtype=torch.long, device=self.k.device)

    def step_mask(self) -> torch.Tensor:
        """A frozen step: mark position `t` real for every row; the attention mask [B, 1, 1, window]."""
        self.valid.index_fill_(1, self.t, True)
        return self.valid[:, None, None, : self.window or self.capacity]

    def step_end(self) -> None:
        """A frozen step is over: the next position, on the device."""
        self.t.add_(1)
        self.pos.add_(1)

    def write(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store the new keys/values [B, H, L, hd] of `layer`; return all of them [B, H, length + L, hd]
        (frozen: [B, H, window, hd], the mask telling which are real)."""
        if self.frozen:
            self.k[layer].index_copy_(2, self.t, k)
            self.v[layer].index_copy_(2, self.t, v)
            end = self.window or self.capacity
            return self.k[layer, :, :, :end], self.v[layer, :, :, :end]
        end = self.length + k.shape[2]
        self.k[layer, :, :, self.length : end] = k
        self.v[layer, :, :, self.length : end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]

    def end(self, valid: torch.Tensor, n_prefix: int) -> None:
        """Commit the L positions written by every layer."""
        self.length += valid.shape[1]
        self.n_prefix += n_prefix
        self.pos = self.pos + valid.long().sum(1)

    def select(self, index: torch.Tensor) -> "KVCache":
        """Keep (and reorder) batch rows `index` (LongTensor of row ids or BoolTensor [B]); in place."""
        if self.frozen:
            raise ValueError("a frozen KV cache keeps its rows (static decoding masks finished ones)")
        if index.dtype == torch.bool:
            index = index.nonzero().squeeze(1)
        if self.k is not None:
            self.k = self.k.index_select(1, index)
            self.v = self.v.index_select(1, index)
            self.valid = self.valid.index_select(0, index)
            self.pos = self.pos.index_select(0, index)
        self.batch_size = int(index.numel())
        return self


class TransformerOutput(NamedTuple):
    z: torch.Tensor  # [B, T, d] final-norm states of the note positions (prefix removed)
    mid: torch.Tensor  # [B, T, d] residual stream after layer cfg.mid_layer (for MLSDES)
    cache: KVCache | None


def residual_out(linear: nn.Linear) -> nn.Linear:
    """Mark a linear layer that writes into the residual stream (its init is scaled down)."""
    linear.residual_out = True
    return linear


class RMSNorm(nn.RMSNorm):
    """RMSNorm with a learned gain (torch's), eps 1e-6; the input is cast to the gain's dtype so that
    bf16 activations under autocast still take the fused kernel (and normalise in fp32)."""

    def __init__(self, width: int):
        super().__init__(width, eps=1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.to(self.weight.dtype))


class SwiGLU(nn.Module):
    """FFN: w2(silu(x W1) * x W3), dropout on the output."""

    def __init__(self, width: int, hidden: int, dropout: float):
        super().__init__()
        self.w13 = nn.Linear(width, 2 * hidden, bias=False)
        self.w2 = residual_out(nn.Linear(hidden, width, bias=False))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.w13(x).chunk(2, dim=-1)
        return self.drop(self.w2(F.silu(a) * b))


def rope_angles(positions: torch.Tensor, head_dim: int, base: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin [B, 1, L, head_dim/2] (float32) for integer positions [B, L]."""
    inv_freq = base ** (-torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float32) / head_dim)
    angles = positions.float()[..., None] * inv_freq  # [B, L, hd/2]
    return angles.cos()[:, None], angles.sin()[:, None]


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (x_i, x_{i+hd/2}) of x [B, H, L, hd] by the position angles (computed in float32)."""
    x1, x2 = x.float().chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).to(x.dtype)


def causal_mask(key_valid: torch.Tensor | None, start: int, L: int, device: torch.device) -> tuple[torch.Tensor | None, bool]:
    """Attention mask for L queries at absolute indices start..start+L-1 over start+L keys.

    Returns (mask, is_causal) for scaled_dot_product_attention: no mask at all when nothing is padded
    (is_causal for a fresh sequence, nothing for a single cached step), else a boolean mask
    [B, 1, L, start+L] (True = attend): causal, real keys only, and every query sees itself.
    """
    if key_valid is None:
        if start == 0:
            return None, True
        if L == 1:
            return None, False
    q_idx = torch.arange(start, start + L, device=device)[:, None]  # [L, 1]
    k_idx = torch.arange(start + L, device=device)[None, :]  # [1, Lk]
    allowed = k_idx <= q_idx  # [L, Lk]
    if key_valid is None:
        return allowed, False
    allowed = (allowed & key_valid[:, None, :]) | (k_idx == q_idx)  # [B, L, Lk]
    return allowed[:, None], False


def segment_positions(segments: torch.Tensor) -> torch.Tensor:
    """Position of every row inside its own segment: segments [B, T] (pieces numbered 1, 2, ... in order,
    0 = padding) -> [B, T] long (0 at each segment's first row)."""
    T = segments.shape[1]
    idx = torch.arange(T, device=segments.device).expand_as(segments)
    first = torch.ones_like(segments, dtype=torch.bool)
    first[:, 1:] = segments[:, 1:] != segments[:, :-1]
    start = torch.where(first, idx, torch.zeros_like(idx)).cummax(1).values  # [B, T]
    return idx - start


def segment_mask(segments: torch.Tensor) -> torch.Tensor:
    """Attention mask [B, 1, T, T] (True = attend) for packed rows: causal, within the query's own segment,
    real keys only, and every query sees itself (so a padding row's discarded output stays finite)."""
    T = segments.shape[1]
    same = segments[:, :, None] == segments[:, None, :]  # [B, T, T]
    causal = torch.ones(T, T, dtype=torch.bool, device=segments.device).tril()
    allowed = (same & causal & (segments[:, None, :] > 0)) | torch.eye(T, dtype=torch.bool, device=segments.device)
    return allowed[:, None]


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_heads = cfg.n_heads
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=False)
        self.proj = residual_out(nn.Linear(cfg.d_model, cfg.d_model, bias=False))
        self.dropout = cfg.dropout
        self.resid_drop = nn.Dropout(cfg.dropout)

    def forward(self, x, rope, mask, is_causal, cache: KVCache | None, layer: int) -> torch.Tensor:
        q, k, v = rearrange(self.qkv(x), "b l (three h e) -> three b h l e", three=3, h=self.n_heads)
        q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        if cache is not None:
            k, v = cache.write(layer, k, v)
        dropout = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal, dropout_p=dropout)
        return self.resid_drop(self.proj(rearrange(y, "b h l e -> b l (h e)")))


class Block(nn.Module):
    """Pre-norm decoder block: x + attn(norm(x)), then x + ffn(norm(x))."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.norm1 = RMSNorm(cfg.d_model)
        self.attn = CausalSelfAttention(cfg)
        self.norm2 = RMSNorm(cfg.d_model)
        self.ffn = SwiGLU(cfg.d_model, cfg.ffn_hidden, cfg.dropout)

    def forward(self, x, rope, mask, is_causal, cache, layer):
        x = x + self.attn(self.norm1(x), rope, mask, is_causal, cache, layer)
        return x + self.ffn(self.norm2(x))


def init_weights(module: nn.Module, n_layers: int) -> None:
    """GPT-2 / nanoGPT init: N(0, 0.02) for linear and embedding weights, zero biases, and the residual
    output projections (`residual_out`: attention out, FFN w2) with std 0.02 / sqrt(2 * n_layers)."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            std = 0.02 / math.sqrt(2 * n_layers) if getattr(m, "residual_out", False) else 0.02
            nn.init.normal_(m.weight, mean=0.0, std=std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, mean=0.0, std=0.02)


class NoteTransformer(nn.Module):
    """Causal decoder over notes: embed -> [prefix] + notes -> n_layers blocks -> final norm -> z.

    `tokens_per_note` (1: one step per note) and `max_rows` (the most note rows a sequence may hold) are
    what the sampler asks of a backbone; the flat decoder's backbone (`FlatBackbone`) differs in both."""

    tokens_per_note = 1

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        cfg.require_vocab()
        self.cfg = cfg
        self.max_rows = cfg.max_notes
        self.head_dim = cfg.d_model // cfg.n_heads
        self.embed = NoteEmbedding(cfg)
        self.prefix_proj = nn.Linear(cfg.prefix_dim, cfg.d_model) if cfg.prefix_dim > 0 else None
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.d_model)
        init_weights(self, cfg.n_layers)

    def new_cache(self, batch_size: int, capacity: int = 256) -> KVCache:
        """An empty KV cache for `batch_size` rows (grows past `capacity` by doubling)."""
        return KVCache(self.cfg.n_layers, batch_size, self.cfg.n_heads, self.head_dim, capacity)

    def _prefix(self, prefix, prefix_mask, B: int, cache: KVCache | None):
        if prefix is None:
            if prefix_mask is not None:
                raise ValueError("prefix_mask given without a prefix")
            return None
        if self.prefix_proj is None:
            raise ValueError("a prefix was given but ModelConfig.prefix_dim is 0 (model built without text)")
        if prefix.dim() != 3 or prefix.shape[0] != B or prefix.shape[2] != self.cfg.prefix_dim:
            raise ValueError(f"prefix must be [B={B}, P, {self.cfg.prefix_dim}], got {tuple(prefix.shape)}")
        if prefix_mask is not None and prefix_mask.shape != prefix.shape[:2]:
            raise ValueError(f"prefix_mask must be {tuple(prefix.shape[:2])}, got {tuple(prefix_mask.shape)}")
        if cache is not None and cache.length > 0:
            raise ValueError("the prefix goes with the first call on a KV cache, not with later steps")
        return self.prefix_proj(prefix.to(self.prefix_proj.weight.dtype))

    def forward(
        self,
        notes: torch.Tensor,
        prefix: torch.Tensor | None = None,
        prefix_mask: torch.Tensor | None = None,
        cache: KVCache | None = None,
        use_cache: bool = False,
        notes_mask: torch.Tensor | None = None,
        segments: torch.Tensor | None = None,
    ) -> TransformerOutput:
        """notes [B, T, K] -> TransformerOutput(z [B, T, d], mid [B, T, d], cache).

        prefix [B, P, prefix_dim] and prefix_mask [B, P] (True = real) only with the first call;
        notes_mask [B, T] marks padded notes (e.g. left-padded prompts) that nothing may attend to.
        segments [B, T] (packed rows: pieces numbered 1, 2, ..., 0 = padding; no prefix, no cache) keeps
        attention and positions inside each piece.
        With `cache` (or use_cache=True, which creates one) keys/values are kept for later calls such
        as `forward(notes[:, -1:], cache=cache)`.
        """
        if notes.dim() != 3:
            raise ValueError(f"notes must be [B, T, K], got shape {tuple(notes.shape)}")
        if cache is not None and cache.frozen:
            return self._frozen_step(notes, cache, prefix is not None or notes_mask is not None or segments is not None)
        B, T, _ = notes.shape
        if cache is None and use_cache:
            cache = self.new_cache(B)
        if cache is not None and cache.batch_size != B:
            raise ValueError(f"KV cache holds {cache.batch_size} rows but the notes have {B}")
        n_notes = T + (cache.n_notes if cache is not None else 0)
        if n_notes > self.cfg.max_notes:
            raise ValueError(f"{n_notes} notes exceed ModelConfig.max_notes={self.cfg.max_notes}")
        if notes_mask is not None and notes_mask.shape != (B, T):
            raise ValueError(f"notes_mask must be {(B, T)}, got {tuple(notes_mask.shape)}")
        if segments is not None:
            if segments.shape != (B, T):
                raise ValueError(f"segments must be {(B, T)}, got {tuple(segments.shape)}")
            if prefix is not None or cache is not None or use_cache:
                raise ValueError("packed rows (segments) take no text prefix and no KV cache")
            return self._packed(notes, segments)

        x = self.embed(notes)  # [B, T, d]
        p = self._prefix(prefix, prefix_mask, B, cache)
        P = 0 if p is None else p.shape[1]
        if p is not None:
            x = torch.cat([p.to(x.dtype), x], dim=1)  # [B, P + T, d]
        L = P + T
        padded = prefix_mask is not None or notes_mask is not None
        ones = torch.ones(B, L, dtype=torch.bool, device=x.device)
        valid = ones
        if padded:
            valid = torch.cat(
                [
                    prefix_mask.bool() if prefix_mask is not None else ones[:, :P],
                    notes_mask.bool() if notes_mask is not None else ones[:, P:],
                ],
                dim=1,
            )  # [B, L]

        start = 0
        if cache is not None:
            start = cache.length
            positions, key_valid = cache.begin(valid, padded, like=x)
        else:
            positions = (torch.cumsum(valid.long(), 1) - 1).clamp_min(0)  # [B, L]
            key_valid = valid if padded else None
        rope = rope_angles(positions, self.head_dim, self.cfg.rope_base)
        mask, is_causal = causal_mask(key_valid, start, L, x.device)

        x, mid = self._blocks(x, rope, mask, is_causal, cache)
        if cache is not None:
            cache.end(valid, P)
        z = self.norm(x)
        return TransformerOutput(z[:, P:], mid[:, P:], cache)

    def _blocks(self, x: torch.Tensor, rope, mask, is_causal: bool, cache: KVCache | None):
        """The n_layers blocks: (output, the residual stream after layer cfg.mid_layer, for MLSDES)."""
        mid = x
        for i, block in enumerate(self.blocks):
            x = block(x, rope, mask, is_causal, cache, i)
            if i + 1 == self.cfg.mid_layer:
                mid = x
        return x, mid

    def _packed(self, notes: torch.Tensor, segments: torch.Tensor) -> TransformerOutput:
        """Packed rows: every piece attends to itself only, with positions from its own first row."""
        x = self.embed(notes)  # [B, T, d]
        rope = rope_angles(segment_positions(segments), self.head_dim, self.cfg.rope_base)
        x, mid = self._blocks(x, rope, segment_mask(segments), False, None)
        return TransformerOutput(self.norm(x), mid, None)

    def _frozen_step(self, notes: torch.Tensor, cache: KVCache, extra: bool) -> TransformerOutput:
        """One real position per row [B, 1, K] through a frozen cache (static decoding): written at the
        device index `cache.t`, RoPE position `cache.pos`, attention over `cache.window` positions with
        the validity mask. No host value depends on the data, so the step can be captured and replayed."""
        B, T, _ = notes.shape
        if T != 1 or extra or cache.batch_size != B:
            raise ValueError(f"a frozen KV cache of {cache.batch_size} rows takes one position per row and no "
                             f"prefix or mask, got notes {tuple(notes.shape)}")
        # the embedding without its vocabulary check, which reads the device: the sampler writes vocabulary values
        x = self.embed.drop(self.embed.tables(notes).sum(-2))  # [B, 1, d]
        rope = rope_angles(cache.pos[:, None], self.head_dim, self.cfg.rope_base)
        x, mid = self._blocks(x, rope, cache.step_mask(), False, cache)  # mask [B, 1, 1, window]
        cache.step_end()
        return TransformerOutput(self.norm(x), mid, cache)
