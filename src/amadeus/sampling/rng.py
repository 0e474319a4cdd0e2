"""Counter-based random numbers for the sampler: the uniform for (piece seed, row, pass, slot) is a hash.

So a piece does not depend on what else is in the batch: with seed s, piece i uses seed s + i, and
`generate(num=4, seed=s)` gives the same pieces as four calls `generate(num=1, seed=s + i)`. Everything
stays on the tensors' device (no host round-trip).
"""

from __future__ import annotations

from typing import Sequence

import torch

_M32 = 0xFFFFFFFF

def _mulmod32(x: torch.Tensor, c: int) -> torch.Tensor:
    """(x * c) mod 2^32 for x in [0, 2^32) without int64 overflow (split c into 16-bit halves)."""
    lo = x * (c & 0xFFFF)
    hi = ((x * (c >> 16)) & 0xFFFF) << 16
    return (lo + hi) & _M32


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash (lowbias32) on int64 tensors holding values in [0, 2^32)."""
    x = x ^ (x >> 16)
    x = _mulmod32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mulmod32(x, 0x846CA68B)
    return x ^ (x >> 16)


def piece_keys(seeds: Sequence[int], device: torch.device) -> torch.Tensor:
    """One 32-bit key per piece from (up to 64-bit) seeds: int64 [B]."""
    lo = torch.tensor([int(v) & _M32 for v in seeds], dtype=torch.long, device=device)
    hi = torch.tensor([(int(v) >> 32) & _M32 for v in seeds], dtype=torch.long, device=device)
    return _mix32(lo ^ _mix32(hi ^ 0x68E31DA4))


def lane_keys(lanes: int, device: torch.device) -> torch.Tensor:
    """Hashes of the lane numbers 0..lanes-1 (a lane = one (pass, slot) pair): int64 [lanes]."""
    return _mix32(_mulmod32(torch.arange(1, lanes + 1, device=device, dtype=torch.long), 0x9E3779B1))


def uniforms(keys: torch.Tensor, rows: torch.Tensor, lanes: torch.Tensor) -> torch.Tensor:
    """u [B, L] in (0, 1), float64: a hash of (piece key [B], row index [B], lane key [L])."""
    x = _mix32(keys ^ _mix32(rows & _M32))  # [B]
    x = _mix32(x[:, None] ^ lanes[None, :])
    return (x.double() + 0.5) / 4294967296.0

