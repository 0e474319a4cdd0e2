"""The generation loop: one backbone step per note (KV cache), then the per-note step, for a batch of pieces.

Per note, for every piece still running:
  z = backbone(last row, KV cache)               one backbone step (the flat decoder: one per attribute)
  C = head.context(z, text prefix)               once per note
  row = note sampler(C, guards, controls)        S head passes (`amadeus.sampling.step`)
A piece stops at its own EOS (finished pieces leave the batch and the KV cache), at `max_notes`
generated rows, or where its bar `max_bars` + 1 would begin (that row becomes EOS).

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

from amadeus.controls import Controls, parse_controls
from amadeus.grammar import COL_METRIC, COL_PITCH, COL_POSITION, METRIC_EOS, METRIC_TS_OFFSET
from amadeus.sampling.guards import Guards
from amadeus.sampling.options import SamplingOptions
from amadeus.sampling.prompts import as_tokens, is_score, prompt_state, template_slots
from amadeus.sampling.rng import lane_keys, piece_keys, uniforms
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


@dataclass
class _State:
    """Per-piece generation state (tensors [B]); the guards read it as a `guards.PieceState`."""

    bar: torch.Tensor  # bars started so far (prompt included)
    gen_bars: torch.Tensor  # bars started by generated rows
    ts: torch.Tensor  # current time-signature index (-1 before the first bar)
    pos: torch.Tensor  # position value (1 + step) of the last note in the current bar, 0 if none
    n_in_bar: torch.Tensor  # notes in the current bar
    n_gen: torch.Tensor  # generated rows
    length: torch.Tensor  # rows fed so far (prompt + generated)

    def take(self, idx: torch.Tensor) -> "_State":
        return _State(**{k: v[idx] for k, v in self.__dict__.items()})


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
        return run.sample(prompts, seeds, prefix, prefix_mask)
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

    @classmethod
    def start(cls, backbone: Any, head: Any, tokenizer: NoteTokenizer, controls: Controls,
              options: SamplingOptions, guidance: float, max_notes: int, template: Any,
              result: SampleResult) -> _Run:
        """Build the guards and the note sampler on the backbone's device."""
        dev = next(backbone.parameters()).device
        guards = Guards(tokenizer, controls, dev, guards=options.guards)
        temps, tps, tks = options.per_attribute(tokenizer.attribute_names)
        kind = AttributeSampler if head.autoregressive else NoteSampler
        sampler = kind(head, guards, options.steps_for(tokenizer.K), temps, tps, tks, guidance,
                       options.reveal_order(tokenizer.attribute_names), options.reveal_threshold,
                       options.plausibility)
        if template is not None:
            template = (torch.as_tensor(template[0], device=dev), torch.as_tensor(template[1], device=dev))
        return cls(backbone, head, tokenizer, guards, sampler, options, max_notes, template, result)

    def sample(self, prompts: list[np.ndarray], seeds: list[int], prefix: torch.Tensor | None,
               prefix_mask: torch.Tensor | None) -> SampleResult:
        """Decode every piece, `batch_size` at a time, into `self.result`."""
        result, sampler = self.result, self.sampler
        dev = self.guards.v.device
        start = time.perf_counter()
        num = len(prompts)
        bs = self.options.batch_size or num
        for lo in range(0, num, bs):
            hi = min(num, lo + bs)
            pre = None if prefix is None else prefix[lo:hi].to(dev)
            pre_mask = None if prefix_mask is None else prefix_mask[lo:hi].to(dev)
            result.tokens.extend(_Batch(self, prompts[lo:hi], seeds[lo:hi], pre, pre_mask).decode())
        result.seconds = time.perf_counter() - start
        result.guard_interventions = int(sampler.guard_count)
        result.control_interventions = int(sampler.control_count)
        result.conflicts = int(sampler.conflict_count)
        result.head_passes = sampler.passes
        return result


