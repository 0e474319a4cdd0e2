"""The Python API for experiments: `Amadeus`, a loaded model that generates symusic Scores.

    from amadeus import Amadeus, SamplingOptions
    model = Amadeus.load("outputs/demo/model.ckpt")     # or an exported folder (amadeus export)
    scores = model.generate(num=2, steps=4, controls=["instrument=piano", "tempo=96"])
    scores = model.generate(num=2, options=SamplingOptions(steps=2, top_p={"pitch": 0.9}), seed=7)

Loading goes through `amadeus.checkpoint` (weights_only reads, tokenizer hash and shape checks);
sampling through `amadeus.sampling`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch

from amadeus.checkpoint import load_module as _load_checkpoint
from amadeus.checkpoint import write_folder
from amadeus.module import AmadeusModule
from amadeus.sampling import SampleResult, SamplingOptions, generate, prompt_from_midi, regenerate
from amadeus.tokenizer import NoteTokenizer


def load_module(path: str | Path, device: str | torch.device = "cpu") -> AmadeusModule:
    """Rebuild the AmadeusModule of a Lightning .ckpt or an exported folder (CheckpointError if it
    does not match the code)."""
    return _load_checkpoint(path, AmadeusModule, device)


def export(ckpt: str | Path, out_dir: str | Path) -> Path:
    """Write `out_dir` with model.safetensors, config.json and tokenizer.json from a checkpoint."""
    return write_folder(load_module(ckpt), out_dir, source=str(ckpt))  # load_module validates hash and shapes


class Amadeus:
    """A loaded model for experiments: `Amadeus.load(path)`, then `generate(...)` -> symusic Scores.

    `generate` takes the options of `amadeus generate` (see `amadeus.sampling.generate`); the token
    matrices and statistics of the last call are in `last_result`.
    """

    def __init__(self, module: AmadeusModule):
        self.module = module.eval()
        self.tokenizer: NoteTokenizer = module.tokenizer
        self.last_result: SampleResult | None = None

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu") -> "Amadeus":
        """From a Lightning .ckpt or an exported folder."""
        return cls(load_module(path, device))

    @property
    def device(self) -> torch.device:
        return next(self.module.parameters()).device

    def sample(self, num: int = 1, *, options: SamplingOptions | None = None, prompt: Any = None,
               prompt_bars: int | None = None, prompt_notes: int | None = None, **kwargs: Any) -> SampleResult:
        """Token matrices + statistics (`amadeus.sampling.SampleResult`). options: how to sample (the
        defaults when None); any setting of SamplingOptions may also be given as a keyword. prompt: MIDI
        path / Score / tokens, cut to its first `prompt_bars` bars or `prompt_notes` rows. Other keywords:
        seed, controls, text, prefix (see `amadeus.sampling.generate`)."""
        if prompt is not None:
            prompt = prompt_from_midi(self.tokenizer, prompt, bars=prompt_bars, notes=prompt_notes)
        self.last_result = generate(self.module, num, options=options, prompt=prompt, **kwargs)
        return self.last_result

    def generate(self, num: int = 1, *, options: SamplingOptions | None = None, **kwargs: Any) -> list:
        """Sampled pieces as symusic Scores; arguments as `sample`."""
        return [self.tokenizer.decode(t) for t in self.sample(num, options=options, **kwargs).tokens]

    def regenerate(self, piece: Any, attributes: Sequence[str] | str, rows: Any = None, num: int = 1, *,
                   options: SamplingOptions | None = None, **kwargs: Any) -> list:
        """Re-sample chosen attributes of an existing piece (MIDI path / Score / tokens), keeping the rest."""
        self.last_result = regenerate(self.module, piece, attributes, rows=rows, num=num, options=options, **kwargs)
        return [self.tokenizer.decode(t) for t in self.last_result.tokens]

    def export(self, out_dir: str | Path) -> Path:
        """Write this model as an exported folder (model.safetensors, config.json, tokenizer.json)."""
        return write_folder(self.module, out_dir, source="Amadeus.export")
