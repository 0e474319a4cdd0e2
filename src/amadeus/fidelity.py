"""What survives encode -> decode: the tokenizer's counters (EncodeStats, DecodeStats) and the per-file
fidelity report (`compare_notes`, behind `NoteTokenizer.fidelity` and `amadeus fidelity`).

Nothing is dropped silently: what the grid or the bins change is counted while encoding, and the report
attributes every lost note to the first reason that applies to it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from amadeus.vocabulary import DECODE_TPQ



@dataclass
class _Counts:
    """Integer counters that add up across files and print as a dict."""

    def as_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)

    def __add__(self, other: _Counts) -> _Counts:
        return type(self)(**{k: v + getattr(other, k) for k, v in self.as_dict().items()})


@dataclass
class EncodeStats(_Counts):
    """What encoding saw and what the grid/bins changed (all counts; encoding drops only zero-length notes
    and unisons: a pitch one instrument starts twice at one grid onset sounds once)."""

    notes: int = 0
    drum_notes: int = 0
    rows: int = 0
    bars: int = 0
    empty_bars: int = 0
    off_grid_onset: int = 0  # onset not on the grid (rounded to the nearest step)
    off_grid_duration: int = 0  # duration not a whole number of grid steps (rounded)
    zero_duration: int = 0  # duration 0 ticks (silent: dropped, the only notes encoding drops)
    duration_snapped: int = 0  # grid duration not a bin (too long or between bins): nearest bin
    unison_merged: int = 0  # a second note of one instrument and pitch at one grid onset: merged into one
    time_signature_changes: int = 0  # NEW_BAR_TS rows written after bar 0
    time_signature_moved: int = 0  # change not on a bar line (or off the grid): moved to the next one
    time_signature_replaced: int = 0  # unsupported signature replaced (same bar length, else 4/4)
    tempo_changes: int = 0  # tempo-bin changes in the file (the initial tempo counts as one)
    tempo_change_off_onset: int = 0  # of those, not reproduced at their time (no onset there)
    tempo_out_of_range: int = 0  # tempo events outside [tempo_min, tempo_max] (clipped)


@dataclass
class DecodeStats(_Counts):
    """What decoding produced and which rows it skipped (and why)."""

    rows: int = 0
    notes: int = 0
    bars: int = 0
    after_eos: int = 0  # rows after the first EOS (not decoded)
    unknown_id: int = 0  # a value outside its attribute's vocabulary
    pad_row: int = 0  # metric 0
    misplaced_sos: int = 0  # SOS anywhere but the first row
    no_pitch: int = 0  # SAME_ONSET / NEW_POSITION row with pitch 0
    no_position: int = 0
    position_beyond_bar: int = 0
    no_instrument: int = 0
    no_duration: int = 0
    no_velocity: int = 0
    no_tempo: int = 0  # note rows with tempo 0 (decoded with the previous tempo; not skipped)

    @property
    def skipped(self) -> int:
        return (self.unknown_id + self.pad_row + self.misplaced_sos + self.no_pitch + self.no_position
                + self.position_beyond_bar + self.no_instrument + self.no_duration + self.no_velocity)


LOSS_REASONS = ("zero_duration", "off_grid_onset", "off_grid_duration", "duration_snapped", "unison_merged",
                "unexplained")


@dataclass
class FidelityReport:
    """Original notes vs the notes of encode -> decode (onset, duration, pitch, instrument, velocity bin)."""

    source: str
    notes: int
    exact: int
    lost: dict[str, int]
    extra: int  # decoded notes with no original counterpart
    stats: EncodeStats = field(default_factory=EncodeStats)

    @property
    def percent(self) -> float:
        return 100.0 * self.exact / self.notes if self.notes else 100.0

    @property
    def sounding_percent(self) -> float:
        """Exact notes per note that sounds: a merged unison is one sound in MIDI, so it is not counted."""
        sounding = self.notes - self.lost.get("unison_merged", 0)
        return 100.0 * self.exact / sounding if sounding else 100.0

    def __add__(self, other: FidelityReport) -> FidelityReport:
        lost = {k: self.lost.get(k, 0) + other.lost.get(k, 0) for k in {*self.lost, *other.lost}}
        return FidelityReport("total", self.notes + other.notes, self.exact + other.exact, lost,
                              self.extra + other.extra, self.stats + other.stats)

    def summary(self) -> str:
        lost = ", ".join(f"{k}={v}" for k, v in sorted(self.lost.items()) if v) or "none"
        merged = self.lost.get("unison_merged", 0)
        sounding = f" ({self.sounding_percent:.3f}% of the notes that sound)" if merged else ""
        return f"{self.percent:7.3f}%  {self.exact}/{self.notes} exact{sounding}  lost: {lost}  {self.source}"


def compare_notes(original: dict[str, np.ndarray], original_tpq: int, decoded: dict[str, np.ndarray],
                  velocity_index: Callable[[np.ndarray], np.ndarray], reason: np.ndarray, label: str,
                  stats: EncodeStats) -> FidelityReport:
    """Original notes vs decoded notes (note tables of `amadeus.tokenizer.note_table`; decoded at DECODE_TPQ).

    A note matches when onset and duration (in quarters), pitch, instrument (drums apart) and velocity
    bin are equal. Lost notes are attributed to the first reason that applies to them (`reason` [notes]:
    an index into LOSS_REASONS from encoding, -1 for none: unexplained).
    """
    o, d = original, decoded
    ok = np.stack([np.maximum(o["time"], 0) * DECODE_TPQ, np.maximum(o["duration"], 0) * DECODE_TPQ,
                   o["pitch"], o["instrument"], velocity_index(o["velocity"])], axis=1)
    dk = np.stack([d["time"] * original_tpq, d["duration"] * original_tpq, d["pitch"], d["instrument"],
                   velocity_index(d["velocity"])], axis=1)
    n = len(ok)
    lost = {k: 0 for k in LOSS_REASONS}
    if n + len(dk) == 0:
        return FidelityReport(label, 0, 0, lost, 0, stats)
    _, inv = np.unique(np.concatenate([ok, dk]), axis=0, return_inverse=True)
    inv = inv.reshape(-1)
    u = int(inv.max()) + 1
    co = np.bincount(inv[:n], minlength=u)
    cd = np.bincount(inv[n:], minlength=u)
    matched = np.minimum(co, cd)
    excess = co - matched
    key_reason = np.full(u, len(LOSS_REASONS) - 1, np.int64)  # a key's reason: the first of its notes'
    np.minimum.at(key_reason, inv[:n], np.where(reason >= 0, reason, len(LOSS_REASONS) - 1))
    per = np.bincount(key_reason, weights=excess, minlength=len(LOSS_REASONS))
    lost = {k: int(v) for k, v in zip(LOSS_REASONS, per)}
    return FidelityReport(label, n, int(matched.sum()), lost, int((cd - matched).sum()), stats)