class _Batch:
    """One batch of pieces being decoded, one row per piece per step.

    Layout: `buf` [B, P + max_notes + 1, K] holds the prompts left-padded to a common length P
    (`valid` marks real rows) and then one generated row per step in the same column `col` for every
    piece still running. `ids` are the running pieces; their grammar state, random keys, KV-cache rows
    and conditioning rows (`rid`) are kept compact (finished pieces are dropped from all of them).
    """

    def __init__(self, run: _Run, prompts: list[np.ndarray], seeds: list[int], prefix: torch.Tensor | None,
                 prefix_mask: torch.Tensor | None):
        self.run, self.prompts = run, prompts
        dev = self.dev = run.guards.v.device
        B, K = len(prompts), run.tokenizer.K
        lens = torch.tensor([len(p) for p in prompts], device=dev)
        self.P = P = int(lens.max())
        self.cap_rows = run.backbone.max_rows
        self.flat = run.backbone.tokens_per_note > 1  # one backbone step per attribute (the flat decoder)
        if P > self.cap_rows:
            raise ValueError(f"prompt of {P} rows exceeds the model's max_notes={self.cap_rows}")
        total = P + run.max_notes + 1
        self.buf = torch.zeros(B, total, K, dtype=torch.long, device=dev)
        self.valid = torch.zeros(B, total, dtype=torch.bool, device=dev)
        for b, p in enumerate(prompts):
            self.buf[b, P - len(p): P] = torch.as_tensor(p, device=dev)
            self.valid[b, P - len(p): P] = True
        self.state = _initial_state(prompts, run.tokenizer, lens)
        self.keys = piece_keys(seeds, dev)
        self.min_rows = torch.full((B,), int(run.options.min_notes), device=dev)
        self.end = torch.full((B,), total, dtype=torch.long, device=dev)  # column after each piece's last row
        self.guided = run.sampler.guidance != 1.0
        self.pre, self.pre_mask = self._prefix_rows(prefix, prefix_mask)
        self.ids = torch.arange(B, device=dev)  # running pieces (rows of buf)
        self.rid = torch.arange(2 * B if self.guided else B, device=dev)  # their conditioning rows
        self.cache = None
        if run.options.use_cache:
            extra = 0 if self.pre is None else self.pre.shape[1]
            self.cache = run.backbone.new_cache(len(self.rid), capacity=total + extra)
        self.col = P
        self.lanes = lane_keys((1 + run.sampler.steps) * K, dev)
        self.eos_row = torch.as_tensor(run.tokenizer.eos_row(), device=dev)

    def _prefix_rows(self, prefix: torch.Tensor | None, prefix_mask: torch.Tensor | None):
        """Conditioning rows [B(, x2 with guidance: conditional then unconditional = fully masked prefix)]."""
        if prefix is None or not self.guided:
            return prefix, prefix_mask
        real = prefix_mask if prefix_mask is not None else torch.ones(prefix.shape[:2], dtype=torch.bool,
                                                                       device=self.dev)
        return torch.cat([prefix, prefix]), torch.cat([real, torch.zeros_like(real)])

    def _rows2(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, x]) if self.guided else x

    def _conditioning(self) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """The running pieces' conditioning rows (prefix, mask), or None."""
        return (None if self.pre is None else self.pre[self.rid],
                None if self.pre_mask is None else self.pre_mask[self.rid])

    def _latent(self, first: bool) -> torch.Tensor:
        """z [A(x2), d] at the last filled column for the running pieces (the whole prompt if `first`)."""
        backbone, ids, col = self.run.backbone, self.ids, self.col
        if self.cache is not None and not first:
            if self.flat:  # the row's other attributes went in while it was drawn (`_advance`)
                return backbone.step(self._rows2(self.buf[ids, col - 1, -1]), self.buf.shape[-1] - 1, self.cache)
            return backbone(self._rows2(self.buf[ids, col - 1: col]), cache=self.cache).z[:, -1]
        notes, nm = self._rows2(self.buf[ids, :col]), self._rows2(self.valid[ids, :col])
        p, pm = self._conditioning()
        out = backbone(notes, prefix=p, prefix_mask=pm, cache=self.cache,
                       notes_mask=None if bool(nm.all()) else nm)
        return out.z[:, -1]

    def _advance(self, partial: torch.Tensor) -> torch.Tensor:
        """Flat decoder: z [A(x2), d] after the first j attributes `partial` [A, j] of the row being drawn."""
        backbone, ids, col = self.run.backbone, self.ids, self.col
        if self.cache is not None:
            return backbone.step(self._rows2(partial[:, -1]), partial.shape[1] - 1, self.cache)
        notes, nm = self._rows2(self.buf[ids, :col]), self._rows2(self.valid[ids, :col])
        p, pm = self._conditioning()
        return backbone(notes, prefix=p, prefix_mask=pm, notes_mask=None if bool(nm.all()) else nm,
                        partial=self._rows2(partial)).z[:, -1]

    def _fixed_slots(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Slots fixed before the first denoising step (tok, revealed) [A, K]: the template's kept slots."""
        A, K = len(self.ids), self.run.tokenizer.K
        if self.run.template is None:
            return (torch.zeros(A, K, dtype=torch.long, device=self.dev),
                    torch.zeros(A, K, dtype=torch.bool, device=self.dev))
        t_rows, t_free = self.run.template
        j = self.state.n_gen.clamp_max(len(t_rows) - 1)
        rev = ~t_free[j]
        return torch.where(rev, t_rows[j], torch.zeros_like(t_rows[j])), rev

    def _sample_row(self, z: torch.Tensor) -> torch.Tensor:
        """The next row [A, K] of every running piece."""
        run, state = self.run, self.state
        u = uniforms(self.keys, state.n_gen, self.lanes).view(len(self.ids), 1 + run.sampler.steps, -1)
        C = run.head.context(z, *self._conditioning())
        tables = run.guards.note_tables(state, self.min_rows)
        tok, rev = self._fixed_slots()
        ctrl = run.guards.ctrl_static.expand(len(self.ids), -1, -1)
        if self.flat:
            return run.sampler.sample(C, tables, ctrl, state.bar, tok, rev, u, advance=self._advance)
        return run.sampler.sample(C, tables, ctrl, state.bar, tok, rev, u)

    def _append(self, row: torch.Tensor) -> torch.Tensor:
        """Write the rows at column `col` and advance the grammar state; returns is_eos [A]."""
        g, state, max_bars = self.run.guards, self.state, self.run.options.max_bars
        m = row[:, COL_METRIC]
        new_bar = g.starts_bar[m.clamp(0, g.Vm - 1)]
        if max_bars is not None:  # the row that would open bar max_bars + 1 becomes EOS
            over = new_bar & (state.gen_bars >= max_bars)
            row = torch.where(over[:, None], self.eos_row, row)
            m = row[:, COL_METRIC]
            new_bar = new_bar & ~over
        self.buf[self.ids, self.col] = row
        self.valid[self.ids, self.col] = True
        is_note = row[:, COL_PITCH] > 0
        nb = new_bar.long()
        self.state = _State(
            bar=state.bar + nb, gen_bars=state.gen_bars + nb,
            ts=torch.where(m >= METRIC_TS_OFFSET, m - METRIC_TS_OFFSET, state.ts),
            pos=torch.where(is_note, row[:, COL_POSITION], state.pos * (1 - nb)),
            n_in_bar=state.n_in_bar * (1 - nb) + is_note.long(),
            n_gen=state.n_gen + 1, length=state.length + 1)
        is_eos = m == METRIC_EOS
        self.run.result.rows += len(self.ids) - int(is_eos.sum())
        self.run.result.notes += int(is_note.sum())
        self.col += 1
        return is_eos

    def _retire(self, is_eos: torch.Tensor) -> None:
        """Drop the pieces that ended (EOS, max_notes, the model's context) from the running set."""
        st = self.state
        done = is_eos | (st.n_gen >= self.run.max_notes) | (st.length >= self.cap_rows)
        if not bool(done.any()):
            return
        self.end[self.ids[done]] = torch.where(is_eos[done], self.col - 1, self.col)
        keep = (~done).nonzero().squeeze(1)
        keep2 = torch.cat([keep, keep + len(self.ids)]) if self.guided else keep
        self.ids, self.rid, self.keys = self.ids[keep], self.rid[keep2], self.keys[keep]
        self.min_rows, self.state = self.min_rows[keep], st.take(keep)
        if self.cache is not None:
            self.cache.select(keep2)

    def decode(self) -> list[np.ndarray]:
        """Run every piece to its end; returns their token matrices (prompt, generated rows, EOS)."""
        z = self._latent(first=True)
        while len(self.ids):
            self._retire(self._append(self._sample_row(z)))
            if len(self.ids):
                z = self._latent(first=False)
        eos = self.run.tokenizer.eos_row()[None]
        return [np.concatenate([self.buf[b, self.P - len(p): int(self.end[b])].cpu().numpy(), eos])
                for b, p in enumerate(self.prompts)]


def _initial_state(prompts: list[np.ndarray], tokenizer: NoteTokenizer, lens: torch.Tensor) -> _State:
    """The grammar state after each prompt (bars, time signature, last position, notes in the bar)."""
    dev = lens.device
    st = [prompt_state(p, tokenizer) for p in prompts]
    zeros = torch.zeros(len(prompts), dtype=torch.long, device=dev)
    return _State(bar=torch.tensor([s[0] for s in st], device=dev), gen_bars=zeros.clone(),
                  ts=torch.tensor([s[1] for s in st], device=dev), pos=torch.tensor([s[2] for s in st], device=dev),
                  n_in_bar=torch.tensor([s[3] for s in st], device=dev), n_gen=zeros.clone(), length=lens.clone())


def regenerate(model: Any, piece: Any, attributes: Sequence[str], rows: Any = None, num: int = 1,
               **kwargs: Any) -> SampleResult:
    """Re-sample `attributes` (any of chord, tempo, instrument, pitch, duration, velocity) of the note
    rows of an existing piece (a token matrix, Score or MIDI path), keeping everything else: e.g.
    re-voice velocities or re-orchestrate instruments. rows: None (every note) or the row numbers
    (1 = first row after SOS) / a boolean mask over the rows after SOS. Other options as `generate`."""
    return generate(model, num, template=piece, regenerate=attributes, regenerate_rows=rows, **kwargs)
