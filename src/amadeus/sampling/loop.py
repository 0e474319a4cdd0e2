"""The generation loop: `generate` and `regenerate` decode batches of pieces, one note at a time.

Per note, for every piece still running: one backbone step (KV cache; the flat decoder: one per
attribute), the head's context once, then the per-note step (`amadeus.sampling.step`: S head passes, or
attribute by attribute). A piece stops at its own EOS, at `max_notes` generated rows, or where its bar
`max_bars` + 1 would begin (that row becomes EOS). The batch itself, eager or static (fixed shapes, one
host look per LOOK_EVERY notes, CUDA graphs), is `amadeus.sampling.batch`; `SamplingOptions.decode` chooses.

Also here: continuation from a prompt (the output starts with exactly the prompt's rows), regeneration
of chosen attributes of an existing piece (`regenerate`), and classifier-free guidance with a text
prefix (the conditional and unconditional rows are decoded side by side in one batch).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from amadeus.grammar import sort_onsets
from amadeus.controls import Controls, parse_controls
from amadeus.sampling.batch import Batch
from amadeus.sampling.guards import Guards
from amadeus.sampling.options import SamplingOptions
from amadeus.sampling.prompts import as_tokens, is_score, template_slots
from amadeus.sampling.step import AttributeSampler, NoteSampler
from amadeus.tokenizer import NoteTokenizer


@dataclass
class SampleResult:
    """Generated token matrices (one [N, K] int64 array per piece, SOS ... EOS) and statistics."""

    tokens: list[np.ndarray]
    seeds: list[int]
    notes: int = 0  # generated note rows (prompt excluded)
    rows: int = 0  # generated rows (notes + empty-bar rows), i.e. backbone steps per piece, summed
    seconds: float = 0.0
    guard_interventions: int = 0
    control_interventions: int = 0
    conflicts: int = 0  # same-step contradictions resolved (included in guard_interventions)
    head_passes: int = 0  # denoiser passes (batched), summed over notes
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def notes_per_s(self) -> float:
        return self.notes / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("tokens")
        d["notes_per_s"] = self.notes_per_s
        return d


def _parts(model: Any):
    for name in ("backbone", "head", "tokenizer"):
        if not hasattr(model, name):
            raise TypeError(f"generate needs an object with .backbone, .head and .tokenizer (missing .{name})")
    return model.backbone, model.head, model.tokenizer


@torch.inference_mode()
def generate(
    model: Any,
    num: int = 1,
    *,
    options: SamplingOptions | None = None,
    seed: int | Sequence[int] = 0,
    controls: Sequence[str] | Controls | None = None,
    prompt: Any = None,
    text: str | Sequence[str] | None = None,
    prefix: torch.Tensor | None = None,
    prefix_mask: torch.Tensor | None = None,
    template: Any = None,
    regenerate: Sequence[str] = (),
    regenerate_rows: Any = None,
    **settings: Any,
) -> SampleResult:
    """Sample `num` pieces. Returns token matrices (SOS ... EOS) and statistics.

    model: an AmadeusModule, or any object with .backbone (NoteTransformer), .head
        (AttributeDiffusionHead), .tokenizer and, for `text`, .encode_text(captions).
    options: how to sample (`SamplingOptions`: max_notes, max_bars, min_notes, steps, temperature, top_p,
        top_k, guidance, batch_size, use_cache, guards); each of its fields may also be given as a
        keyword here, which replaces that field (any other keyword is a TypeError).
    seed: piece i uses seed + i (or give one seed per piece). controls: see `amadeus.controls`.
    prompt: a token matrix / Score / MIDI path (or one per piece): the output starts with exactly its
        rows (see `prompt_from_midi` for the first N bars). text / prefix (+ prefix_mask): conditioning,
        mixed with the unconditional logits by `options.guidance`.
    template / regenerate / regenerate_rows: see `regenerate` (re-sample chosen attributes of a piece).
    """
    opts = SamplingOptions.build(options, **settings)
    backbone, head, tokenizer = _parts(model)
    if not isinstance(num, int) or num < 1:
        raise ValueError(f"num must be a positive integer, got {num!r}")
    seeds = _seeds(seed, num)
    ctl = parse_controls(controls, tokenizer)
    prompts = _prompts(prompt, num, tokenizer)
    max_notes, tmpl = opts.max_notes, None
    if template is not None and head.autoregressive:
        raise ValueError(f"regenerate is not supported by the {head.name!r} decoder: it draws the attributes "
                         "left to right and cannot condition on the kept attributes that come later; use a "
                         "model trained with decoder='amadeus'")
    if template is not None:
        tmpl = template_slots(template, tokenizer, regenerate, regenerate_rows)
        prompts = [tokenizer.sos_row()[None]] * num
        max_notes = len(tmpl[0])
    prefix, prefix_mask = _conditioning(model, num, text, prefix, prefix_mask)
    guidance = opts.guidance_for(prefix is not None)

    was_training = backbone.training, head.training
    backbone.eval()
    head.eval()
    try:
        result = SampleResult(tokens=[], seeds=seeds, settings=dict(
            num=num, **opts.as_dict(), seed=seed if isinstance(seed, int) else seeds, controls=list(ctl.specs),
            decoder=head.name, text=text if text is None or isinstance(text, str) else list(text)))
        result.settings.update(max_notes=max_notes, steps=opts.steps_for(tokenizer.K), guidance=guidance)
        run = _Run.start(backbone, head, tokenizer, ctl, opts, guidance, max_notes, tmpl, result)
        result = run.sample(prompts, seeds, prefix, prefix_mask)
        if tmpl is not None:  # a re-drawn instrument or pitch may leave an onset's notes out of order
            result.tokens = [sort_onsets(t) for t in result.tokens]
        return result
    finally:
        backbone.train(was_training[0])
        head.train(was_training[1])


def _seeds(seed: int | Sequence[int], num: int) -> list[int]:
    """One seed per piece: seed + i, or the given list."""
    seeds = [int(seed) + i for i in range(num)] if isinstance(seed, (int, np.integer)) else [int(s) for s in seed]
    if len(seeds) != num:
        raise ValueError(f"got {len(seeds)} seeds for {num} pieces")
    return seeds


def _prompts(prompt: Any, num: int, tokenizer: NoteTokenizer) -> list[np.ndarray]:
    """One prompt token matrix per piece: none (SOS only), one for all, or a list/tuple with one each."""

    def single(x: Any) -> bool:
        return isinstance(x, (str, Path, np.ndarray)) or is_score(x)

    if prompt is None:
        return [tokenizer.sos_row()[None]] * num
    if isinstance(prompt, (list, tuple)) and len(prompt) and single(prompt[0]):
        if len(prompt) != num:
            raise ValueError(f"got {len(prompt)} prompts for {num} pieces")
        return [as_tokens(p, tokenizer, "prompt") for p in prompt]
    return [as_tokens(prompt, tokenizer, "prompt")] * num


def _conditioning(model: Any, num: int, text: str | Sequence[str] | None, prefix: torch.Tensor | None,
                  prefix_mask: torch.Tensor | None) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The prefix [num, P, D] (+ mask) to condition on: the encoded captions, or the given prefix."""
    if text is not None:
        if prefix is not None:
            raise ValueError("give text or prefix, not both")
        if getattr(model, "text_encoder", None) is None:
            raise ValueError("this model has no text encoder (trained without text): drop --text")
        captions = [text] * num if isinstance(text, str) else list(text)
        if len(captions) != num:
            raise ValueError(f"got {len(captions)} captions for {num} pieces")
        prefix, prefix_mask = model.encode_text(captions)
    if prefix is not None:
        if prefix.dim() != 3 or prefix.shape[0] not in (1, num):
            raise ValueError(f"prefix must be [num or 1, P, D], got {tuple(prefix.shape)}")
        if prefix.shape[0] == 1:
            prefix = prefix.expand(num, -1, -1)
            prefix_mask = None if prefix_mask is None else prefix_mask.expand(num, -1)
    return prefix, prefix_mask


