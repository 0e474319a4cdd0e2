"""AttributeDiffusionHead (the Note Decoder): predicts the K attributes of the next note from z.

Per note, at width `head_width` (cheaper than d_model):
  slots  = proj(z) + slot embeddings                                         [N, K, w]
  CIEM   = one block: self-attention among the K slots, cross-attention to the conditioning context
           [proj(z), projected prefix tokens (masked), a learned null token], FFN  -> C [N, K, w]
           (without CIEM, C = slots). C is computed once per note (`context`) and reused at every
           denoising step.
  denoiser = head_layers pre-norm blocks over the slots: input E'_k[y_k] for revealed slots or a
           learned [MASK] embedding, + slot embeddings; bidirectional self-attention over slots,
           cross-attention to C, FFN; then one linear output head per attribute (`logits`).
Notes are the batch: attention runs over K slots, batched over notes by scaled_dot_product_attention.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from amadeus.model.config import ModelConfig
from amadeus.model.diffusion import chain_rule_nll, corrupt, diffusion_elbo_nll, diffusion_loss
from amadeus.model.embedding import AttributeTables
from amadeus.model.note_decoder import DecoderLoss, NoteDecoder
from amadeus.model.transformer import RMSNorm, SwiGLU, init_weights, residual_out


class SlotAttention(nn.Module):
    """Multi-head attention from slots x [N, K, w] to a memory [N, M, w] (x itself when None)."""

    def __init__(self, width: int, heads: int, dropout: float, causal: bool = False):
        super().__init__()
        self.heads, self.causal, self.dropout = heads, causal, dropout
        self.q = nn.Linear(width, width, bias=False)
        self.kv = nn.Linear(width, 2 * width, bias=False)
        self.proj = residual_out(nn.Linear(width, width, bias=False))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, memory: torch.Tensor | None = None) -> torch.Tensor:
        memory = x if memory is None else memory
        q = rearrange(self.q(x), "n k (h e) -> n h k e", h=self.heads)
        k, v = rearrange(self.kv(memory), "n m (two h e) -> two n h m e", two=2, h=self.heads)
        y = F.scaled_dot_product_attention(
            q, k, v, is_causal=self.causal, dropout_p=self.dropout if self.training else 0.0
        )
        return self.drop(self.proj(rearrange(y, "n h k e -> n k (h e)")))


class SlotBlock(nn.Module):
    """Pre-norm block over slots: self-attention, cross-attention to a memory, SwiGLU FFN."""

    def __init__(self, width: int, heads: int, ffn_hidden: int, dropout: float, causal: bool = False):
        super().__init__()
        self.norm1, self.norm2, self.norm_mem, self.norm3 = (RMSNorm(width) for _ in range(4))
        self.self_attn = SlotAttention(width, heads, dropout, causal=causal)
        self.cross_attn = SlotAttention(width, heads, dropout)
        self.ffn = SwiGLU(width, ffn_hidden, dropout)

    def forward(self, x: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        """x [N, K, w], memory [N, M, w] -> [N, K, w]."""
        x = x + self.self_attn(self.norm1(x))
        x = x + self.cross_attn(self.norm2(x), self.norm_mem(memory))
        return x + self.ffn(self.norm3(x))


class ContextAttention(nn.Module):
    """Slots of each note attend to that note's own token and to the tokens shared by its sequence.

    x [B, T, K, w] (queries), own [B, T, w] (one key per note), shared [B, S, w] with shared_mask
    [B, S] (True = real; one key set per sequence, never copied per note). The softmax runs over
    [own, shared] jointly, so this is exact attention over the concatenated context.
    """

    def __init__(self, width: int, heads: int, dropout: float):
        super().__init__()
        self.heads, self.scale = heads, (width // heads) ** -0.5
        self.q = nn.Linear(width, width, bias=False)
        self.kv = nn.Linear(width, 2 * width, bias=False)
        self.proj = residual_out(nn.Linear(width, width, bias=False))
        self.attn_drop = nn.Dropout(dropout)
        self.drop = nn.Dropout(dropout)

    def forward(self, x, own, shared, shared_mask=None) -> torch.Tensor:
        T = x.shape[1]
        q = rearrange(self.q(x), "b t k (h e) -> b h t k e", h=self.heads)
        k_own, v_own = rearrange(self.kv(own), "b t (two h e) -> two b h t e", two=2, h=self.heads)
        k_sh, v_sh = rearrange(self.kv(shared), "b s (two h e) -> two b h s e", two=2, h=self.heads)
        s_own = torch.einsum("bhtke,bhte->bhtk", q, k_own)[..., None]  # [B, H, T, K, 1]
        s_sh = torch.einsum("bhtke,bhse->bhtks", q, k_sh)  # [B, H, T, K, S]
        scores = torch.cat([s_own, s_sh], dim=-1).float() * self.scale
        if shared_mask is not None:
            keep = F.pad(shared_mask.bool(), (1, 0), value=True)  # own token always visible
            scores = scores.masked_fill(~keep[:, None, None, None, :], float("-inf"))
        w = self.attn_drop(scores.softmax(-1).to(q.dtype))
        y = w[..., :1] * v_own[:, :, :, None, :] + torch.einsum("bhtks,bhse->bhtke", w[..., 1:], v_sh)
        y = rearrange(y, "b h t k e -> b t k (h e)", t=T)
        return self.drop(self.proj(y))


class CIEM(nn.Module):
    """Conditional Information Enhancement Module: one block that enriches the K slot copies of z with
    the conditioning context [proj(z), prefix tokens, learned null token] before denoising."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        w = cfg.head_width
        self.null = nn.Parameter(torch.zeros(w))
        self.prefix_proj = nn.Linear(cfg.prefix_dim, w) if cfg.prefix_dim > 0 else None
        self.norm1, self.norm2, self.norm_ctx, self.norm3 = (RMSNorm(w) for _ in range(4))
        self.self_attn = SlotAttention(w, cfg.head_heads, cfg.dropout)
        self.cross_attn = ContextAttention(w, cfg.head_heads, cfg.dropout)
        self.ffn = SwiGLU(w, cfg.head_ffn_hidden, cfg.dropout)

    def forward(self, slots, zp, prefix=None, prefix_mask=None) -> torch.Tensor:
        """slots [B, T, K, w], zp [B, T, w], prefix [B, P, prefix_dim] -> C [B, T, K, w]."""
        B, T = slots.shape[:2]
        shared = self.null.expand(B, 1, -1)  # [B, 1, w]
        mask = None
        if prefix is not None:
            pp = self.prefix_proj(prefix.to(self.prefix_proj.weight.dtype)).to(self.null.dtype)
            shared = torch.cat([pp, shared], dim=1)  # [B, P + 1, w]
            if prefix_mask is not None:
                mask = F.pad(prefix_mask.bool(), (0, 1), value=True)  # the null token is always real
        x = slots
        x = x + rearrange(self.self_attn(rearrange(self.norm1(x), "b t k w -> (b t) k w")), "(b t) k w -> b t k w", b=B)
        x = x + self.cross_attn(self.norm2(x), self.norm_ctx(zp), self.norm_ctx(shared), mask)
        return x + self.ffn(self.norm3(x))


