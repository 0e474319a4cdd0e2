"""Masked (absorbing) discrete diffusion over the K attribute slots of a note: maths only, no modules.

Forward process: per note draw t ~ U(0, 1), mask every slot independently with p = (1 - eps) t + eps.
Loss: cross-entropy on masked slots only, weighted by 1/p, summed over slots and divided by K (LLaDA's
unbiased ELBO estimator, normalised per note, never per masked slot, so no 0/0), mean over valid notes.
Sampling: all slots start masked; a step reveals some masked slots (`confidence_reveal` chooses the most
confident ones), which then stay frozen.

Likelihoods of a note under the head, each a function of `logits_fn(masked) -> K logits`:
  `chain_rule_nll`      exact: the head read as an autoregressive model revealing one slot at a time in a
                        fixed order (K passes); what a sampler drawing one slot per pass in that order samples.
  `diffusion_elbo_nll`  the masked-diffusion ELBO, which equals the chain-rule NLL averaged over uniformly
                        random reveal orders: an upper bound on the NLL of revealing the slots in a random
                        order, not a bound on the column-order NLL note by note.
"""

from __future__ import annotations

import itertools
import math
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


def diffusion_elbo_nll(
    logits_fn: Callable[[torch.Tensor], Sequence[torch.Tensor]],
    targets: torch.Tensor,
    num_samples: int = 16,
    *,
    method: str = "subsets",
    eps: float = 0.0,
    seed: int = 0,
    valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-note, per-attribute terms of the masked-diffusion ELBO, in nats: float64 [N, K].

    logits_fn(masked BoolTensor[N, K]) -> K tensors [N, V_k]: the head's logits when the slots
    marked True are hidden ([MASK]) and the others show their target value. targets: LongTensor
    [N, K]. valid: BoolTensor [N, K] of slots to score (default all; masking is unchanged).

    The ELBO of masked diffusion with the linear schedule (p = t, t ~ U(0, 1)) is
        E_t E_{M ~ Bernoulli(t)^K} [ sum_{k in M} CE_k(x | x_not_M) / t ]
          = sum_{m=1..K} (1/m) E_{|M| = m} [ sum_{k in M} CE_k(x | x_not_M) ]
    (integrating t out: C(K, m) * Beta(m, K - m + 1) = 1/m), which is the chain-rule NLL of the note
    averaged over uniformly random reveal orders (step i of a random order reveals one of the K - i + 1
    masked slots, each with probability 1 / (K - i + 1)). So it bounds the NLL of revealing slots in a
    random order; it is not a bound on the column-order NLL (`chain_rule_nll`) note by note. Column k is
    attribute k's share (its masked-slot terms); it is not the NLL of attribute k alone.

    method 'subsets' (default): for each m, every subset of size m when there are at most
        num_samples of them (exact), else num_samples uniformly drawn subsets per note. Unbiased for
        the ELBO above with bounded variance; sum_m min(C(K, m), num_samples) calls of logits_fn.
    method 't': the training estimator, p = (1 - eps) t + eps, each slot masked with probability p,
        weight 1/p, t stratified over num_samples draws per note. Its mean is the training loss
        (1/(1 - eps)) * integral_eps^1 S(p)/p dp, within O(eps) of the ELBO (equal at eps = 0,
        where its variance is unbounded: prefer 'subsets' for reporting).
    Draws use a CPU generator seeded with `seed`, so numbers are reproducible on any device.
    """
    if targets.ndim != 2:
        raise ValueError(f"targets must be [N, K], got shape {tuple(targets.shape)}")
    if num_samples < 1:
        raise ValueError("num_samples must be >= 1")
    N, K = targets.shape
    device = targets.device
    gen = torch.Generator().manual_seed(int(seed))
    out = torch.zeros(N, K, dtype=torch.float64, device=device)

    def masked_ce(masked: torch.Tensor) -> torch.Tensor:
        """CE of every masked slot (0 elsewhere): float64 [N, K]."""
        logits = logits_fn(masked)
        if len(logits) != K:
            raise ValueError(f"logits_fn returned {len(logits)} tensors for K = {K} attributes")
        ce = torch.zeros(N, K, dtype=torch.float64, device=device)
        for k in range(K):
            if masked[:, k].any():
                ce[:, k] = F.cross_entropy(logits[k].float(), targets[:, k], reduction="none").double()
        return ce * masked

    if method == "subsets":
        for m in range(1, K + 1):
            n_sub = math.comb(K, m)
            if n_sub <= num_samples:
                for combo in itertools.combinations(range(K), m):
                    masked = torch.zeros(N, K, dtype=torch.bool, device=device)
                    masked[:, list(combo)] = True
                    out += masked_ce(masked) / (m * n_sub)
            else:
                for _ in range(num_samples):
                    rank = torch.rand(N, K, generator=gen).argsort(dim=1).argsort(dim=1)  # random permutation
                    out += masked_ce((rank < m).to(device)) / (m * num_samples)
    elif method == "t":
        if not 0.0 <= eps < 1.0:
            raise ValueError(f"eps must be in [0, 1), got {eps}")
        offset = torch.rand(N, 1, generator=gen)
        for s in range(num_samples):
            t = (s + offset) / num_samples  # [N, 1] stratified
            p = (1.0 - eps) * t + eps
            masked = torch.rand(N, K, generator=gen) < p
            out += masked_ce(masked.to(device)) / (p.to(device).double() * num_samples)
    else:
        raise ValueError(f"method must be 'subsets' or 't', got {method!r}")
    if valid is not None:
        out = out * valid.to(device)
    return out
