"""Generation: one note per backbone step (KV cache), S denoising passes of the head per note.

The package, one concept per module, in the order data flows through it:

    options   SamplingOptions and every default (torch-free: the commands validate settings here)
    rng       counter-based random numbers: a piece does not depend on the rest of its batch
    prompts   prompts and regeneration templates as token matrices (numpy)
    guards    the grammar guards and user controls as logit masks on the device
    step      one note: the diffusion head's S passes (NoteSampler) or the autoregressive decoders'
              attribute-by-attribute draw (AttributeSampler), truncation, guidance
    batch     a batch of pieces, note by note: eager, or static (fixed shapes, no host read inside a note)
    replay    the static note run as is, compiled (torch.compile) or as CUDA graphs
    loop      `generate`, `regenerate`, SampleResult: batches of pieces
    syncs     counting the host's reads of the device (tests, benchmarks)

`from amadeus.sampling import generate` works as before; the names of `loop`, `step`, `guards`, `rng` and `syncs`
(which need torch) are imported on first use, so that importing `amadeus.sampling.options` stays free
of torch.
"""

from __future__ import annotations

import importlib
from typing import Any

from amadeus.sampling.options import (
    DEFAULT_ORDER,
    DEFAULT_STEPS,
    DEFAULT_TEMPERATURE,
    DEFAULT_TOP_K,
    DEFAULT_TOP_P,
    PLAUSIBILITY,
    REVEAL_ORDERS,
    TEXT_GUIDANCE,
    PerAttribute,
    SamplingOptions,
    merge_setting,
    plain_setting,
    setting_text,
)
from amadeus.sampling.prompts import REGENERABLE, prompt_from_midi

_LAZY = {
    "generate": "loop", "regenerate": "loop", "SampleResult": "loop",
    "guide": "step", "filter_probs": "step", "draw": "step", "NoteSampler": "step", "AttributeSampler": "step",
    "Guards": "guards", "NoteTables": "guards",
    "piece_keys": "rng", "lane_keys": "rng", "uniforms": "rng",
    "count_syncs": "syncs",
}

__all__ = [
    "DEFAULT_ORDER", "DEFAULT_STEPS", "DEFAULT_TEMPERATURE", "DEFAULT_TOP_K", "DEFAULT_TOP_P", "PLAUSIBILITY",
    "REGENERABLE", "REVEAL_ORDERS", "TEXT_GUIDANCE", "PerAttribute", "SamplingOptions", "merge_setting",
    "plain_setting", "prompt_from_midi", "setting_text", *_LAZY,
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"amadeus.sampling.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'amadeus.sampling' has no attribute {name!r}")
