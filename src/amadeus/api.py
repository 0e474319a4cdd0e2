"""The Python API for experiments: `Amadeus`, a loaded model that generates symusic Scores.

    from amadeus import Amadeus, SamplingOptions
    model = Amadeus.load("outputs/demo/model.ckpt")     # or an exported folder (amadeus export)
    scores = model.generate(num=2, steps=4, controls=["instrument=piano", "tempo=96"])
    scores = model.generate(num=2, options=SamplingOptions(steps=2, top_p={"pitch": 0.9}), seed=7)

Loading goes through `amadeus.checkpoint` (weights_only reads, tokenizer hash and shape checks);
sampling through `amadeus.sampling`.
"""

from __future__ import annotations

from dataclasses import fields, replace
from pathlib import Path
from typing import Any, Sequence

import torch

from amadeus.checkpoint import load_module as _load_checkpoint
from amadeus.infill import INFILL_CONTEXT
from amadeus.checkpoint import write_folder
from amadeus.module import AmadeusModule
from amadeus.sampling import SampleResult, SamplingOptions, generate, prompt_from_midi, regenerate
from amadeus.tokenizer import NoteTokenizer

_SETTINGS = {f.name for f in fields(SamplingOptions)}


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

    def infill(self, piece: Any, bars: tuple[int, int], num: int = 1, *, context: int = INFILL_CONTEXT,
               options: SamplingOptions | None = None, **kwargs: Any) -> list:
        """Rewrite bars first..last of a piece (MIDI path or Score; 1-based and inclusive, as a MIDI editor
        counts them: bar 1 starts at time 0), written by the model given the music before *and* after them
        (at most `context` rows of it, the nearest bars). Everything outside the span stays note for note
        (tracks, programs, tempi, time signatures); notes that start before the span and sound into it stay
        too. InfillError for a span outside the piece or an empty one. Other arguments as `sample`; the
        bars the model read are in `last_result.settings["infill"]`."""
        from amadeus.infill import bar_onsets, find_span, infill_prompt, replace_span, span_notes
        from amadeus.tokenizer import load_score

        score, _ = load_score(piece)
        tok = self.tokenizer.encode(score)
        span = find_span(tok, *bars)
        layout = (self.tokenizer.default_ts, len(self.tokenizer.config.time_signatures))
        prompt, seen = infill_prompt(tok, span, context, *layout)
        opts = SamplingOptions.build(options, **{k: kwargs.pop(k) for k in list(kwargs) if k in _SETTINGS})
        opts = replace(opts, max_bars=span.last - span.first + 1, min_notes=max(1, opts.min_notes))
        result = self.sample(num, options=opts, prompt=prompt, **kwargs)
        steps = bar_onsets(tok, self.tokenizer.config.bar_lengths(), *layout)[[span.first - 1, span.last]]
        ticks = tuple(int(round(s * score.ticks_per_quarter / self.tokenizer.config.resolution)) for s in steps)
        result.settings["infill"] = {"bars": [span.first, span.last], "before": list(seen.before),
                                     "after": list(seen.after), "context": context}
        return [replace_span(score, ticks, span_notes(score, self.tokenizer, tok[:span.start], rows[len(prompt):],
                                                      tuple(steps))) for rows in result.tokens]

    def accompany(self, piece: Any, keep: Sequence[int | str], num: int = 1, *, add_instruments: str | None = None,
                  context: int = INFILL_CONTEXT, options: SamplingOptions | None = None, **kwargs: Any) -> list:
        """Write the other parts of a piece around the kept tracks (1-based track numbers or track /
        instrument names), which stay note for note and which the model reads whole before it writes (at
        most `context` rows of them). `add_instruments` ("violin,cello") chooses the new parts' instruments
        (an instrument control). InfillError for a track that does not exist. Other arguments as `sample`."""
        from amadeus.infill import InfillError, accompaniment_rows, add_notes, bar_starts, keep_tracks, parts_notes, pick_tracks
        from amadeus.tokenizer import load_score, note_rows

        score, _ = load_score(piece)
        kept = pick_tracks(score, list(keep))
        layout = (self.tokenizer.default_ts, len(self.tokenizer.config.time_signatures))
        n_bars = len(bar_starts(self.tokenizer.encode(score)))
        tok = self.tokenizer.encode(keep_tracks(score, kept))
        prompt, _ = accompaniment_rows(tok, note_rows(tok), *layout, bars=n_bars)
        if len(prompt) > context:
            raise InfillError(f"the kept parts take {len(prompt)} rows over {n_bars} bars; the model reads at most "
                              f"{context} rows of context: keep fewer bars (or pass a larger context)")
        controls = list(kwargs.pop("controls", None) or []) + ([f"instrument={add_instruments}"] if add_instruments else [])
        opts = SamplingOptions.build(options, **{k: kwargs.pop(k) for k in list(kwargs) if k in _SETTINGS})
        result = self.sample(num, options=replace(opts, max_bars=n_bars), prompt=prompt, controls=controls, **kwargs)
        result.settings["accompaniment"] = {"kept_tracks": [i + 1 for i in kept], "bars": n_bars}
        return [add_notes(keep_tracks(score, kept), parts_notes(score, self.tokenizer, rows[len(prompt):]), join=False)
                for rows in result.tokens]

    def export(self, out_dir: str | Path) -> Path:
        """Write this model as an exported folder (model.safetensors, config.json, tokenizer.json)."""
        return write_folder(self.module, out_dir, source="Amadeus.export")