@dataclass
class _Run:
    """What the batches of one `generate` call share: the networks, the grammar, the per-note sampler
    (which also counts interventions), the limits, the regeneration template and the result."""

    backbone: Any
    head: Any
    tokenizer: NoteTokenizer
    guards: Guards
    sampler: NoteSampler
    options: SamplingOptions
    max_notes: int  # options.max_notes, or the template's length when regenerating
    template: tuple[torch.Tensor, torch.Tensor] | None  # (rows [T, K], free slots [T, K]) on the device
    result: SampleResult  # filled batch by batch
    decode: str  # options.decode resolved for the device: "eager", "static" or "compile"
    counts: torch.Tensor  # [2] long on the device: generated rows (EOS excluded), note rows

    @property
    def static(self) -> bool:
        return self.decode != "eager"

    @property
    def compile(self) -> bool:
        return self.decode == "compile"

    @classmethod
    def start(cls, backbone: Any, head: Any, tokenizer: NoteTokenizer, controls: Controls,
              options: SamplingOptions, guidance: float, max_notes: int, template: Any,
              result: SampleResult) -> _Run:
        """Build the guards and the note sampler on the backbone's device."""
        dev = next(backbone.parameters()).device
        decode = options.decode_for(dev.type)
        guards = Guards(tokenizer, controls, dev, guards=options.guards, max_onset_notes=options.max_onset_notes)
        temps, tps, tks = options.per_attribute(tokenizer.attribute_names)
        kind = AttributeSampler if head.autoregressive else NoteSampler
        sampler = kind(head, guards, options.steps_for(tokenizer.K), temps, tps, tks, guidance,
                       options.reveal_order(tokenizer.attribute_names), options.reveal_threshold,
                       options.plausibility, looks=decode == "eager")
        if template is not None:
            template = (torch.as_tensor(template[0], device=dev), torch.as_tensor(template[1], device=dev))
        counts = torch.zeros(2, dtype=torch.long, device=dev)
        return cls(backbone, head, tokenizer, guards, sampler, options, max_notes, template, result, decode, counts)

    def sample(self, prompts: list[np.ndarray], seeds: list[int], prefix: torch.Tensor | None,
               prefix_mask: torch.Tensor | None) -> SampleResult:
        """Decode every piece, `batch_size` at a time, into `self.result`."""
        result, sampler = self.result, self.sampler
        dev = self.guards.v.device
        start = time.perf_counter()
        num = len(prompts)
        bs = self.options.batch_size or num
        runs = []
        for lo in range(0, num, bs):
            hi = min(num, lo + bs)
            pre = None if prefix is None else prefix[lo:hi].to(dev)
            pre_mask = None if prefix_mask is None else prefix_mask[lo:hi].to(dev)
            batch = Batch(self, prompts[lo:hi], seeds[lo:hi], pre, pre_mask)
            result.tokens.extend(batch.decode())
            if batch.replay is not None:
                runs.append(batch.replay.mode)
        passes, guard, control, conflicts, rows, notes = torch.cat(
            [torch.stack(sampler.counters()), self.counts]).tolist()  # the counters: one read
        result.seconds = time.perf_counter() - start
        result.guard_interventions, result.control_interventions, result.conflicts = guard, control, conflicts
        result.head_passes, result.rows, result.notes = passes, rows, notes
        result.settings["decode"] = self.decode + (f" ({runs[-1]})" if runs else "")
        return result


def regenerate(model: Any, piece: Any, attributes: Sequence[str], rows: Any = None, num: int = 1,
               **kwargs: Any) -> SampleResult:
    """Re-sample `attributes` (any of chord, tempo, instrument, pitch, duration, velocity) of the note
    rows of an existing piece (a token matrix, Score or MIDI path), keeping everything else: e.g.
    re-voice velocities or re-orchestrate instruments. rows: None (every note) or the row numbers
    (1 = first row after SOS) / a boolean mask over the rows after SOS. The notes of each onset come back
    in the tokenizer's order (`grammar.sort_onsets`). Other options as `generate`."""
    return generate(model, num, template=piece, regenerate=attributes, regenerate_rows=rows, **kwargs)
