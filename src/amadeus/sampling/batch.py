"""A batch of pieces being decoded: the prompts in, then one row per piece per note, each to its own end.

Per note, for every piece still running:
  row = note sampler(C = head.context(z), guards, controls)    S head passes (`amadeus.sampling.step`)
  write the row, advance the grammar state, end the pieces that ended (EOS, max_notes, max_bars)
  z = backbone(row, KV cache)                                  one backbone step (flat: one per attribute)

Eager decoding: the running pieces are kept compact: a finished piece leaves the batch, its grammar
state and the KV cache (`KVCache.select`) at once, so that later notes cost less. The host looks at the
device once per note for that, and the note sampler looks wherever that saves work.

Static decoding: every shape is fixed from the first note on. The KV cache is preallocated for the whole
piece and frozen (`KVCache.freeze`: the next position's index lives on the device), a finished piece
stays in the batch with `running` False (its rows are computed and dropped, its counts masked), and every
note is the same sequence of kernels: `note()` samples the row, writes it at the device column `col_t`,
updates the grammar state, the ends and the counters in place, and takes the backbone step. Nothing in it
reads the device back, so `amadeus.sampling.replay` can run it compiled or as CUDA graphs captured once
per attention window (`window`: powers of two, so a handful per piece). The host reads the device once
per LOOK_EVERY notes (is any piece still running?) and once at the end (rows and ends).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
import numpy as np
import torch

from amadeus.grammar import (COL_INSTRUMENT, COL_METRIC, COL_PITCH, COL_POSITION, METRIC_EOS, METRIC_SAME_ONSET,
                             METRIC_TS_OFFSET)
from amadeus.sampling.prompts import prompt_state
from amadeus.sampling.replay import NoteReplay
from amadeus.sampling.rng import lane_keys, piece_keys, uniforms
from amadeus.tokenizer import NoteTokenizer

LOOK_EVERY = 2
"""Static decoding reads the device once per this many notes: at most LOOK_EVERY - 1 notes are computed
in vain after the last piece ends (their rows are dropped)."""

MIN_WINDOW = 128
"""The smallest attention window of a static step (positions); windows double from there to the capacity."""


def window(need: int, capacity: int) -> int:
    """The attention window for `need` filled positions: a power of two >= MIN_WINDOW, at most `capacity`."""
    w = MIN_WINDOW
    while w < need:
        w *= 2
    return min(w, capacity)


@dataclass
class State:
    """Per-piece generation state (tensors [B]); the guards read it as a `guards.PieceState`."""

    bar: torch.Tensor  # bars started so far (prompt included)
    gen_bars: torch.Tensor  # bars started by generated rows
    ts: torch.Tensor  # current time-signature index (-1 before the first bar)
    pos: torch.Tensor  # position value (1 + step) of the last note in the current bar, 0 if none
    n_in_bar: torch.Tensor  # notes in the current bar
    n_gen: torch.Tensor  # generated rows
    length: torch.Tensor  # rows fed so far (prompt + generated)
    n_onset: torch.Tensor  # notes at the last note's onset (0 if none)
    inst: torch.Tensor  # instrument of the last note in the current bar (0 if none)
    pitch: torch.Tensor  # its pitch (0 if none)

    def take(self, idx: torch.Tensor) -> State:
        return State(**{f.name: getattr(self, f.name)[idx] for f in fields(self)})

    def assign(self, other: State) -> None:
        """Copy `other` into these tensors, in place (static decoding keeps its tensors)."""
        for f in fields(self):
            getattr(self, f.name).copy_(getattr(other, f.name))


def initial_state(prompts: list[np.ndarray], tokenizer: NoteTokenizer, device: torch.device) -> State:
    """The grammar state after each prompt (bars, time signature, last position, notes in the bar)."""
    st = np.array([prompt_state(p, tokenizer) for p in prompts], dtype=np.int64).reshape(len(prompts), 7)
    lens = np.array([len(p) for p in prompts], dtype=np.int64)
    zeros = np.zeros_like(lens)
    host = np.stack([st[:, 0], zeros, st[:, 1], st[:, 2], st[:, 3], zeros, lens, st[:, 4], st[:, 5], st[:, 6]])
    t = torch.as_tensor(host, device=device)  # one copy to the device
    return State(*t.clone().unbind(0))


class Batch:
    """One batch of pieces being decoded (see the module docstring).

    Layout: `buf` [B, P + max_notes + 1, K] holds the prompts left-padded to a common length P (`valid`
    marks real rows) and then one generated row per note in the same column for every piece. Eager:
    `ids` are the running pieces and their grammar state, random keys, KV-cache rows and conditioning rows
    (`rid`) are kept compact. Static: `ids` and `rid` stay whole and `running` masks the ended pieces.
    """

    def __init__(self, run, prompts: list[np.ndarray], seeds: list[int], prefix: torch.Tensor | None,
                 prefix_mask: torch.Tensor | None):
        self.run, self.prompts, self.static = run, prompts, run.static
        dev = self.dev = run.guards.v.device
        B, K = len(prompts), run.tokenizer.K
        lens = [len(p) for p in prompts]
        self.P = P = max(lens)
        self.padded = min(lens) < P  # some prompt is left-padded
        self.cap_rows = run.backbone.max_rows
        self.flat = run.backbone.tokens_per_note > 1  # one backbone step per attribute (the flat decoder)
        if P > self.cap_rows:
            raise ValueError(f"prompt of {P} rows exceeds the model's max_notes={self.cap_rows}")
        total = P + run.max_notes + 1
        buf, valid = np.zeros((B, total, K), dtype=np.int64), np.zeros((B, total), dtype=bool)
        for b, p in enumerate(prompts):
            buf[b, P - len(p): P], valid[b, P - len(p): P] = p, True
        self.buf, self.valid = torch.as_tensor(buf, device=dev), torch.as_tensor(valid, device=dev)
        self.state = initial_state(prompts, run.tokenizer, dev)
        self.keys = piece_keys(seeds, dev)
        self.min_rows = torch.full((B,), int(run.options.min_notes), device=dev)
        self.end = torch.full((B,), total, dtype=torch.long, device=dev)  # column after each piece's last row
        self.running = torch.ones(B, dtype=torch.bool, device=dev)  # static decoding: pieces not yet ended
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
        self.replay: NoteReplay | None = None

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
        if self.static:
            return self.pre, self.pre_mask
        return (None if self.pre is None else self.pre[self.rid],
                None if self.pre_mask is None else self.pre_mask[self.rid])

    def _notes_mask(self, nm: torch.Tensor) -> torch.Tensor | None:
        """nm, or None when no row is padded (known on the host while every piece is in the batch)."""
        if len(self.ids) == len(self.prompts):
            return nm if self.padded else None
        return None if bool(nm.all()) else nm  # the uncached reference path, after a piece ended

    def _latent(self, first: bool) -> torch.Tensor:
        """z [A(x2), d] at the last filled column for the running pieces (the whole prompt if `first`)."""
        backbone, ids, col = self.run.backbone, self.ids, self.col
        if self.cache is not None and not first:
            if self.flat:  # the row's other attributes went in while it was drawn (`_advance`)
                return backbone.step(self._rows2(self.buf[ids, col - 1, -1]), self.buf.shape[-1] - 1, self.cache)
            return backbone(self._rows2(self.buf[ids, col - 1: col]), cache=self.cache).z[:, -1]
        notes, nm = self._rows2(self.buf[ids, :col]), self._rows2(self.valid[ids, :col])
        p, pm = self._conditioning()
        out = backbone(notes, prefix=p, prefix_mask=pm, cache=self.cache, notes_mask=self._notes_mask(nm))
        return out.z[:, -1]

    def _advance(self, partial: torch.Tensor) -> torch.Tensor:
        """Flat decoder: z [A(x2), d] after the first j attributes `partial` [A, j] of the row being drawn."""
        backbone, ids, col = self.run.backbone, self.ids, self.col
        if self.cache is not None:
            return backbone.step(self._rows2(partial[:, -1]), partial.shape[1] - 1, self.cache)
        notes, nm = self._rows2(self.buf[ids, :col]), self._rows2(self.valid[ids, :col])
        p, pm = self._conditioning()
        return backbone(notes, prefix=p, prefix_mask=pm, notes_mask=self._notes_mask(nm),
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
        """The next row [A, K] of every piece in the batch."""
        run, state = self.run, self.state
        u = uniforms(self.keys, state.n_gen, self.lanes).view(len(self.ids), 1 + run.sampler.steps, -1)
        C = run.head.context(z, *self._conditioning())
        tables = run.guards.note_tables(state, self.min_rows, onset_order=run.template is None)
        tok, rev = self._fixed_slots()
        ctrl = run.guards.ctrl_static.expand(len(self.ids), -1, -1)
        kw = dict(live=self.running if self.static else None, metric_open=run.template is None)
        if self.flat:
            kw["advance"] = self._advance
        return run.sampler.sample(C, tables, ctrl, state.bar, tok, rev, u, **kw)

    def _append(self, row: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write the rows, advance the grammar state and count; returns (the rows written [A, K], is_eos [A])."""
        g, state, max_bars = self.run.guards, self.state, self.run.options.max_bars
        m = row[:, COL_METRIC]
        new_bar = g.starts_bar[m.clamp(0, g.Vm - 1)]
        if max_bars is not None:  # the row that would open bar max_bars + 1 becomes EOS
            over = new_bar & (state.gen_bars >= max_bars)
            row = torch.where(over[:, None], self.eos_row, row)
            m = row[:, COL_METRIC]
            new_bar = new_bar & ~over
        is_note = row[:, COL_PITCH] > 0
        nb = new_bar.long()
        new = State(bar=state.bar + nb, gen_bars=state.gen_bars + nb,
                    ts=torch.where(m >= METRIC_TS_OFFSET, m - METRIC_TS_OFFSET, state.ts),
                    pos=torch.where(is_note, row[:, COL_POSITION], state.pos * (1 - nb)),
                    n_in_bar=state.n_in_bar * (1 - nb) + is_note.long(),
                    n_gen=state.n_gen + 1, length=state.length + 1,
                    n_onset=torch.where(is_note, torch.where(m == METRIC_SAME_ONSET, state.n_onset + 1, 1), 0),
                    inst=torch.where(is_note, row[:, COL_INSTRUMENT], state.inst * (1 - nb)),
                    pitch=torch.where(is_note, row[:, COL_PITCH], state.pitch * (1 - nb)))
        is_eos = m == METRIC_EOS
        if self.static:
            live = self.running
            self.run.counts.add_(torch.stack([(live & ~is_eos).sum(), (live & is_note).sum()]))
            self.buf.index_copy_(1, self.col_t, row[:, None])
            self.state.assign(new)
            done = live & (is_eos | (new.n_gen >= self.run.max_notes) | (new.length >= self.cap_rows))
            self.end.copy_(torch.where(done, torch.where(is_eos, self.col_t, self.col_t + 1), self.end))
            self.running.logical_and_(~done)
            self.col_t.add_(1)
        else:
            self.run.counts.add_(torch.stack([(~is_eos).sum(), is_note.sum()]))
            self.buf[self.ids, self.col] = row
            self.valid[self.ids, self.col] = True
            self.state = new
            self.col += 1
        return row, is_eos

    def _retire(self, is_eos: torch.Tensor) -> None:
        """Eager: drop the pieces that ended (EOS, max_notes, the model's context) from the running set."""
        st = self.state
        done = is_eos | (st.n_gen >= self.run.max_notes) | (st.length >= self.cap_rows)
        if not bool(done.any()):  # the host's look of this note
            return
        self.end[self.ids[done]] = torch.where(is_eos[done], self.col - 1, self.col)
        keep = (~done).nonzero().squeeze(1)
        keep2 = torch.cat([keep, keep + len(self.ids)]) if self.guided else keep
        self.ids, self.rid, self.keys = self.ids[keep], self.rid[keep2], self.keys[keep]
        self.min_rows, self.state = self.min_rows[keep], st.take(keep)
        if self.cache is not None:
            self.cache.select(keep2)

    def note(self) -> None:
        """Static decoding: one note for every piece, on the device only (no value is read back)."""
        row, _ = self._append(self._sample_row(self.z))
        if self.flat:
            z = self.run.backbone.step(self._rows2(row[:, -1]), row.shape[-1] - 1, self.cache)
        else:
            z = self.run.backbone(self._rows2(row[:, None]), cache=self.cache).z[:, -1]
        self.z.copy_(z)

    def _decode_static(self, z: torch.Tensor) -> None:
        """Static decoding from the prompt's latent z: `note()` until no piece runs (looked at once per
        LOOK_EVERY notes) or max_notes notes."""
        cache = self.cache
        cache.freeze()
        self.z = z.contiguous()
        self.col_t = torch.full((1,), self.col, dtype=torch.long, device=self.dev)
        start, per_note = cache.length, self.run.backbone.tokens_per_note
        self.replay = NoteReplay(self.note, self.dev, compile=self.run.compile)
        for i in range(self.run.max_notes):
            cache.window = window(start + (i + 1) * per_note, cache.capacity)
            self.replay(cache.window)
            if (i + 1) % LOOK_EVERY == 0 and not bool(self.running.any()):  # the host's one look
                break

    def decode(self) -> list[np.ndarray]:
        """Run every piece to its end; returns their token matrices (prompt, generated rows, EOS)."""
        z = self._latent(first=True)
        if self.static:
            self._decode_static(z)
        else:
            while len(self.ids):
                self._retire(self._append(self._sample_row(z))[1])
                if len(self.ids):
                    z = self._latent(first=False)
        buf, end = self.buf.cpu().numpy(), self.end.tolist()
        eos = self.run.tokenizer.eos_row()[None]
        return [np.concatenate([buf[b, self.P - len(p): end[b]], eos]) for b, p in enumerate(self.prompts)]
