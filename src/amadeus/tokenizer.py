"""NoteTokenizer: symusic Score <-> note matrix [N, K] (one row per note), with fixed vocabularies.

Every note becomes one row of K = 8 attribute indices (metric, position, chord, tempo, instrument,
pitch, duration, velocity); SOS / EOS / empty-bar rows frame them. The layout is the contract in
docs/interfaces.md ("Token matrix"). What the grid or the bins cannot hold is counted, never dropped
silently (notes of zero length, silent in the source, are dropped and counted): `encode_with_stats`
returns EncodeStats, `decode_with_stats` DecodeStats, and `fidelity` compares the notes of a file with the
notes of its encode -> decode round trip (`amadeus.fidelity`; `amadeus fidelity FILE_OR_DIR` prints it).

The vocabularies are `amadeus.vocabulary.TokenizerConfig`'s, the chord column `amadeus.chords`', the row
layout `amadeus.grammar`'s; the names below are re-exported, as part of the tokenizer's API.

Encoding and decoding are vectorised numpy over whole note arrays; the only Python loops run over
tracks, time-signature events and instruments.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from symusic import Note, Score, Tempo, TimeSignature, TimeUnit, Track

from amadeus.chords import CHORD_NONE, chord_name, detect_chords, pitch_class_profile  # noqa: F401
from amadeus.fidelity import LOSS_REASONS, DecodeStats, EncodeStats, FidelityReport, compare_notes  # noqa: F401
from amadeus.theory import CHORD_QUALITIES, GM_PROGRAM_NAMES
from amadeus.vocabulary import DECODE_TPQ, FORMAT_VERSION, TokenizerConfig
# the matrix layout is the grammar's; these names are part of the tokenizer's API too (docs/interfaces.md)
from amadeus.grammar import (  # noqa: F401
    ATTRIBUTES,
    COL_CHORD,
    COL_DURATION,
    COL_INSTRUMENT,
    COL_METRIC,
    COL_PITCH,
    COL_POSITION,
    COL_TEMPO,
    COL_VELOCITY,
    DRUM_INSTRUMENT,
    METRIC_EMPTY_BAR,
    METRIC_EOS,
    METRIC_NEW_BAR,
    METRIC_NEW_POSITION,
    METRIC_PAD,
    METRIC_SAME_ONSET,
    METRIC_SOS,
    METRIC_TS_OFFSET,
    cut_at_eos,
    is_bar_start,
    is_note_metric,
    is_ts_change,
    note_rows,
    ts_per_row,
)

DEFAULT_TEMPO = 120.0
MIDI_SUFFIXES = (".mid", ".midi", ".kar", ".abc")


class TokenizerError(ValueError):
    """A file or a saved tokenizer that cannot be used; the message names the file and the problem."""


def instrument_name(instrument: int) -> str:
    """GM name of an instrument column value (1 + program, or DRUM_INSTRUMENT -> "Drums")."""
    if instrument == DRUM_INSTRUMENT:
        return "Drums"
    return GM_PROGRAM_NAMES[instrument - 1]


# ----------------------------------------------------------------------------------------------
# I/O helpers


def load_score(score_or_path: Score | str | Path) -> tuple[Score, str]:
    """A tick-time Score and a label for messages; a bad path raises TokenizerError naming it."""
    if isinstance(score_or_path, Score):
        score, label = score_or_path, "<Score>"
    else:
        path = Path(score_or_path)
        label = str(path)
        if not path.is_file():
            raise TokenizerError(f"{path}: {'not a file' if path.exists() else 'no such file'}")
        try:
            if path.suffix.lower() in (".abc",):
                score = Score(str(path))
            else:  # by content, so .kar / odd suffixes work too
                score = Score.from_midi(path.read_bytes())
        except Exception as e:  # symusic raises RuntimeError/ValueError with terse messages
            raise TokenizerError(f"{path}: cannot read as MIDI/ABC ({e})") from None
    if score.ttype != TimeUnit.tick:
        score = score.to("tick")
    return score, label


def note_table(score: Score) -> dict[str, np.ndarray]:
    """All notes of all tracks as int64 arrays (time, duration, pitch, velocity, instrument)."""
    cols: dict[str, list[np.ndarray]] = {k: [] for k in ("time", "duration", "pitch", "velocity", "instrument")}
    for track in score.tracks:
        a = track.notes.numpy()
        n = len(a["time"])
        if n == 0:
            continue
        for k in ("time", "duration", "pitch", "velocity"):
            cols[k].append(a[k].astype(np.int64))
        inst = DRUM_INSTRUMENT if track.is_drum else 1 + int(track.program)
        cols["instrument"].append(np.full(n, inst, dtype=np.int64))
    return {k: np.concatenate(v) if v else np.zeros(0, np.int64) for k, v in cols.items()}


def _unisons(onset: np.ndarray, instrument: np.ndarray, pitch: np.ndarray, steps: np.ndarray,
             velocity: np.ndarray, silent: np.ndarray) -> np.ndarray:
    """Bool [notes]: the notes that repeat an earlier (grid onset, instrument, pitch) of a sounding note, the
    longest then loudest of each group first (silent notes are no group's member)."""
    order = np.lexsort((-velocity, -steps, pitch, instrument, onset))
    order = order[~silent[order]]
    key = np.stack([onset[order], instrument[order], pitch[order]], axis=1)
    repeat = np.zeros(len(onset), bool)
    repeat[order[1:]] = (key[1:] == key[:-1]).all(axis=1)
    return repeat


def _excl_cumsum(x: np.ndarray) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(x)[:-1]]).astype(np.int64)


