"""Masked (absorbing) discrete diffusion over the K attribute slots of a note: maths only, no modules.

Forward process: per note draw t ~ U(0, 1), mask every slot independently with p = (1 - eps) t + eps.
Loss: cross-entropy on masked slots only, weighted by 1/p, summed over slots and divided by K (LLaDA's
unbiased ELBO estimator, normalised per note, never per masked slot, so no 0/0), mean over valid notes.
Sampling: S steps; all slots start masked; step s reveals `reveal_schedule(K, S)[s]` slots, the most
confident masked ones (`confidence_reveal`); revealed slots stay frozen.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F


def mask_probability(t: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
    """p(t) = (1 - eps) t + eps: the masking probability at time t in [0, 1] (never 0, so 1/p is finite)."""
    return (1.0 - eps) * t + eps


def corrupt(
    shape_or_tokens: Sequence[int] | torch.Tensor,
    generator: torch.Generator | None = None,
    eps: float = 1e-3,
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw the forward process for notes of shape [..., K] (a shape or the token tensor itself).

    Returns masked [..., K] bool (True = slot replaced by [MASK]) and p [...] (each note's mask
    probability, needed for the 1/p weight). `generator` must live on `device`.
    """
    if isinstance(shape_or_tokens, torch.Tensor):
        shape = tuple(shape_or_tokens.shape)
        device = shape_or_tokens.device if device is None else device
    else:
        shape = tuple(int(s) for s in shape_or_tokens)
    if len(shape) < 1:
        raise ValueError("corrupt needs a shape [..., K]")
    t = torch.rand(shape[:-1], generator=generator, device=device)  # [...]
    p = mask_probability(t, eps)
    masked = torch.rand(shape, generator=generator, device=device) < p[..., None]  # [..., K]
    return masked, p


def diffusion_loss(
    logits: Sequence[torch.Tensor],
    targets: torch.Tensor,
    masked: torch.Tensor,
    p: torch.Tensor,
    valid: torch.Tensor | None = None,
    weight: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Masked-diffusion loss.

    logits: K tensors [..., V_k]; targets [..., K]; masked [..., K] bool; p [...]; valid [...] bool
    (None = all notes count); weight [...] (None = 1) turns the mean over notes into a weighted mean
    (a training emphasis; with weights the loss is no longer the ELBO). Returns
      loss = mean over valid notes of (1/K) sum_k masked_k * CE_k / p   (0 with a graph if no valid note)
      per_attribute [K] = mean CE over the masked valid slots of attribute k, without the 1/p weight
        (an NLL estimate to log; 0 where no slot of k was masked).
    """
    K = targets.shape[-1]
    if len(logits) != K:
        raise ValueError(f"{len(logits)} logit tensors for {K} attributes")
    ce = torch.stack(
        [F.cross_entropy(lg.float().flatten(0, -2), targets[..., k].flatten(), reduction="none") for k, lg in enumerate(logits)],
        dim=-1,
    ).reshape(targets.shape)  # [..., K]
    valid = torch.ones_like(p, dtype=torch.bool) if valid is None else valid.bool()
    w = (masked.bool() & valid[..., None]).float()  # [..., K] slots that are scored
    per_note = (ce * w).sum(-1) / (K * p.float())  # [...]
    if weight is None:
        loss = per_note.sum() / valid.sum().clamp_min(1)
    else:
        note_w = weight.float() * valid
        loss = (per_note * note_w).sum() / note_w.sum().clamp_min(1e-8)
    flat_w, flat_ce = w.reshape(-1, K), ce.reshape(-1, K)
    per_attribute = (flat_ce * flat_w).sum(0) / flat_w.sum(0).clamp_min(1)  # [K]
    return loss, per_attribute


def reveal_schedule(num_slots: int, steps: int) -> list[int]:
    """How many slots to reveal at each of `steps` steps: as even as possible, earlier steps first,
    summing to num_slots (e.g. K=8, S=3 -> [3, 3, 2]). steps must be in 1..num_slots."""
    if not 1 <= steps <= num_slots:
        raise ValueError(f"denoising steps must be in 1..{num_slots} (the number of attributes), got {steps}")
    base, extra = divmod(num_slots, steps)
    return [base + (s < extra) for s in range(steps)]


def confidence_reveal(
    confidence: torch.Tensor, still_masked: torch.Tensor, count: int | torch.Tensor
) -> torch.Tensor:
    """Choose which masked slots to reveal now: the `count` most confident per row.

    confidence [N, K] (e.g. probability of the sampled value; NaN counts as lowest), still_masked
    [N, K] bool, count: int or LongTensor [N]. Returns reveal [N, K] bool, a subset of still_masked
    with min(count, #masked) slots per row; ties go to the lower slot index (deterministic).
    """
    big = torch.finfo(torch.float32).max
    key = torch.nan_to_num(confidence.float(), nan=-big, posinf=big, neginf=-big)  # masked slots > -inf
    key = key.masked_fill(~still_masked.bool(), float("-inf"))
    order = torch.sort(key, dim=-1, descending=True, stable=True).indices  # [N, K]
    rank = torch.empty_like(order).scatter_(-1, order, torch.arange(key.shape[-1], device=key.device).expand_as(order))
    count = torch.as_tensor(count, device=key.device)
    count = count[..., None] if count.dim() == 1 else count
    return (rank < count) & still_masked.bool()


def chain_rule_nll(
    logits_fn: Callable[[torch.Tensor], Sequence[torch.Tensor]],
    targets: torch.Tensor,
    order: Sequence[int] | None = None,
) -> torch.Tensor:
    """Exact NLL terms of the head read as an autoregressive model over the K slots in a fixed order.

    Step i reveals slot order[i]: its term is -log p(y_order[i] | slots order[:i] revealed, the others
    masked), one head pass (`logits_fn(masked [N, K]) -> K logits [N, V_k]`) per step. The product of
    the K conditionals is a proper distribution over the note (the one a sampler draws from at S=K with
    this reveal order), so the sum of the terms is its exact NLL. order: None = column order
    (metric, position, chord, tempo, instrument, pitch, duration, velocity: metric first, like the
    sampler). targets [N, K] -> terms [N, K] (column k holds attribute k's term).
    """
    N, K = targets.shape
    order = list(range(K)) if order is None else [int(k) for k in order]
    if sorted(order) != list(range(K)):
        raise ValueError(f"order must be a permutation of 0..{K - 1}, got {order}")
    masked = torch.ones(N, K, dtype=torch.bool, device=targets.device)
    terms = torch.zeros(N, K, dtype=torch.float32, device=targets.device)
    for k in order:
        logits = logits_fn(masked)[k]
        terms[:, k] = F.cross_entropy(logits.float(), targets[:, k], reduction="none")
        masked = masked.clone()
        masked[:, k] = False
    return terms
