"""The sampler's grammar guards: logit masks that keep every generated row grammatical and every user
control honoured.

`Guards` holds the static tables of the token grammar (`amadeus.grammar`) and of the user's controls
(`amadeus.controls`) on the sampler's device; per note it gives the metric values the next row may take
and the positions each of them allows (`note_tables`, from the piece's state), and per denoising step the
values every slot may take given the slots already revealed (`allowed`, arc consistent: every allowed
value can be completed into a valid row). Notes at one onset come as the tokenizer writes them, (instrument,
pitch) ascending (one note per instrument and pitch): a SAME_ONSET row goes above the note before it, so
that a piece cannot pile dozens of notes onto one onset in an order the model never saw. `consistent` tells whether slots revealed in one step agree.
All of it is batched tensor work on the device, without a branch on the data (the host never reads the
device here: static decoding captures these masks in CUDA graphs).
"""

from __future__ import annotations

from typing import NamedTuple, Protocol

import numpy as np
import torch
import torch.nn.functional as F

from amadeus.controls import Controls
from amadeus.grammar import (
    COL_CHORD,
    COL_INSTRUMENT,
    COL_METRIC,
    COL_PITCH,
    COL_POSITION,
    DRUM_INSTRUMENT,
    METRIC_EMPTY_BAR,
    METRIC_EOS,
    METRIC_NEW_BAR,
    METRIC_NEW_POSITION,
    METRIC_SAME_ONSET,
    METRIC_TS_OFFSET,
    is_bar_start,
    is_drum_pitch,
    is_note_metric,
    is_ts_change,
)
from amadeus.tokenizer import NoteTokenizer


class PieceState(Protocol):
    """What the guards read of a piece being generated (tensors [B]); the sampler's loop state has it."""

    bar: torch.Tensor  # bars started so far (prompt included)
    ts: torch.Tensor  # current time-signature index (-1 before the first bar)
    pos: torch.Tensor  # position value (1 + step) of the last note in the current bar, 0 if none
    n_in_bar: torch.Tensor  # notes in the current bar
    n_gen: torch.Tensor  # generated rows
    n_onset: torch.Tensor  # notes at the last note's onset
    inst: torch.Tensor  # instrument of the last note (0 if none): a SAME_ONSET row continues from it
    pitch: torch.Tensor  # pitch of the last note (0 if none)


class NoteTables(NamedTuple):
    """Per-note tables of `Guards.note_tables` for a batch of B pieces."""

    allowed_metric: torch.Tensor  # bool [B, Vm]: metric values the next row may take
    compatible_position: torch.Tensor  # bool [B, Vm, Vp]: positions each metric value allows
    can_be_empty: torch.Tensor  # bool [B, Vm]: metric values of a row of zeros (EOS, empty bar, TS marker)
    onset_instrument: torch.Tensor  # [B]: a SAME_ONSET row's instrument is at least this one
    onset_pitch: torch.Tensor  # [B]: ... and with the same instrument, its pitch above this one

    def take(self, idx: torch.Tensor) -> NoteTables:
        """The tables of the pieces `idx`."""
        return NoteTables(*(t[idx] for t in self))


