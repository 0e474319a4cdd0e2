"""amadeus: an autoregressive note transformer with a bidirectional discrete-diffusion attribute head.

MIDI -> tokens (`amadeus.tokenizer`) -> batches (`amadeus.datamodule`) -> model (`amadeus.module`)
-> tokens (`amadeus.sampling`) -> MIDI.  For experiments: `from amadeus import Amadeus, SamplingOptions`.
"""
from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["Amadeus", "SamplingOptions", "__version__"]


def __getattr__(name: str):
    # Lazy: `import amadeus` stays cheap (no torch import) for the data tools.
    if name == "Amadeus":
        from amadeus.api import Amadeus

        return Amadeus
    if name == "SamplingOptions":
        from amadeus.sampling.options import SamplingOptions

        return SamplingOptions
    raise AttributeError(f"module 'amadeus' has no attribute {name!r}")
