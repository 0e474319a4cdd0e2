"""Auxiliary loss and latent metrics for MLSDES (the dispersive loss on mid-depth sequence features).

MLSDES pools the residual stream at about one third of the depth over the real notes of each sequence
(each piece of a packed row apart; padding and text prefix excluded), gathers the pooled features of all
GPUs, and minimises
    L_disp = log mean_{a != b} exp(-(1 - cos(f_a, f_b)) / tau),
which pushes different sequences apart (the authors' code has the opposite sign, which pulls them
together; tests/test_losses.py shows both).
The masked-diffusion loss itself lives in `amadeus.model.diffusion.diffusion_loss`.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F

from amadeus.model.config import ModelConfig


def masked_mean_pool(h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of h [B, T, d] over the positions where mask [B, T] is True -> [B, d] float32 (0 if none)."""
    m = mask.to(torch.float32)[..., None]  # [B, T, 1]
    return (h.float() * m).sum(1) / m.sum(1).clamp_min(1.0)


def segment_mean_pool(h: torch.Tensor, segments: torch.Tensor) -> torch.Tensor:
    """Mean of h [B, T, d] over the rows of each segment of segments [B, T] (pieces 1, 2, ... of a packed
    row, 0 = padding) -> [pieces, d] float32, row by row and piece by piece."""
    onehot = F.one_hot(segments.long(), int(segments.max()) + 1)[..., 1:].to(torch.float32)  # [B, T, S]
    sums = torch.einsum("btd,bts->bsd", h.float(), onehot)  # [B, S, d]
    counts = onehot.sum(1)  # [B, S]
    present = counts > 0
    return sums[present] / counts[present][:, None]


def _off_diagonal(x: torch.Tensor) -> torch.Tensor:
    """Entries a != b of a square matrix [B, B] as a flat tensor [B * (B - 1)]."""
    B = x.shape[0]
    return x.masked_select(~torch.eye(B, dtype=torch.bool, device=x.device))


def dispersive_loss(features: torch.Tensor, tau: float = 0.5) -> torch.Tensor:
    """log mean_{a != b} exp(-(1 - cos(f_a, f_b)) / tau) over features [B, d]; lower = more spread.

    The diagonal is excluded; fewer than 2 rows give 0 (still attached to the graph).
    """
    B = features.shape[0]
    if B < 2:
        return features.float().sum() * 0.0
    u = F.normalize(features.float(), dim=-1)
    dist_ab = _off_diagonal(1.0 - u @ u.T)  # [B(B-1)] cosine distances in [0, 2]
    return torch.logsumexp(-dist_ab / tau, dim=0) - math.log(B * (B - 1))


def gather_with_grad(features: torch.Tensor) -> torch.Tensor:
    """Concatenate features [B_r, d] of every DDP rank -> [sum B_r, d], rank order; ranks may hold
    different batch sizes. Without an initialised process group of 2+ ranks, returns `features`.

    Other ranks' rows are constants; the local rows keep their graph with the gradient scaled by the
    world size W. Every rank computes the same loss L on the gathered rows, so rank r's local gradient
    is dL/df_r (the exact partial) and, after DDP's 1/W averaging of parameter gradients, the scale W
    makes the update the exact gradient of L, with no collective in the backward pass.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
        return features
    world, rank = dist.get_world_size(), dist.get_rank()
    n = torch.tensor([features.shape[0]], device=features.device)
    sizes = [torch.zeros_like(n) for _ in range(world)]
    dist.all_gather(sizes, n)
    sizes = [int(s) for s in sizes]
    padded = F.pad(features.detach(), (0, 0, 0, max(sizes) - features.shape[0])).contiguous()
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    parts = [part[:s] for part, s in zip(parts, sizes)]
    parts[rank] = features.detach() + world * (features - features.detach())  # value f, gradient x W
    return torch.cat(parts, dim=0)


def mlsdes_loss(mid: torch.Tensor, segments: torch.Tensor, cfg: ModelConfig) -> torch.Tensor:
    """Unweighted MLSDES term for mid [B, T, d] (note positions only) and segments [B, T] (the piece of
    each row, 0 = padding; a boolean mask is one piece per row): pool each piece, gather across ranks,
    dispersive loss with cfg.mlsdes_tau. Exactly 0 (with a graph) when cfg.use_mlsdes is False. The
    caller adds `cfg.mlsdes_weight * mlsdes_loss(...)`."""
    if not cfg.use_mlsdes:
        return mid.float().sum() * 0.0
    return dispersive_loss(gather_with_grad(segment_mean_pool(mid, segments)), cfg.mlsdes_tau)


@torch.no_grad()
def pairwise_cosine_stats(features: torch.Tensor) -> tuple[float, float]:
    """Mean and standard deviation of cos(f_a, f_b) over pairs a != b (0, 0 for fewer than 2 rows)."""
    if features.shape[0] < 2:
        return 0.0, 0.0
    u = F.normalize(features.float(), dim=-1)
    cos = _off_diagonal(u @ u.T)
    return float(cos.mean()), float(cos.std(unbiased=False))


@torch.no_grad()
def uniformity(features: torch.Tensor, t: float = 2.0) -> float:
    """Wang & Isola uniformity: log mean_{a != b} exp(-t ||u_a - u_b||^2) on unit vectors (lower = more
    uniform on the sphere; 0 when all rows coincide)."""
    B = features.shape[0]
    if B < 2:
        return 0.0
    u = F.normalize(features.float(), dim=-1)
    sq = _off_diagonal((2.0 - 2.0 * (u @ u.T)).clamp_min(0.0))
    return float(torch.logsumexp(-t * sq, dim=0) - math.log(B * (B - 1)))


@torch.no_grad()
def effective_rank(features: torch.Tensor) -> float:
    """exp(entropy of the normalised singular values) of the centred features [B, d] (Roy & Vetterli):
    1 when collapsed onto a line, up to min(B, d) when isotropic, 0 when all rows coincide."""
    f = features.float()
    f = f - f.mean(0, keepdim=True)
    s = torch.linalg.svdvals(f)
    if float(s.sum()) <= 0.0:
        return 0.0
    p = s / s.sum()
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))