class AttributeDiffusionHead(NoteDecoder):
    """CIEM + bidirectional denoiser over the K attribute slots + K output heads: the Amadeus decoder.

    `context(z, prefix_states, prefix_mask) -> C` once per note; `logits(C, tokens, masked)` per
    denoising step; `forward` does both. Trained with the masked-diffusion loss (`loss`); its exact NLL
    reads the head as an autoregressive model over the slots in column order (`exact_nll`). Leading dims are free: z [B, T, d] with prefix [B, P, Dp]
    (every note of row b sees prefix b), or z [N, d] with prefix [N, P, Dp] (one note per row).
    `prefix_states` are the same text-encoder states [.., P, prefix_dim] that the backbone takes as its
    prefix (the head projects them itself), with `prefix_mask` [.., P] (True = real token).
    """

    name = "amadeus"
    autoregressive = False
    per_attribute_metric = "masked_ce"  # mean CE of the masked slots at random masking rates (not an NLL)

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        cfg.require_vocab()
        self.cfg = cfg
        w, K = cfg.head_width, cfg.K
        self.proj = nn.Linear(cfg.d_model, w, bias=False)
        self.slot = nn.Parameter(torch.zeros(K, w))
        self.ciem = CIEM(cfg) if cfg.use_ciem else None
        self.tables = AttributeTables(cfg.vocab_sizes, w)  # E'_k: the head's own attribute embeddings
        self.mask_emb = nn.Parameter(torch.zeros(w))
        self.blocks = nn.ModuleList(
            SlotBlock(w, cfg.head_heads, cfg.head_ffn_hidden, cfg.dropout) for _ in range(cfg.head_layers)
        )
        self.norm = RMSNorm(w)
        self.out = nn.ModuleList(nn.Linear(w, v) for v in cfg.vocab_sizes)
        init_weights(self, cfg.head_layers + int(cfg.use_ciem))
        params = [self.slot, self.mask_emb] + ([self.ciem.null] if self.ciem is not None else [])
        for p in params:
            nn.init.normal_(p, mean=0.0, std=0.02)

    def context(
        self, z: torch.Tensor, prefix_states: torch.Tensor | None = None, prefix_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """z [B, T, d] or [N, d] -> C [B, T, K, w] or [N, K, w] (prefix ignored without CIEM)."""
        if prefix_states is not None:
            if self.cfg.prefix_dim == 0:
                raise ValueError("prefix_states given but ModelConfig.prefix_dim is 0 (model built without text)")
            if prefix_states.shape[0] != z.shape[0] or prefix_states.shape[-1] != self.cfg.prefix_dim:
                raise ValueError(
                    f"prefix_states must be [{z.shape[0]}, P, {self.cfg.prefix_dim}], got {tuple(prefix_states.shape)}"
                )
        flat = z.dim() == 2
        # activations entering norms keep the parameters' dtype (fp32 residual stream under autocast)
        zp = self.proj(z[:, None] if flat else z).to(self.slot.dtype)  # [B, T, w]
        c = zp[..., None, :] + self.slot  # [B, T, K, w]
        if self.ciem is not None:
            c = self.ciem(c, zp, prefix_states, prefix_mask)
        return c[:, 0] if flat else c

    def logits(self, C: torch.Tensor, tokens: torch.Tensor, masked: torch.Tensor) -> list[torch.Tensor]:
        """C [..., K, w], tokens [..., K] (any value where masked), masked [..., K] bool
        -> K tensors [..., V_k]."""
        lead = tokens.shape[:-1]
        masked = masked.bool()
        emb = self.tables(tokens.masked_fill(masked, 0))  # [..., K, w]
        x = torch.where(masked[..., None], self.mask_emb, emb) + self.slot
        x = x.reshape(-1, *x.shape[-2:])  # [N, K, w]
        mem = C.reshape(-1, *C.shape[-2:])  # [N, K, w]
        for block in self.blocks:
            x = block(x, mem)
        x = self.norm(x)
        return [head(x[:, k]).reshape(*lead, -1) for k, head in enumerate(self.out)]

    def forward(
        self,
        z: torch.Tensor,
        tokens: torch.Tensor,
        masked: torch.Tensor,
        prefix_states: torch.Tensor | None = None,
        prefix_mask: torch.Tensor | None = None,
    ) -> list[torch.Tensor]:
        return self.logits(self.context(z, prefix_states, prefix_mask), tokens, masked)

    # -- the decoder interface (amadeus.model.note_decoder) ----------------------------------------

    def loss(self, backbone: nn.Module, notes: torch.Tensor, valid: torch.Tensor,
             prefix: torch.Tensor | None = None, prefix_mask: torch.Tensor | None = None,
             weight: torch.Tensor | None = None, segments: torch.Tensor | None = None) -> DecoderLoss:
        """The diffusion loss of rows 1..T: one random mask per note (`corrupt`). The head runs on the
        whole [B, T] grid (the prefix is shared per row, never copied per note); `valid` excludes padding."""
        targets = notes[:, 1:]
        out = backbone(notes[:, :-1], prefix=prefix, prefix_mask=prefix_mask,
                       segments=None if segments is None else segments[:, :-1])
        masked, p = corrupt(targets.shape, eps=self.cfg.diffusion_eps, device=targets.device)
        logits = self(out.z, targets, masked, prefix_states=prefix, prefix_mask=prefix_mask)
        loss, per_attribute = diffusion_loss(logits, targets, masked, p, valid, weight)
        return DecoderLoss(loss, per_attribute, logits, masked, out.mid)

    def _valid_logits(self, backbone: nn.Module, notes: torch.Tensor, valid: torch.Tensor,
                      prefix: torch.Tensor | None, prefix_mask: torch.Tensor | None, segments: torch.Tensor | None):
        """(logits_fn(masked [N, K]) -> K logits, targets [N, K]) of the N valid target rows: one backbone
        pass and one context for all of them, then only the denoiser per call."""
        z = backbone(notes[:, :-1], prefix=prefix, prefix_mask=prefix_mask,
                     segments=None if segments is None else segments[:, :-1]).z  # [B, T, d]
        C = self.context(z, prefix, prefix_mask)[valid]  # [N, K, w]
        targets = notes[:, 1:][valid]  # [N, K]
        return (lambda masked: self.logits(C, targets, masked)), targets

    def exact_nll(self, backbone: nn.Module, notes: torch.Tensor, valid: torch.Tensor,
                  prefix: torch.Tensor | None = None, prefix_mask: torch.Tensor | None = None,
                  segments: torch.Tensor | None = None) -> torch.Tensor:
        logits_fn, targets = self._valid_logits(backbone, notes, valid, prefix, prefix_mask, segments)
        return chain_rule_nll(logits_fn, targets)

    def elbo_nll(self, backbone: nn.Module, notes: torch.Tensor, valid: torch.Tensor,
                 prefix: torch.Tensor | None = None, prefix_mask: torch.Tensor | None = None,
                 segments: torch.Tensor | None = None, *, num_samples: int = 4, method: str = "subsets",
                 seed: int = 0) -> torch.Tensor:
        logits_fn, targets = self._valid_logits(backbone, notes, valid, prefix, prefix_mask, segments)
        return diffusion_elbo_nll(logits_fn, targets, num_samples, method=method, seed=seed)
