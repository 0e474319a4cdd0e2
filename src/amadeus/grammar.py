"""The note matrix's grammar: what a row of the [N, K] token matrix is, and which rows may follow.

The layout (columns, metric values) is defined here once; `amadeus.tokenizer` re-exports it. Every
module that asks "is this a note row", "does this row start a bar", "where does the piece end" or
"which time signature is in force" calls the helpers below instead of re-deriving the answer:

    is_note_metric(m), is_bar_start(m), is_ts_change(m), is_drum_pitch(p)   numpy or torch, elementwise
    note_rows(tok), cut_at_eos(tok), ts_per_row(m, default_ts, n_ts)        numpy token matrices

Also here: `syntax_errors` (the evaluation's independent grammar check, one flag per error kind and
row) and `Grammar`, the sampler's guards: logit masks that keep every generated row grammatical.

numpy only at import time: the tokenizer (and with it every preprocessing worker) imports this
module and stays free of torch; `Grammar` imports torch in the methods that run on tensors.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple, Protocol, TypeVar

import numpy as np

from amadeus.theory import DRUM_PITCHES

if TYPE_CHECKING:
    import torch

    from amadeus.controls import Controls
    from amadeus.tokenizer import NoteTokenizer

# ----------------------------------------------------------------------------------------------
# the layout (docs/interfaces.md, "Token matrix")

ATTRIBUTES = ("metric", "position", "chord", "tempo", "instrument", "pitch", "duration", "velocity")
COL_METRIC, COL_POSITION, COL_CHORD, COL_TEMPO, COL_INSTRUMENT, COL_PITCH, COL_DURATION, COL_VELOCITY = range(8)

METRIC_PAD = 0
METRIC_SOS = 1
METRIC_EOS = 2
METRIC_EMPTY_BAR = 3
METRIC_SAME_ONSET = 4
METRIC_NEW_POSITION = 5
METRIC_NEW_BAR = 6
METRIC_TS_OFFSET = 7  # NEW_BAR_TS with time signature i is METRIC_TS_OFFSET + i

DRUM_INSTRUMENT = 129  # instrument column value of drums (1 + GM program for the others)

# ----------------------------------------------------------------------------------------------
# row predicates (numpy arrays or torch tensors: elementwise operators only)

ArrayOrTensor = TypeVar("ArrayOrTensor", np.ndarray, "torch.Tensor")


def is_ts_change(m: ArrayOrTensor) -> ArrayOrTensor:
    """Bool mask of metric values that start a bar with a time signature (NEW_BAR_TS)."""
    return m >= METRIC_TS_OFFSET


def is_note_metric(m: ArrayOrTensor) -> ArrayOrTensor:
    """Bool mask of metric values a note row can have (SAME_ONSET, NEW_POSITION, NEW_BAR, NEW_BAR_TS).

    A NEW_BAR_TS row without a pitch is the marker of an empty bar: `note_rows` tells them apart.
    """
    return (m == METRIC_SAME_ONSET) | (m == METRIC_NEW_POSITION) | (m == METRIC_NEW_BAR) | is_ts_change(m)


def is_bar_start(m: ArrayOrTensor) -> ArrayOrTensor:
    """Bool mask of metric values that start a bar (EMPTY_BAR, NEW_BAR, NEW_BAR_TS)."""
    return (m == METRIC_EMPTY_BAR) | (m == METRIC_NEW_BAR) | is_ts_change(m)


def is_drum_pitch(p: ArrayOrTensor) -> ArrayOrTensor:
    """Bool mask of pitch column values (1 + MIDI pitch) inside the drum range DRUM_PITCHES."""
    return (p >= 1 + DRUM_PITCHES[0]) & (p <= 1 + DRUM_PITCHES[1])


# ----------------------------------------------------------------------------------------------
# token matrices (numpy)


def note_rows(tok: np.ndarray) -> np.ndarray:
    """Bool [N]: rows that carry a note (note metric and a pitch; the NEW_BAR_TS marker row has none)."""
    return is_note_metric(tok[:, COL_METRIC]) & (tok[:, COL_PITCH] > 0)


def cut_at_eos(tok: np.ndarray) -> np.ndarray:
    """The rows before the first EOS (the whole matrix when there is none)."""
    eos = np.nonzero(tok[:, COL_METRIC] == METRIC_EOS)[0]
    return tok[: eos[0]] if len(eos) else tok


def ts_per_row(m: np.ndarray, default_ts: int, n_ts: int) -> np.ndarray:
    """Int64 [N]: index of the time signature in force at each row of the metric column `m`.

    Forward fill of the NEW_BAR_TS rows (indices clipped to 0..n_ts-1); `default_ts` before the first.
    """
    m = np.asarray(m, dtype=np.int64)
    is_ts = is_ts_change(m)
    idx = np.where(is_ts, np.clip(m - METRIC_TS_OFFSET, 0, n_ts - 1), -1)
    last = np.maximum.accumulate(np.where(is_ts, np.arange(len(m)), -1))
    return np.where(last >= 0, idx[np.maximum(last, 0)], default_ts).astype(np.int64)


# ----------------------------------------------------------------------------------------------
# syntax errors (the evaluation's check of generated matrices)

SYNTAX_ERRORS = (
    "bad_metric",  # metric 0 (n/a) in a non-padding row, unknown id in any column, SOS after row 0
    "orphan_onset",  # SAME_ONSET / NEW_POSITION with no note of the same bar before it
    "position_backwards",  # NEW_POSITION at or before the previous onset of the bar
    "same_onset_moved",  # SAME_ONSET with a position different from the previous note's
    "position_outside_bar",  # position beyond the bar length of the current time signature
    "note_missing_attribute",  # a note row with 0 (n/a) in a column (pitch 0 included)
    "drum_pitch",  # a drum note outside the drum range DRUM_PITCHES
    "stray_attributes",  # SOS / EOS / EMPTY_BAR / bar-marker rows with values in note columns
    "after_eos",  # non-padding rows after the first EOS
)


def syntax_errors(tok: np.ndarray | torch.Tensor, tokenizer: NoteTokenizer) -> tuple[np.ndarray, int]:
    """Error flags of each non-padding row: (flags bool [rows, len(SYNTAX_ERRORS)], rows).

    A row may have several kinds; the 'any' rate of SyntaxErrorRate counts it once.
    """
    tok = tok.detach().cpu().numpy() if hasattr(tok, "detach") else np.asarray(tok)  # a torch tensor
    if tok.ndim != 2:
        raise ValueError(f"token matrix must be [N, K], got shape {tok.shape}")
    tok = tok.astype(np.int64)
    tok = tok[tok.any(axis=1)]  # all-zero rows are padding
    n = len(tok)
    flags = np.zeros((n, len(SYNTAX_ERRORS)), bool)
    if n == 0:
        return flags, 0
    t = cut_at_eos(tok)
    end = min(len(t) + 1, n)  # the EOS row itself is fine
    flags[end:, SYNTAX_ERRORS.index("after_eos")] = True
    t = tok[:end]
    m, pos, pitch, inst = t[:, COL_METRIC], t[:, COL_POSITION], t[:, COL_PITCH], t[:, COL_INSTRUMENT]
    unknown = ((t < 0) | (t >= np.asarray(tokenizer.vocab_sizes))).any(axis=1)
    bad = unknown | (m == METRIC_PAD)
    bad[1:] |= m[1:] == METRIC_SOS

    good_m = np.where(bad, METRIC_PAD, m)  # bad rows neither start bars nor set time signatures
    marker = is_ts_change(good_m) & (pos == 0) & (pitch == 0)  # NEW_BAR_TS row of an empty bar
    notes = ~marker & is_note_metric(good_m)
    cur_ts = ts_per_row(good_m, tokenizer.default_ts, len(tokenizer.config.time_signatures))
    bar_len = tokenizer.config.bar_lengths()[cur_ts]

    # the previous row, when it is a note of the same bar (bars start at bar rows)
    prev_note = np.zeros(len(t), bool)
    prev_note[1:] = notes[:-1]
    prev_pos = np.zeros(len(t), np.int64)
    prev_pos[1:] = pos[:-1]
    within = ~bad & ((m == METRIC_SAME_ONSET) | (m == METRIC_NEW_POSITION))

    col = {k: i for i, k in enumerate(SYNTAX_ERRORS)}
    flags[:end, col["bad_metric"]] = bad
    flags[:end, col["orphan_onset"]] = within & ~prev_note
    flags[:end, col["position_backwards"]] = (m == METRIC_NEW_POSITION) & prev_note & (pos > 0) & (pos <= prev_pos)
    flags[:end, col["same_onset_moved"]] = (m == METRIC_SAME_ONSET) & prev_note & (pos != prev_pos)
    flags[:end, col["position_outside_bar"]] = notes & (pos > 0) & (pos - 1 >= bar_len)
    flags[:end, col["note_missing_attribute"]] = notes & (t[:, 1:] == 0).any(axis=1)
    flags[:end, col["drum_pitch"]] = notes & (inst == DRUM_INSTRUMENT) & (pitch > 0) & ~is_drum_pitch(pitch)
    non_note = ~bad & ~notes
    flags[:end, col["stray_attributes"]] = non_note & (t[:, 1:] != 0).any(axis=1)
    return flags, n


# ----------------------------------------------------------------------------------------------
# the sampler's grammar guards


class PieceState(Protocol):
    """What the guards read of a piece being generated (tensors [B]); the sampler's loop state has it."""

    bar: torch.Tensor  # bars started so far (prompt included)
    ts: torch.Tensor  # current time-signature index (-1 before the first bar)
    pos: torch.Tensor  # position value (1 + step) of the last note in the current bar, 0 if none
    n_in_bar: torch.Tensor  # notes in the current bar
    n_gen: torch.Tensor  # generated rows