class Guards:
    """Static tables of the token grammar + controls, and the logit masks they imply."""

    def __init__(self, tokenizer: NoteTokenizer, controls: Controls, device: torch.device, guards: bool = True,
                 max_onset_notes: int | None = None):
        self.tok = tokenizer
        sizes = tokenizer.vocab_sizes
        self.K, self.V = len(sizes), max(sizes)
        self.Vm, self.Vp = sizes[COL_METRIC], sizes[COL_POSITION]
        self.guards = guards
        dev = device
        v = torch.arange(self.V, device=dev)
        self.v = v
        self.vocab_valid = v[None, :] < torch.tensor(sizes, device=dev)[:, None]  # [K, V]
        m = torch.arange(self.Vm, device=dev)
        self.is_eos, self.is_empty = m == METRIC_EOS, m == METRIC_EMPTY_BAR
        self.is_same, self.is_newpos = m == METRIC_SAME_ONSET, m == METRIC_NEW_POSITION
        self.is_newbar, self.is_ts = m == METRIC_NEW_BAR, is_ts_change(m)
        self.starts_bar = is_bar_start(m)  # [Vm]
        self.note_cap = is_note_metric(m)  # [Vm]
        bar_lengths = torch.as_tensor(tokenizer.config.bar_lengths(), device=dev)
        self.bar_lengths = bar_lengths
        self.ts_len = torch.zeros(self.Vm, dtype=torch.long, device=dev)
        self.ts_len[METRIC_TS_OFFSET:] = bar_lengths
        self.drum_pitch = is_drum_pitch(v)  # [V]
        self.controls = controls
        self.ts_allowed = torch.ones(self.Vm, dtype=torch.bool, device=dev)
        if controls.time_signature is not None:
            self.ts_allowed = ~self.is_ts | (m == METRIC_TS_OFFSET + controls.time_signature)
        self.density = controls.density
        self.max_onset_notes = max_onset_notes or (1 << 30)
        # controls: static masks [K, V] (built on the host, so that nothing here reads the device) and scoped rules
        vocab = np.arange(self.V)[None, :] < np.asarray(sizes)[:, None]  # [K, V]
        static = controls.static_masks(sizes)
        static[0] = vocab[0]
        static[COL_POSITION] = vocab[COL_POSITION]
        static &= vocab  # index 0 False for columns >= 1
        self.ctrl_static = torch.as_tensor(static, device=dev)
        scoped = [r for r in controls.rules if r.bars is not None]
        self.rule_lo = torch.tensor([r.bars[0] for r in scoped], dtype=torch.long, device=dev)
        self.rule_hi = torch.tensor([r.bars[1] for r in scoped], dtype=torch.long, device=dev)
        masks = np.ones((len(scoped), self.K, self.V), dtype=bool)
        for i, r in enumerate(scoped):
            masks[i, r.column, : len(r.allowed)] = r.allowed
            masks[i, r.column, len(r.allowed):] = False
        self.rule_masks = torch.as_tensor(masks, device=dev)
        self.chords = torch.tensor(controls.chords, dtype=torch.long, device=dev)
        single = static[:, 1:].sum(-1) == 1  # `fixed_columns` of the static masks, on the host
        single[:2] = False
        single[COL_PITCH] &= not static[COL_INSTRUMENT, DRUM_INSTRUMENT]
        self.metric_first = controls.scoped() or bool(single.any())

    # -- per-note tables -------------------------------------------------------------------------

    def note_tables(self, st: PieceState, min_rows: torch.Tensor, onset_order: bool = True) -> NoteTables:
        """Metric mask [B, Vm], position intervals per metric value [B, Vm, Vp], empty-row capability, and
        the note a SAME_ONSET row continues from (none when `onset_order` is off: a template fixes the order
        of its rows, `regenerate`)."""
        started = st.bar > 0
        cur_len = torch.where(st.ts >= 0, self.bar_lengths[st.ts.clamp_min(0)], torch.zeros_like(st.ts))
        lo, hi = self.density if self.density else (0, 1 << 30)
        can_leave = (st.n_in_bar >= lo) | ~started
        can_add = (st.pos > 0) & (st.n_in_bar < hi)
        empty_ok = torch.full_like(started, lo == 0)
        eos_ok = started & can_leave & (st.n_gen >= min_rows)
        B = st.bar.shape[0]
        ms = torch.zeros(B, self.Vm, dtype=torch.bool, device=st.bar.device)
        ms |= self.is_eos & eos_ok[:, None]
        ms |= self.is_empty & (started & can_leave & empty_ok)[:, None]
        ms |= self.is_same & (can_add & (st.n_onset < self.max_onset_notes))[:, None]
        ms |= self.is_newpos & (can_add & (st.pos < cur_len))[:, None]
        ms |= self.is_newbar & (started & can_leave)[:, None]
        ms |= self.is_ts & self.ts_allowed & can_leave[:, None]
        nonnote_cap = self.is_eos | self.is_empty | (self.is_ts & empty_ok[:, None])  # [B, Vm]
        pos = st.pos[:, None]
        L = cur_len[:, None]
        plo = torch.where(self.is_same, pos, torch.where(self.is_newpos, pos + 1, torch.ones_like(pos)))
        phi = torch.where(self.is_same, pos,
                          torch.where(self.is_newpos | self.is_newbar, L,
                                      torch.where(self.is_ts, self.ts_len.expand_as(plo), torch.full_like(plo, -1))))
        vp = torch.arange(self.Vp, device=pos.device)
        compat = (vp >= plo[..., None]) & (vp <= phi[..., None]) & (vp > 0)  # [B, Vm, Vp]
        compat |= nonnote_cap[..., None] & (vp == 0)
        return NoteTables(allowed_metric=ms, compatible_position=compat, can_be_empty=nonnote_cap,
                          onset_instrument=st.inst if onset_order else torch.zeros_like(st.inst),
                          onset_pitch=st.pitch if onset_order else torch.zeros_like(st.pitch))

    def row_controls(self, bar: torch.Tensor) -> torch.Tensor:
        """Allowed note-row values [B, K, V] for rows in bars `bar` [B] (1-based)."""
        ctrl = self.ctrl_static.expand(bar.shape[0], -1, -1)
        if len(self.rule_lo):
            active = (bar[:, None] >= self.rule_lo) & (bar[:, None] <= self.rule_hi)  # [B, R]
            ctrl = ctrl & ((~active)[:, :, None, None] | self.rule_masks).all(1)
        if len(self.chords):
            c = self.controls
            start = c.chord_start
            stop = c.chord_bars[1] if c.chord_bars else 1 << 30
            on = (bar >= start) & (bar <= stop)
            value = self.chords[(bar - start).clamp_min(0) % len(self.chords)]
            chord = F.one_hot(value, self.V).bool()
            ctrl = ctrl.clone()
            ctrl[:, COL_CHORD] = torch.where(on[:, None], chord & self.vocab_valid[COL_CHORD], ctrl[:, COL_CHORD])
        return ctrl

    def fixed_columns(self, ctrl: torch.Tensor) -> torch.Tensor:
        """[B, K] bool: columns whose control leaves exactly one value (pitch only when drums are excluded)."""
        single = ctrl[..., 1:].sum(-1) == 1
        single[..., :2] = False  # metric and position are never fixed by a control
        single[..., COL_PITCH] &= ~ctrl[..., COL_INSTRUMENT, DRUM_INSTRUMENT]
        return single

    # -- masks -------------------------------------------------------------------------------------

    def allowed(self, t: NoteTables, ctrl: torch.Tensor, tok: torch.Tensor, rev: torch.Tensor,
                note_forced: torch.Tensor | None = None) -> torch.Tensor:
        """Allowed values [B, K, V] of every slot given the revealed ones (arc consistent: every allowed
        value of a slot can be completed into a valid row). Revealed slots get their own value only."""
        B = tok.shape[0]
        own = F.one_hot(tok.clamp(0, self.V - 1), self.V).bool()
        if not self.guards:  # no grammar: the vocabularies and the user controls only
            free = torch.where(self.v == 0, self.vocab_valid, ctrl)
            free[:, :2] = self.vocab_valid[:2]
            return torch.where(rev[..., None], own, free)
        rv, tv = rev[:, 1:], tok[:, 1:]
        note_ok = ~(rv & (tv == 0)).any(1)
        nonnote_ok = ~(rv & (tv > 0)).any(1)
        if note_forced is not None:
            nonnote_ok &= ~note_forced
        inst, pitch_nonzero, same_inst, same_pitch = self._instrument_pitch(t, ctrl, tok, rev)
        same_ok = same_inst.any(1)
        zero = self.v == 0
        # metric and position
        ms, compat, nonnote_cap = t.allowed_metric, t.compatible_position, t.can_be_empty
        ms = ms & (~self.is_same | same_ok[:, None])
        mc = ms & ((self.note_cap & note_ok[:, None]) | (nonnote_cap & nonnote_ok[:, None]))
        p_val = tok[:, COL_POSITION].clamp(0, self.Vp - 1)
        p_compat = compat.gather(2, p_val[:, None, None].expand(B, self.Vm, 1)).squeeze(2)  # [B, Vm]
        mc &= p_compat | ~rev[:, COL_POSITION, None]
        m_onehot = F.one_hot(tok[:, COL_METRIC].clamp(0, self.Vm - 1), self.Vm).bool()
        meff = torch.where(rev[:, COL_METRIC, None], m_onehot, mc)
        note_ok &= (meff & self.note_cap).any(1)
        nonnote_ok &= (meff & nonnote_cap).any(1)
        pos = (compat & meff[..., None]).any(1)  # [B, Vp]
        pos &= torch.where(torch.arange(self.Vp, device=tok.device) == 0, nonnote_ok[:, None], note_ok[:, None])
        out = torch.where(zero, nonnote_ok[:, None, None], note_ok[:, None, None] & ctrl)  # [B, K, V]
        same_only = ~(meff & self.note_cap & ~self.is_same).any(1, keepdim=True)  # a note row here is SAME_ONSET
        out[:, COL_INSTRUMENT] = torch.where(zero, nonnote_ok[:, None],
                                             note_ok[:, None] & torch.where(same_only, same_inst, inst))
        out[:, COL_PITCH] = torch.where(zero, nonnote_ok[:, None],
                                        note_ok[:, None] & torch.where(same_only, same_pitch, pitch_nonzero))
        out[:, COL_METRIC, : self.Vm] = mc
        out[:, COL_METRIC, self.Vm:] = False
        out[:, COL_POSITION, : self.Vp] = pos
        out[:, COL_POSITION, self.Vp:] = False
        return torch.where(rev[..., None], own, out)

    def _instrument_pitch(self, t: NoteTables, ctrl: torch.Tensor, tok: torch.Tensor, rev: torch.Tensor):
        """The nonzero instruments and pitches [B, V] a note row may take given the revealed slots (drums
        play drum sounds, pitched notes obey the pitch controls), and those a SAME_ONSET row may take:
        (instrument, pitch) above the previous note's. Returns (inst, pitch, same_inst, same_pitch)."""
        v, zero = self.v, self.v == 0
        pitch_nz = rev[:, COL_PITCH] & (tok[:, COL_PITCH] > 0)
        p = tok[:, COL_PITCH].clamp(0, self.V - 1)
        pitch_rule = ctrl[:, COL_PITCH] & ~zero  # [B, V]
        inst = ctrl[:, COL_INSTRUMENT] & ~zero
        inst[:, DRUM_INSTRUMENT] &= self.drum_pitch[p] | ~pitch_nz
        inst[:, 1:DRUM_INSTRUMENT] &= (pitch_rule.gather(1, p[:, None]) | ~pitch_nz[:, None])
        i_val = tok[:, COL_INSTRUMENT].clamp(0, self.V - 1)
        inst_set = torch.where(rev[:, COL_INSTRUMENT, None], F.one_hot(i_val, self.V).bool() & ~zero, inst)
        pitch = ((inst_set[:, DRUM_INSTRUMENT, None] & self.drum_pitch)
                 | (inst_set[:, 1:DRUM_INSTRUMENT].any(1, keepdim=True) & pitch_rule))
        pitch_set = torch.where(pitch_nz[:, None], F.one_hot(p, self.V).bool(), pitch)
        pi, pp = t.onset_instrument[:, None], t.onset_pitch[:, None]  # [B, 1]
        pi_pitches = torch.where(pi == DRUM_INSTRUMENT, self.drum_pitch, pitch_rule) & pitch_set & (v > pp)
        same_inst = inst_set & ((v > pi) | ((v == pi) & pi_pitches.any(1, keepdim=True)))
        above = same_inst & (v > pi)
        same_pitch = ((above[:, DRUM_INSTRUMENT, None] & self.drum_pitch)
                      | (above[:, 1:DRUM_INSTRUMENT].any(1, keepdim=True) & pitch_rule)
                      | (same_inst.gather(1, pi) & pi_pitches)) & pitch_set
        return inst, pitch, same_inst, same_pitch

    def consistent(self, t: NoteTables, ctrl: torch.Tensor, tok: torch.Tensor,
                   rev: torch.Tensor) -> torch.Tensor:
        """[B] bool: the revealed slots agree (zero-ness, metric/position, instrument/pitch, onset order)."""
        B = tok.shape[0]
        if not self.guards:
            return torch.ones(B, dtype=torch.bool, device=tok.device)
        rv, tv = rev[:, 1:], tok[:, 1:]
        has_zero = (rv & (tv == 0)).any(1)
        has_nz = (rv & (tv > 0)).any(1)
        ok = ~(has_zero & has_nz)
        m = tok[:, COL_METRIC].clamp(0, self.Vm - 1)
        m_rev = rev[:, COL_METRIC]
        nonnote = t.can_be_empty.gather(1, m[:, None]).squeeze(1)
        ok &= ~m_rev | ((~has_nz | self.note_cap[m]) & (~has_zero | nonnote))
        p = tok[:, COL_POSITION].clamp(0, self.Vp - 1)
        both = m_rev & rev[:, COL_POSITION]
        ok &= ~both | t.compatible_position[torch.arange(B, device=tok.device), m, p]
        i, h = tok[:, COL_INSTRUMENT], tok[:, COL_PITCH].clamp(0, self.V - 1)
        both = rev[:, COL_INSTRUMENT] & rev[:, COL_PITCH] & (i > 0) & (h > 0)
        fits = torch.where(i == DRUM_INSTRUMENT, self.drum_pitch[h],
                           ctrl[:, COL_PITCH].gather(1, h[:, None]).squeeze(1))
        ok &= ~both | fits
        # onset order: a SAME_ONSET note goes above the previous note's (instrument, pitch)
        same_ok = self._instrument_pitch(t, ctrl, tok, rev)[2].any(1)
        return ok & (~(m_rev & (m == METRIC_SAME_ONSET)) | same_ok)
