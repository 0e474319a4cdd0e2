"""The interface of a note decoder: the head that turns the backbone's latent into a note's K attributes.

Training, validation, evaluation and sampling talk to every decoder (the Amadeus diffusion head and the
comparison decoders of `amadeus.model.baselines`) through these methods, never through its name:

    loss(backbone, notes, valid, ...)       the training objective of a batch (and what to log)
    exact_nll(backbone, notes, valid, ...)  exact NLL terms per note and attribute (the chain rule)
    elbo_nll(backbone, notes, valid, ...)   the diffusion ELBO terms, or None for a decoder without one
    context(z, prefix, prefix_mask)         per-note conditioning C, computed once per note
    autoregressive                          True: the sampler draws attributes one at a time
                                            (`attribute_logits`); False: it runs denoising passes (`logits`)

`notes` is a batch's rows [B, T+1, K]: the backbone reads rows 0..T-1 and the decoder predicts rows
1..T; `valid` [B, T] marks the target rows that count; `segments` [B, T+1] (optional) numbers the pieces
of packed rows (`amadeus.windows`), which attend within themselves only.
"""

from __future__ import annotations

from typing import ClassVar, NamedTuple

import torch
from torch import nn


class DecoderLoss(NamedTuple):
    """What a decoder's `loss` gives the training step."""

    loss: torch.Tensor  # scalar: the objective per attribute slot (mean over valid notes of the note's loss / K)
    per_attribute: torch.Tensor  # [K]: the per-attribute terms logged as `<per_attribute_metric>/<attribute>`
    logits: list[torch.Tensor]  # K tensors [B, T, V_k]
    scored: torch.Tensor  # bool [B, T, K]: the slots the loss scored (accuracy is measured on these)
    mid: torch.Tensor  # [B, T, d]: the backbone's mid-depth states (MLSDES features), one per input row


class NoteDecoder(nn.Module):
    """Base class of the note decoders (see the module docstring for the interface)."""

    name: ClassVar[str] = ""  # the `decoder` name a checkpoint stores ("amadeus", "flat", ...)
    autoregressive: ClassVar[bool] = False
    per_attribute_metric: ClassVar[str] = "nll"  # what `DecoderLoss.per_attribute` holds

    def loss(self, backbone: nn.Module, notes: torch.Tensor, valid: torch.Tensor,
             prefix: torch.Tensor | None = None, prefix_mask: torch.Tensor | None = None,
             weight: torch.Tensor | None = None, segments: torch.Tensor | None = None) -> DecoderLoss:
        """The training objective on rows 1..T of `notes`; `weight` [B, T] weighs notes (training only)."""
        raise NotImplementedError

    def exact_nll(self, backbone: nn.Module, notes: torch.Tensor, valid: torch.Tensor,
                  prefix: torch.Tensor | None = None, prefix_mask: torch.Tensor | None = None,
                  segments: torch.Tensor | None = None) -> torch.Tensor:
        """Exact NLL terms [N, K] (nats) of the N valid target rows, attribute by attribute in column order:
        summed over K, a proper NLL per note."""
        raise NotImplementedError

    def elbo_nll(self, backbone: nn.Module, notes: torch.Tensor, valid: torch.Tensor,
                 prefix: torch.Tensor | None = None, prefix_mask: torch.Tensor | None = None,
                 segments: torch.Tensor | None = None, *, num_samples: int = 4, method: str = "subsets",
                 seed: int = 0) -> torch.Tensor | None:
        """ELBO terms [N, K] of the valid target rows for a diffusion decoder; None for the others."""
        return None

    def context(self, z: torch.Tensor, prefix_states: torch.Tensor | None = None,
                prefix_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Per-note conditioning C from the backbone's latent z (computed once per note when sampling)."""
        raise NotImplementedError