class NoteTables(NamedTuple):
    """Per-note tables of `Grammar.note_tables` for a batch of B pieces."""

    allowed_metric: torch.Tensor  # bool [B, Vm]: metric values the next row may take
    compatible_position: torch.Tensor  # bool [B, Vm, Vp]: positions each metric value allows
    can_be_empty: torch.Tensor  # bool [B, Vm]: metric values of a row of zeros (EOS, empty bar, TS marker)

    def take(self, idx: torch.Tensor) -> NoteTables:
        """The tables of the pieces `idx`."""
        return NoteTables(*(t[idx] for t in self))


class Grammar:
    """Static tables of the token grammar + controls, and the logit masks they imply."""

    def __init__(self, tokenizer: NoteTokenizer, controls: Controls, device: torch.device, guards: bool = True):
        import torch

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
        # controls: static masks [K, V] and scoped rules
        static = torch.as_tensor(controls.static_masks(sizes), device=dev)
        static[0] = self.vocab_valid[0]
        static[COL_POSITION] = self.vocab_valid[COL_POSITION]
        self.ctrl_static = static & self.vocab_valid  # index 0 False for columns >= 1
        scoped = [r for r in controls.rules if r.bars is not None]
        self.rule_lo = torch.tensor([r.bars[0] for r in scoped], dtype=torch.long, device=dev)
        self.rule_hi = torch.tensor([r.bars[1] for r in scoped], dtype=torch.long, device=dev)
        masks = np.ones((len(scoped), self.K, self.V), dtype=bool)
        for i, r in enumerate(scoped):
            masks[i, r.column, : len(r.allowed)] = r.allowed
            masks[i, r.column, len(r.allowed):] = False
        self.rule_masks = torch.as_tensor(masks, device=dev)
        self.chords = torch.tensor(controls.chords, dtype=torch.long, device=dev)
        self.metric_first = controls.scoped() or bool(self._fixed_columns(self.ctrl_static[None]).any())

    # -- per-note tables -------------------------------------------------------------------------

    def note_tables(self, st: PieceState, min_rows: torch.Tensor) -> NoteTables:
        """Metric mask [B, Vm], position intervals per metric value [B, Vm, Vp], empty-row capability."""
        import torch

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
        ms |= self.is_same & can_add[:, None]
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
        return NoteTables(allowed_metric=ms, compatible_position=compat, can_be_empty=nonnote_cap)

    def row_controls(self, bar: torch.Tensor) -> torch.Tensor:
        """Allowed note-row values [B, K, V] for rows in bars `bar` [B] (1-based)."""
        import torch
        import torch.nn.functional as F

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

    def _fixed_columns(self, ctrl: torch.Tensor) -> torch.Tensor:
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
        import torch
        import torch.nn.functional as F

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
        ms, compat, nonnote_cap = t.allowed_metric, t.compatible_position, t.can_be_empty
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
        zero = self.v == 0
        out = torch.where(zero, nonnote_ok[:, None, None], note_ok[:, None, None] & ctrl)  # [B, K, V]
        # instrument <-> pitch: drums play drum sounds, pitched notes obey the pitch controls
        pitch_nz = rev[:, COL_PITCH] & (tok[:, COL_PITCH] > 0)
        p = tok[:, COL_PITCH].clamp(0, self.V - 1)
        pitch_rule = ctrl[:, COL_PITCH]  # [B, V]
        drum_fits = self.drum_pitch[p] | ~pitch_nz
        pitched_fits = pitch_rule.gather(1, p[:, None]).squeeze(1) | ~pitch_nz
        inst = out[:, COL_INSTRUMENT]
        inst[:, DRUM_INSTRUMENT] &= drum_fits
        inst[:, 1:DRUM_INSTRUMENT] &= pitched_fits[:, None]
        inst_val = tok[:, COL_INSTRUMENT]
        inst_rev = rev[:, COL_INSTRUMENT]
        drum_ok = torch.where(inst_rev, inst_val == DRUM_INSTRUMENT, inst[:, DRUM_INSTRUMENT])
        pitched_ok = torch.where(inst_rev, (inst_val > 0) & (inst_val != DRUM_INSTRUMENT),
                                 inst[:, 1:DRUM_INSTRUMENT].any(1))
        pitch_nonzero = (drum_ok[:, None] & self.drum_pitch) | (pitched_ok[:, None] & pitch_rule)
        out[:, COL_PITCH] = torch.where(zero, nonnote_ok[:, None], note_ok[:, None] & pitch_nonzero)
        out[:, COL_METRIC, : self.Vm] = mc
        out[:, COL_METRIC, self.Vm:] = False
        out[:, COL_POSITION, : self.Vp] = pos
        out[:, COL_POSITION, self.Vp:] = False
        return torch.where(rev[..., None], own, out)

    def consistent(self, t: NoteTables, ctrl: torch.Tensor, tok: torch.Tensor,
                   rev: torch.Tensor) -> torch.Tensor:
        """[B] bool: the revealed slots agree pairwise (zero-ness, metric/position, instrument/pitch)."""
        import torch

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
        return ok & (~both | fits)