class _Bars(NamedTuple):
    """The bars a decoded matrix lays out (see NoteTokenizer._decode_bars)."""

    of_row: np.ndarray  # int [N]: bar of each row
    sig: np.ndarray  # int [bars]: time-signature index of each bar
    start: np.ndarray  # int [bars]: start of each bar in grid steps
    ts_rows: np.ndarray  # int: the NEW_BAR_TS rows
    ts_sig: np.ndarray  # int: their signature indices
    first_has_ts: bool  # bar 0 starts with a NEW_BAR_TS row


# ----------------------------------------------------------------------------------------------
# the tokenizer


class NoteTokenizer:
    """Score <-> note matrix [N, K]; see docs/interfaces.md "Token matrix" for the layout."""

    def __init__(self, config: TokenizerConfig | None = None) -> None:
        self.config = config or TokenizerConfig()
        c = self.config
        self._ts_index = {ts: i for i, ts in enumerate(c.time_signatures)}
        self._bar_lengths = c.bar_lengths()
        # preferred signature per bar length (largest denominator) for replacing unsupported ones
        self._ts_by_length: dict[int, int] = {}
        for i, (n, d) in enumerate(c.time_signatures):
            self._ts_by_length[int(self._bar_lengths[i])] = i
        self._durations = c.duration_values()
        self._tempos = c.tempo_values()
        self._velocities = c.velocity_values()
        self.default_ts = self._ts_index[(4, 4)]

    # -- vocabulary ------------------------------------------------------------------------------

    @property
    def config_hash(self) -> str:
        return self.config.config_hash

    @property
    def attribute_names(self) -> tuple[str, ...]:
        return ATTRIBUTES

    @property
    def K(self) -> int:
        return len(ATTRIBUTES)

    @property
    def vocab_sizes(self) -> tuple[int, ...]:
        c = self.config
        return (
            METRIC_TS_OFFSET + len(c.time_signatures),
            1 + int(self._bar_lengths.max()),
            2 + 12 * len(CHORD_QUALITIES),
            1 + c.tempo_bins,
            1 + DRUM_INSTRUMENT,
            1 + 128,
            1 + len(self._durations),
            1 + c.velocity_bins,
        )

    def sos_row(self) -> np.ndarray:
        row = np.zeros(self.K, np.int64)
        row[COL_METRIC] = METRIC_SOS
        return row

    def eos_row(self) -> np.ndarray:
        row = np.zeros(self.K, np.int64)
        row[COL_METRIC] = METRIC_EOS
        return row

    def _duration_index(self, steps: np.ndarray) -> np.ndarray:
        """Nearest duration bin (ties to the shorter one)."""
        vals = self._durations
        i = np.clip(np.searchsorted(vals, steps), 1, len(vals) - 1)
        return np.where(steps - vals[i - 1] <= vals[i] - steps, i - 1, i)

    # -- encoding --------------------------------------------------------------------------------

    def encode(self, score_or_path: Score | str | Path) -> np.ndarray:
        """Note matrix int64 [N, K] of a Score or a MIDI/ABC file."""
        return self.encode_with_stats(score_or_path)[0]

    def encode_with_stats(self, score_or_path: Score | str | Path) -> tuple[np.ndarray, EncodeStats]:
        score, label = load_score(score_or_path)
        tokens, stats, _ = self._encode(score, label)
        return tokens, stats

    def _time_signature_segments(self, score: Score, stats: EncodeStats) -> tuple[np.ndarray, np.ndarray]:
        """Segments of constant signature: (start grid step, signature index), starts on bar lines."""
        R, tpq = self.config.resolution, score.ticks_per_quarter
        ts = score.time_signatures.numpy()
        order = np.argsort(ts["time"], kind="stable")
        times = ts["time"].astype(np.int64)[order]
        nums = ts["numerator"].astype(np.int64)[order]
        dens = ts["denominator"].astype(np.int64)[order]
        grid = (2 * times * R + tpq) // (2 * tpq)
        off_grid = (times * R) % tpq != 0
        starts, sigs = [0], [self.default_ts]
        for g, n, d, off in zip(grid.tolist(), nums.tolist(), dens.tolist(), off_grid.tolist()):
            idx = self._ts_index.get((n, d))
            if idx is None:
                stats.time_signature_replaced += 1
                length = n * 4 * R // d if d > 0 and (n * 4 * R) % d == 0 else -1
                idx = self._ts_by_length.get(length, self.default_ts)
            start, cur = starts[-1], sigs[-1]
            if idx == cur:  # a repeated signature changes nothing
                continue
            if g <= start:  # same bar line as the current segment (or pushed behind it by a move)
                stats.time_signature_moved += int(g < start or off)
                sigs[-1] = idx
                if len(sigs) > 1 and sigs[-2] == idx:
                    starts.pop()
                    sigs.pop()
                continue
            length = int(self._bar_lengths[cur])
            line = start + -(-(g - start) // length) * length
            stats.time_signature_moved += int(line != g or off)
            starts.append(line)
            sigs.append(idx)
        return np.array(starts, np.int64), np.array(sigs, np.int64)

    def _encode(self, score: Score, label: str) -> tuple[np.ndarray, EncodeStats, np.ndarray]:
        """Tokens, stats, and a loss-reason code per original note (index into LOSS_REASONS, -1 = none)."""
        c, R, tpq = self.config, self.config.resolution, score.ticks_per_quarter
        if tpq <= 0:
            raise TokenizerError(f"{label}: invalid ticks per quarter {tpq}")
        stats = EncodeStats()
        t = note_table(score)
        n = len(t["time"])
        stats.notes = n
        stats.drum_notes = int((t["instrument"] == DRUM_INSTRUMENT).sum())
        onset, steps, dur_idx, reason = self._quantise(t, tpq, stats)
        # a zero-length note is silent in the source; a unison (one instrument starting one pitch twice at
        # one grid onset) sounds once in MIDI: the longest and loudest of them stays. Both counted, as lost
        unison = _unisons(onset, t["instrument"], t["pitch"], steps, t["velocity"], t["duration"] <= 0)
        stats.unison_merged = int(unison.sum())
        reason[unison] = LOSS_REASONS.index("unison_merged")
        drop = (t["duration"] <= 0) | unison
        if drop.any():
            t = {k: v[~drop] for k, v in t.items()}
            onset, steps, dur_idx, n = onset[~drop], steps[~drop], dur_idx[~drop], n - int(drop.sum())
        bar_start, bar_ts, bar_ts_row = self._bar_grid(score, int(onset.max()) + 1 if n else 1, stats, label)
        n_bars = len(bar_start)

        # order notes: onset, instrument, pitch, duration, velocity
        vel_idx = c.velocity_index(t["velocity"])
        order = np.lexsort((vel_idx, dur_idx, t["pitch"], t["instrument"], onset))
        onset_s = onset[order]
        bar = np.searchsorted(bar_start, onset_s, side="right") - 1
        pos = onset_s - bar_start[bar]
        tempo_bin = self._tempo_bins(score, onset_s, stats)

        # chord at each onset, from the pitched notes on the grid
        u_onset, u_inv = np.unique(onset_s, return_inverse=True)
        pitched = t["instrument"] != DRUM_INSTRUMENT
        chords = detect_chords(onset[pitched], onset[pitched] + steps[pitched], t["pitch"][pitched],
                               u_onset, R)
        chord = chords[u_inv]

        # metric of each note row
        first_in_bar = np.ones(n, bool)
        first_in_bar[1:] = bar[1:] != bar[:-1]
        same = np.zeros(n, bool)
        same[1:] = onset_s[1:] == onset_s[:-1]
        metric = np.where(same, METRIC_SAME_ONSET, METRIC_NEW_POSITION)
        bar_metric = np.where(bar_ts_row, METRIC_TS_OFFSET + bar_ts, METRIC_NEW_BAR)
        metric = np.where(first_in_bar, bar_metric[bar], metric)

        # assemble: SOS, then per bar its note rows or one empty-bar row, then EOS
        counts = np.bincount(bar, minlength=n_bars)
        empty = counts == 0
        rows_per_bar = np.maximum(counts, 1)
        bar_row0 = 1 + _excl_cumsum(rows_per_bar)
        tokens = np.zeros((2 + int(rows_per_bar.sum()), self.K), np.int64)
        tokens[0, COL_METRIC] = METRIC_SOS
        tokens[-1, COL_METRIC] = METRIC_EOS
        eb = np.nonzero(empty)[0]
        tokens[bar_row0[eb], COL_METRIC] = np.where(bar_ts_row[eb], METRIC_TS_OFFSET + bar_ts[eb],
                                                    METRIC_EMPTY_BAR)
        row = bar_row0[bar] + np.arange(n) - _excl_cumsum(counts)[bar]
        tokens[row, COL_METRIC] = metric
        tokens[row, COL_POSITION] = 1 + pos
        tokens[row, COL_CHORD] = chord
        tokens[row, COL_TEMPO] = 1 + tempo_bin
        tokens[row, COL_INSTRUMENT] = t["instrument"][order]
        tokens[row, COL_PITCH] = 1 + t["pitch"][order]
        tokens[row, COL_DURATION] = 1 + dur_idx[order]
        tokens[row, COL_VELOCITY] = 1 + vel_idx[order]
        stats.rows = len(tokens)
        stats.empty_bars = int(empty.sum())
        return tokens, stats, reason

    def _quantise(self, t: dict[str, np.ndarray], tpq: int,
                  stats: EncodeStats) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Grid onset, grid duration (steps), duration bin and loss reason of every note, with what the
        grid changes counted in `stats`."""
        R, n = self.config.resolution, len(t["time"])
        time = np.maximum(t["time"], 0)
        dur = np.maximum(t["duration"], 0)
        onset = (2 * time * R + tpq) // (2 * tpq)
        steps = np.maximum(1, (2 * dur * R + tpq) // (2 * tpq))
        zero = dur == 0
        off_onset = (time * R) % tpq != 0
        off_dur = ((dur * R) % tpq != 0) & ~zero
        dur_idx = self._duration_index(steps) if n else np.zeros(0, np.int64)
        snapped = self._durations[dur_idx] != steps
        stats.off_grid_onset = int(off_onset.sum())
        stats.off_grid_duration = int(off_dur.sum())
        stats.zero_duration = int(zero.sum())
        stats.duration_snapped = int(snapped.sum())
        reason = np.full(n, -1, np.int64)
        for code in range(3, -1, -1):  # first applicable reason wins
            flag = (zero, off_onset, off_dur, snapped)[code]
            reason[flag] = code
        return onset, steps, dur_idx, reason

    def _bar_grid(self, score: Score, end: int, stats: EncodeStats,
                  label: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Bars up to grid step `end` from the time signatures: (start step, signature index, whether
        the bar carries NEW_BAR_TS: the first bar of each signature segment)."""
        seg_start, seg_ts = self._time_signature_segments(score, stats)
        keep = seg_start < end
        seg_start, seg_ts = seg_start[keep], seg_ts[keep]
        seg_len = self._bar_lengths[seg_ts]
        seg_stop = np.minimum(np.append(seg_start[1:], end), end)
        seg_bars = -(-(seg_stop - seg_start) // seg_len)
        n_bars = int(seg_bars.sum())
        if n_bars > self.config.max_bars:
            raise TokenizerError(f"{label}: {n_bars} bars exceed max_bars={self.config.max_bars}")
        bar_seg = np.repeat(np.arange(len(seg_start)), seg_bars)
        bar_in_seg = np.arange(n_bars) - np.repeat(_excl_cumsum(seg_bars), seg_bars)
        bar_start = seg_start[bar_seg] + bar_in_seg * seg_len[bar_seg]
        bar_ts_row = bar_in_seg == 0
        stats.bars = n_bars
        stats.time_signature_changes = int(bar_ts_row.sum()) - 1
        return bar_start, seg_ts[bar_seg], bar_ts_row

    def _tempo_bins(self, score: Score, onset_s: np.ndarray, stats: EncodeStats) -> np.ndarray:
        """Tempo bin at each (sorted) onset: the last tempo event at or before it (on the grid)."""
        c, R, tpq = self.config, self.config.resolution, score.ticks_per_quarter
        tp = score.tempos.numpy()
        t_order = np.argsort(tp["time"], kind="stable")
        t_time = tp["time"].astype(np.int64)[t_order]
        t_grid = (2 * t_time * R + tpq) // (2 * tpq)
        bpm = 6e7 / np.maximum(tp["mspq"].astype(np.float64)[t_order], 1.0)
        stats.tempo_out_of_range = int(((bpm < c.tempo_min * 0.999) | (bpm > c.tempo_max * 1.001)).sum())
        t_bin = c.tempo_index(bpm)
        default_bin = int(c.tempo_index(np.array([DEFAULT_TEMPO]))[0])
        # the default tempo sits before time 0, so a tempo event at 0 overrides it
        ti = np.searchsorted(np.append(-1, t_grid), onset_s, side="right") - 1
        tempo_bin = np.append(default_bin, t_bin)[ti]
        stats.tempo_changes, stats.tempo_change_off_onset = self._tempo_change_counts(
            t_grid, t_bin, default_bin, onset_s, tempo_bin)
        return tempo_bin

    @staticmethod
    def _tempo_change_counts(t_grid: np.ndarray, t_bin: np.ndarray, default_bin: int,
                             onset_s: np.ndarray, tempo_bin: np.ndarray) -> tuple[int, int]:
        """(tempo-bin changes in the file, changes the tokens do not reproduce at their grid time)."""
        times = np.concatenate([[0], t_grid])
        bins = np.concatenate([[default_bin], t_bin])
        last = np.append(times[1:] != times[:-1], True)  # the last event at a time wins
        times, bins = times[last], bins[last]
        change = np.append(True, bins[1:] != bins[:-1])
        original = set(zip(times[change].tolist(), bins[change].tolist()))
        if len(onset_s):
            d_change = np.append(True, tempo_bin[1:] != tempo_bin[:-1])
            d_times = onset_s[d_change].copy()
            d_times[0] = 0
            decoded = set(zip(d_times.tolist(), tempo_bin[d_change].tolist()))
        else:
            decoded = {(0, default_bin)}
        return len(original), len(original - decoded)

    # -- decoding --------------------------------------------------------------------------------

    def decode(self, tokens: np.ndarray) -> Score:
        """Score (tpq 480) of a note matrix; invalid rows are skipped (see decode_with_stats)."""
        return self.decode_with_stats(tokens)[0]

    def decode_with_stats(self, tokens: np.ndarray) -> tuple[Score, DecodeStats]:
        """Score (tpq 480) and DecodeStats; stops at the first EOS, never raises on bad rows."""
        tok = np.asarray(tokens)
        if tok.ndim != 2 or tok.shape[1] != self.K:
            raise ValueError(f"tokens must have shape [N, {self.K}], got {tok.shape}")
        tok = tok.astype(np.int64)
        stats = DecodeStats(rows=len(tok))
        cut = cut_at_eos(tok)
        if len(cut) < len(tok):
            stats.after_eos = len(tok) - len(cut) - 1
        tok = cut
        valid = self._valid_rows(tok, stats)
        bars = self._decode_bars(tok[:, COL_METRIC], valid)
        stats.bars = len(bars.sig)
        r = self._decodable_notes(tok, valid, bars, stats)
        step = DECODE_TPQ // self.config.resolution
        onset = (bars.start[bars.of_row[r]] + tok[r, COL_POSITION] - 1) * step
        score = Score(DECODE_TPQ)
        score.tempos = self._decode_tempos(tok[r, COL_TEMPO] - 1, onset, stats)
        score.time_signatures = self._decode_time_signatures(bars, step)
        for track in self._decode_tracks(tok[r], onset, step):
            score.tracks.append(track)
        return score, stats

    def _valid_rows(self, tok: np.ndarray, stats: DecodeStats) -> np.ndarray:
        """Bool [N]: rows with known ids that are neither PAD nor SOS; the others are counted."""
        m = tok[:, COL_METRIC]
        unknown = ((tok < 0) | (tok >= np.array(self.vocab_sizes))).any(axis=1)
        pad = ~unknown & (m == METRIC_PAD)
        sos = ~unknown & (m == METRIC_SOS)
        stats.unknown_id = int(unknown.sum())
        stats.pad_row = int(pad.sum())
        stats.misplaced_sos = int(sos[1:].sum())
        return ~unknown & ~pad & ~sos

    def _decode_bars(self, m: np.ndarray, valid: np.ndarray) -> _Bars:
        """Bars of the valid rows: every EMPTY_BAR / NEW_BAR / NEW_BAR_TS row starts one; note rows
        before the first bar start make an implicit bar 0 (in the default signature)."""
        m = np.where(valid, m, METRIC_PAD)  # invalid rows neither start bars nor change signatures
        bar_row = is_bar_start(m)
        bar_idx = np.cumsum(bar_row) - 1
        n_bars = int(bar_row.sum())
        if (is_note_metric(m) & (bar_idx < 0)).any():
            bar_idx = bar_idx + 1
            n_bars += 1
        n_bars = max(n_bars, 1)
        bar_idx = np.maximum(bar_idx, 0)
        sig = np.full(n_bars, self.default_ts, np.int64)
        row_ts = ts_per_row(m, self.default_ts, len(self.config.time_signatures))
        sig[bar_idx[bar_row]] = row_ts[bar_row]
        ts_rows = np.nonzero(is_ts_change(m))[0]
        first_has_ts = bool((bar_idx[ts_rows] == 0).any())
        return _Bars(bar_idx, sig, _excl_cumsum(self._bar_lengths[sig]), ts_rows, row_ts[ts_rows], first_has_ts)

    def _decodable_notes(self, tok: np.ndarray, valid: np.ndarray, bars: _Bars, stats: DecodeStats) -> np.ndarray:
        """Indices of the note rows that decode; the others are counted by the first check they fail."""
        m, pitch, pos = tok[:, COL_METRIC], tok[:, COL_PITCH], tok[:, COL_POSITION]
        note_type = valid & is_note_metric(m)
        stats.no_pitch = int((note_type & (pitch == 0) & ((m == METRIC_SAME_ONSET) | (m == METRIC_NEW_POSITION))).sum())
        checks = [
            ("no_position", pos == 0),
            ("position_beyond_bar", pos - 1 >= self._bar_lengths[bars.sig][bars.of_row]),
            ("no_instrument", tok[:, COL_INSTRUMENT] == 0),
            ("no_duration", tok[:, COL_DURATION] == 0),
            ("no_velocity", tok[:, COL_VELOCITY] == 0),
        ]
        ok = note_type & (pitch > 0)
        for name, bad in checks:
            setattr(stats, name, int((ok & bad).sum()))
            ok &= ~bad
        r = np.nonzero(ok)[0]
        stats.notes = len(r)
        return r

    def _decode_tempos(self, tb: np.ndarray, onset: np.ndarray, stats: DecodeStats) -> Any:
        """Tempo events of the notes' tempo bins `tb` (-1 = none: the previous one carries over); an
        event wherever the bin changes, the first at time 0."""
        stats.no_tempo = int((tb < 0).sum())
        default_bin = int(self.config.tempo_index(np.array([DEFAULT_TEMPO]))[0])
        known = np.where(tb >= 0, np.arange(len(tb)), -1)
        carried = np.maximum.accumulate(known) if len(tb) else known
        tb = np.where(carried >= 0, tb[np.maximum(carried, 0)], default_bin)
        if len(tb):
            change = np.append(True, tb[1:] != tb[:-1])
            tempo_time = onset[change].copy()
            tempo_time[0] = 0
            tempo_bins = tb[change]
        else:
            tempo_time, tempo_bins = np.zeros(1, np.int64), np.array([default_bin])
        mspq = np.rint(6e7 / self._tempos[tempo_bins])
        return Tempo.from_numpy(tempo_time.astype(np.int32), mspq.astype(np.int32))

    def _decode_time_signatures(self, bars: _Bars, step: int) -> Any:
        """One event per NEW_BAR_TS row, plus the default 4/4 at 0 when bar 0 has none."""
        ts_bars = np.zeros(0 if bars.first_has_ts else 1, np.int64)
        ts_time = np.concatenate([bars.start[ts_bars], bars.start[bars.of_row[bars.ts_rows]]]) * step
        ts_sig = np.concatenate([bars.sig[ts_bars], bars.ts_sig])
        sigs = np.array(self.config.time_signatures, dtype=np.int64)[ts_sig].reshape(-1, 2)
        return TimeSignature.from_numpy(ts_time.astype(np.int32), sigs[:, 0].astype(np.uint8),
                                        sigs[:, 1].astype(np.uint8))

    def _decode_tracks(self, rows: np.ndarray, onset: np.ndarray, step: int) -> list[Track]:
        """One track per instrument value of the decodable note rows (drums apart), notes sorted."""
        dur = self._durations[rows[:, COL_DURATION] - 1] * step
        inst = rows[:, COL_INSTRUMENT]
        vel = self._velocities[rows[:, COL_VELOCITY] - 1]
        p = rows[:, COL_PITCH] - 1
        order = np.lexsort((p, onset, inst))
        onset, dur, inst, vel, p = onset[order], dur[order], inst[order], vel[order], p[order]
        values, first = np.unique(inst, return_index=True)
        bounds = np.append(first, len(inst))
        tracks = []
        for i, value in enumerate(values.tolist()):
            a, b = bounds[i], bounds[i + 1]
            drum = value == DRUM_INSTRUMENT
            track = Track(name=instrument_name(value), program=0 if drum else value - 1, is_drum=drum)
            track.notes = Note.from_numpy(onset[a:b].astype(np.int32), dur[a:b].astype(np.int32),
                                          p[a:b].astype(np.int8), vel[a:b].astype(np.int8))
            tracks.append(track)
        return tracks

    # -- fidelity --------------------------------------------------------------------------------

    def fidelity(self, score_or_path: Score | str | Path) -> FidelityReport:
        """Compare the multiset of original notes with the notes of encode -> decode (`compare_notes`)."""
        score, label = load_score(score_or_path)
        tokens, stats, reason = self._encode(score, label)
        return compare_notes(note_table(score), score.ticks_per_quarter, note_table(self.decode(tokens)),
                             self.config.velocity_index, reason, label, stats)

    # -- augmentation ----------------------------------------------------------------------------

    def transpose(self, tokens: np.ndarray, semitones: int) -> np.ndarray | None:
        """Shift the pitch of non-drum note rows and rotate chord roots; None if a pitch leaves 0..127."""
        out = np.array(tokens, dtype=np.int64, copy=True)
        if semitones == 0:
            return out
        note = note_rows(out) & (out[:, COL_INSTRUMENT] > 0) & (out[:, COL_INSTRUMENT] != DRUM_INSTRUMENT)
        shifted = out[note, COL_PITCH] + semitones
        if len(shifted) and (shifted.min() < 1 or shifted.max() > 128):
            return None
        out[note, COL_PITCH] = shifted
        q = len(CHORD_QUALITIES)
        ch = out[:, COL_CHORD]
        has = (ch >= 2) & (ch < 2 + 12 * q)
        root, quality = np.divmod(ch[has] - 2, q)
        out[has, COL_CHORD] = 2 + ((root + semitones) % 12) * q + quality
        return out

    # -- persistence -----------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {"format": "amadeus.NoteTokenizer", "format_version": FORMAT_VERSION,
                "config": self.config.to_dict(), "config_hash": self.config_hash,
                "attributes": list(ATTRIBUTES), "vocab_sizes": list(self.vocab_sizes)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> NoteTokenizer:
        """Rebuild from to_dict(); a hash that does not match the config is an error."""
        if not isinstance(d, dict) or "config" not in d:
            raise TokenizerError("not a saved NoteTokenizer (no 'config')")
        if d.get("format_version", FORMAT_VERSION) != FORMAT_VERSION:
            raise TokenizerError(f"tokenizer format_version {d.get('format_version')} != {FORMAT_VERSION}")
        try:
            tok = cls(TokenizerConfig.from_dict(d["config"]))
        except (TypeError, ValueError) as e:
            raise TokenizerError(f"invalid tokenizer config: {e}") from None
        saved = d.get("config_hash")
        if saved is not None and saved != tok.config_hash:
            raise TokenizerError(f"tokenizer config hash mismatch: saved {saved}, config gives {tok.config_hash}")
        return tok

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> NoteTokenizer:
        path = Path(path)
        try:
            d = json.loads(path.read_text())
        except FileNotFoundError:
            raise TokenizerError(f"{path}: no such file") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise TokenizerError(f"{path}: not JSON ({e})") from None
        try:
            return cls.from_dict(d)
        except TokenizerError as e:
            raise TokenizerError(f"{path}: {e}") from None
