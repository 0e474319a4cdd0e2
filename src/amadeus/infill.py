"""Infilling and accompaniment as sequences a left-to-right model writes (numpy only).

Fill-in-the-middle for note rows (Bavarian et al. 2022): a piece cut at bar lines into prefix | middle |
suffix is reordered as

    SOS, SUFFIX marker, suffix rows, PREFIX marker, prefix rows, MIDDLE marker, middle rows, EOS

so that the model writes the middle having read the music after it as well as before. Accompaniment: the
kept parts come first, then the parts to write, each laid out on its own over the same bars (`relayout`),

    SOS, KEEP marker, kept rows, ADD marker, other parts' rows, EOS

so that every kept note is known ahead of time. Markers are SOS-metric rows that name what follows
(`amadeus.grammar.MARKERS`). A part that does not start at a piece's beginning opens with a bar that
states its time signature (`open_bar`), so every part is readable on its own.

Training reorders a share of the windows (`fim_window`, `accompaniment_window`, each keeping the window's
length); inference builds the prompt of a chosen span or of kept notes (`infill_prompt`, `accompaniment_prompt`)
and the sampler writes the rest (`amadeus.api.Amadeus.infill`, `.accompany`).
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from amadeus.grammar import (
    COL_CHORD,
    COL_INSTRUMENT,
    COL_METRIC,
    COL_PITCH,
    COL_POSITION,
    MARKER_ADD,
    MARKER_KEEP,
    MARKER_MIDDLE,
    MARKER_PREFIX,
    MARKER_SUFFIX,
    METRIC_EMPTY_BAR,
    METRIC_EOS,
    METRIC_NEW_BAR,
    METRIC_NEW_POSITION,
    METRIC_SAME_ONSET,
    METRIC_SOS,
    METRIC_TS_OFFSET,
    cut_at_eos,
    is_bar_start,
    is_marker,
    marker_row,
    note_rows,
    ts_per_row,
)

MAX_SPAN_BARS = 4  # training spans are 1..MAX_SPAN_BARS bars
INFILL_CONTEXT = 512  # rows around a gap (or of kept parts) the model reads when infilling or accompanying
CHORD_NONE = 1  # kept parts carry no chord: at inference they are read alone (amadeus.chords.CHORD_NONE)


class InfillError(ValueError):
    """A span, a kept part or a piece the model cannot work with; the message says which and why."""


class Span(NamedTuple):
    """Bars first..last (1-based, inclusive) of a piece: rows [start, end) of its token matrix."""

    first: int
    last: int
    start: int
    end: int


def bar_starts(tok: np.ndarray) -> np.ndarray:
    """Row of every bar's first row (bar k = entry k - 1) of a token matrix."""
    return np.flatnonzero(is_bar_start(tok[:, COL_METRIC]) & (tok[:, COL_METRIC] != METRIC_SOS))


def find_span(tok: np.ndarray, first: int, last: int) -> Span:
    """Rows of bars first..last of a piece (SOS first, cut at EOS); InfillError for an empty span or one
    outside the piece."""
    if first < 1 or last < first:
        raise InfillError(f"bars {first}-{last}: an empty span (bars are numbered from 1, the first <= the last)")
    tok = cut_at_eos(tok)
    starts = bar_starts(tok)
    if last > len(starts):
        raise InfillError(f"bars {first}-{last}: the piece has {len(starts)} bars")
    end = int(starts[last]) if last < len(starts) else len(tok)
    return Span(first, last, int(starts[first - 1]), end)


def open_bar(rows: np.ndarray, ts: int) -> np.ndarray:
    """`rows`, whose first row starts a bar, with that row stating the time signature in force (`ts`):
    NEW_BAR becomes NEW_BAR_TS, an empty bar the NEW_BAR_TS row of an empty bar."""
    out = rows.copy()
    if len(out) and out[0, COL_METRIC] in (METRIC_NEW_BAR, METRIC_EMPTY_BAR):
        out[0, COL_METRIC] = METRIC_TS_OFFSET + ts
    return out


def _ts_at(tok: np.ndarray, row: int, default_ts: int, n_ts: int) -> int:
    return int(ts_per_row(tok[: row + 1, COL_METRIC], default_ts, n_ts)[-1])


def fim_rows(tok: np.ndarray, start: int, end: int, default_ts: int, n_ts: int) -> tuple[np.ndarray, np.ndarray]:
    """(prompt, middle) of the FIM sequence that writes rows [start, end) of `tok` (a piece or a window;
    `start` and `end` at bar lines): prompt = SOS, SUFFIX, suffix, PREFIX, prefix, MIDDLE; middle = the rows
    to write, then EOS."""
    body = cut_at_eos(tok)
    lead = 1 if len(body) and body[0, COL_METRIC] == METRIC_SOS and body[0, COL_POSITION] == 0 else 0
    K = tok.shape[1]
    suffix = body[end:]
    if len(suffix):
        suffix = open_bar(suffix, _ts_at(body, end, default_ts, n_ts))
    eos = np.zeros((1, K), np.int64)
    eos[0, COL_METRIC] = METRIC_EOS
    sos = np.zeros((1, K), np.int64)
    sos[0, COL_METRIC] = METRIC_SOS
    prompt = np.concatenate([sos, marker_row(MARKER_SUFFIX, K)[None], suffix, marker_row(MARKER_PREFIX, K)[None],
                             body[lead:start], marker_row(MARKER_MIDDLE, K)[None]])
    return prompt, np.concatenate([body[start:end], eos])


def fim_window(rows: np.ndarray, rng: np.random.Generator, default_ts: int, n_ts: int) -> np.ndarray | None:
    """A training window reordered to write a random span of 1..MAX_SPAN_BARS whole bars from both sides,
    cut to the window's length (the far end of the suffix goes first); None without a whole bar to write."""
    starts = bar_starts(cut_at_eos(rows))
    if len(starts) < 2:
        return None
    bounds = np.append(starts, len(cut_at_eos(rows)))  # bar lines, and the end of the last bar
    n = int(rng.integers(1, min(MAX_SPAN_BARS, len(starts) - 1) + 1))
    first = int(rng.integers(0, len(starts) - n))  # the span's last bar is never the window's last (cut) bar
    prompt, middle = fim_rows(rows, int(bounds[first]), int(bounds[first + n]), default_ts, n_ts)
    suffix_cut = max(0, len(prompt) + len(middle) - len(rows))
    if suffix_cut:  # drop the suffix's far end (the prompt is SOS, SUFFIX, suffix..., PREFIX, ...)
        suffix_len = int(np.flatnonzero(is_marker(prompt) & (prompt[:, COL_POSITION] == MARKER_PREFIX))[0]) - 2
        if suffix_cut > suffix_len:
            return None  # the window is too short for the markers
        prompt = np.delete(prompt, np.arange(2 + suffix_len - suffix_cut, 2 + suffix_len), axis=0)
    return np.concatenate([prompt, middle])


def relayout(tok: np.ndarray, keep: np.ndarray, default_ts: int, n_ts: int, bars: int | None = None) -> np.ndarray:
    """The note rows `keep` (bool [N]) of a piece that starts at its first bar (SOS first), laid out on their
    own over the same bars (all `bars` of them, default the piece's): metric recomputed (first note of a bar
    NEW_BAR, or NEW_BAR_TS where the time signature is stated; SAME_ONSET / NEW_POSITION after), a bar
    without kept notes an empty bar. Rows after SOS, no EOS."""
    body = cut_at_eos(tok)
    m = body[:, COL_METRIC]
    bar = np.cumsum(is_bar_start(m) & (m != METRIC_SOS))  # 1-based bar of each row
    ts_rows = ts_per_row(m, default_ts, n_ts)
    starts = bar_starts(body)
    n_bars = len(starts) if bars is None else bars
    ts_of_bar = ts_rows[starts] if len(starts) else np.full(1, default_ts)
    ts_of_bar = np.concatenate([ts_of_bar, np.full(max(0, n_bars - len(ts_of_bar)), ts_of_bar[-1])])  # later bars: the last
    kept = keep[: len(body)] & note_rows(body)
    out = []
    for b in range(1, n_bars + 1):
        rows = body[kept & (bar == b)].copy()
        states_ts = b == 1 or ts_of_bar[b - 1] != ts_of_bar[b - 2]
        if len(rows):
            same = np.zeros(len(rows), bool)
            same[1:] = rows[1:, COL_POSITION] == rows[:-1, COL_POSITION]
            rows[:, COL_METRIC] = np.where(same, METRIC_SAME_ONSET, METRIC_NEW_POSITION)
            rows[0, COL_METRIC] = METRIC_TS_OFFSET + ts_of_bar[b - 1] if states_ts else METRIC_NEW_BAR
        else:
            rows = np.zeros((1, body.shape[1]), np.int64)
            rows[0, COL_METRIC] = METRIC_TS_OFFSET + ts_of_bar[b - 1] if states_ts else METRIC_EMPTY_BAR
        out.append(rows)
    return np.concatenate(out) if out else np.zeros((0, body.shape[1]), np.int64)


def top_line(tok: np.ndarray) -> np.ndarray:
    """Bool [N]: the highest pitched note of every onset (the melody of a texture)."""
    notes = note_rows(tok) & (tok[:, COL_PITCH] > 0)
    onset_id = np.cumsum(tok[:, COL_METRIC] != METRIC_SAME_ONSET)  # rows of one onset share an id
    best = np.full(onset_id.max() + 1 if len(tok) else 1, -1)
    np.maximum.at(best, onset_id[notes], tok[notes, COL_PITCH])
    return notes & (tok[:, COL_PITCH] == best[onset_id])


def accompaniment_rows(tok: np.ndarray, keep: np.ndarray, default_ts: int, n_ts: int,
                       bars: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(prompt, parts) of the sequence that writes the other parts of a piece around the kept note rows:
    prompt = SOS, KEEP, kept rows (no chords), ADD; parts = the other note rows laid out alone, then EOS."""
    K = tok.shape[1]
    kept = relayout(tok, keep, default_ts, n_ts, bars)
    kept[note_rows(kept), COL_CHORD] = CHORD_NONE
    other = relayout(tok, ~keep, default_ts, n_ts, bars)
    sos, eos = np.zeros((1, K), np.int64), np.zeros((1, K), np.int64)
    sos[0, COL_METRIC], eos[0, COL_METRIC] = METRIC_SOS, METRIC_EOS
    prompt = np.concatenate([sos, marker_row(MARKER_KEEP, K)[None], kept, marker_row(MARKER_ADD, K)[None]])
    return prompt, np.concatenate([other, eos])


def accompaniment_window(rows: np.ndarray, rng: np.random.Generator, default_ts: int, n_ts: int,
                         drum: int) -> np.ndarray | None:
    """A training window that opens a piece, reordered to write some of its parts around the others: the
    melody (top line) kept, or a random proper subset of its instruments when it has several; cut to the
    window's length. None when the window does not open a piece or has nothing to keep or write."""
    body = cut_at_eos(rows)
    if not len(body) or body[0, COL_METRIC] != METRIC_SOS or body[0, COL_POSITION] != 0:
        return None
    notes = note_rows(body)
    instruments = np.unique(body[notes, COL_INSTRUMENT])
    if len(instruments) >= 2 and rng.random() < 0.5:
        chosen = rng.choice(instruments, size=int(rng.integers(1, len(instruments))), replace=False)
        keep = notes & np.isin(body[:, COL_INSTRUMENT], chosen)
    else:
        keep = top_line(body) & (body[:, COL_INSTRUMENT] != drum)
    if not keep.any() or not (notes & ~keep).any():
        return None
    prompt, parts = accompaniment_rows(body, keep, default_ts, n_ts)
    out = np.concatenate([prompt, parts])
    return out[: len(rows)]


# ---------------------------------------------------------------------------------------------- inference


class Seen(NamedTuple):
    """What the model reads around a gap: bars before (first, last) and after (first, last), 1-based;
    (0, 0) where there are none."""

    before: tuple[int, int]
    after: tuple[int, int]


def infill_prompt(tok: np.ndarray, span: Span, context: int, default_ts: int, n_ts: int) -> tuple[np.ndarray, Seen]:
    """The FIM prompt that writes `span` of a piece, reading at most `context` rows around it: whole bars,
    the nearest first, half the budget before the gap and half after (what one side does not need goes to
    the other). The bars read are returned beside it."""
    body = cut_at_eos(tok)
    starts = np.append(bar_starts(body), len(body))
    rows = np.diff(starts)  # rows of each bar
    before = list(range(span.first - 1, 0, -1))  # nearest first
    after = list(range(span.last + 1, len(rows) + 1))
    take_b = _fit(rows, before, context - min(context // 2, int(sum(rows[b - 1] for b in after))))
    take_a = _fit(rows, after, context - int(sum(rows[b - 1] for b in before[:take_b])))
    if take_b == span.first - 1:  # the whole beginning, from the piece's own first bar
        prefix_start, prefix = 1, body[1:span.start]
    else:
        prefix_start = int(starts[span.first - 1 - take_b])
        prefix = open_bar(body[prefix_start:span.start], _ts_at(body, prefix_start, default_ts, n_ts))
    cut = np.concatenate([body[:1], prefix, body[span.start:int(starts[span.last + take_a])]])
    offset = 1 + span.start - prefix_start  # where the span starts in `cut`
    prompt, _ = fim_rows(cut, offset, offset + span.end - span.start, default_ts, n_ts)
    return prompt, Seen((span.first - take_b, span.first - 1) if take_b else (0, 0),
                        (span.last + 1, span.last + take_a) if take_a else (0, 0))


def _fit(rows: np.ndarray, bars: list[int], budget: int) -> int:
    """How many of `bars` (in order) fit in `budget` rows."""
    used = np.cumsum([int(rows[b - 1]) for b in bars]) if bars else np.zeros(0)
    return int((used <= budget).sum())


def bar_onsets(tok: np.ndarray, bar_lengths: np.ndarray, default_ts: int, n_ts: int) -> np.ndarray:
    """Grid step of every bar start, and of the end of the last bar: int64 [bars + 1]."""
    body = cut_at_eos(tok)
    starts = bar_starts(body)
    ts = ts_per_row(body[:, COL_METRIC], default_ts, n_ts)[starts]
    return np.concatenate([[0], np.cumsum(bar_lengths[ts])]).astype(np.int64)


def span_notes(score, tokenizer, prefix: np.ndarray, middle: np.ndarray, span_steps: tuple[int, int]):
    """The notes the model wrote for a gap, as (program, is_drum, name) -> note arrays in `score`'s ticks:
    `middle` (rows after the MIDDLE marker, cut at EOS) decoded after `prefix` (the piece's rows before the
    gap, SOS first), keeping the notes whose onset falls in the gap's grid steps [start, end)."""
    from amadeus.tokenizer import DECODE_TPQ

    decoded = tokenizer.decode(np.concatenate([prefix, cut_at_eos(middle), [tokenizer.eos_row()]]))
    step = DECODE_TPQ // tokenizer.config.resolution
    return _notes_in(decoded, span_steps[0] * step, span_steps[1] * step, score.ticks_per_quarter / DECODE_TPQ)


def parts_notes(score, tokenizer, parts: np.ndarray):
    """The notes of rows the model wrote as a piece of its own (SOS implied, cut at EOS), in `score`'s ticks."""
    from amadeus.tokenizer import DECODE_TPQ

    decoded = tokenizer.decode(np.concatenate([[tokenizer.sos_row()], cut_at_eos(parts), [tokenizer.eos_row()]]))
    return _notes_in(decoded, 0, np.iinfo(np.int64).max, score.ticks_per_quarter / DECODE_TPQ)


def _notes_in(decoded, lo: int, hi: int, scale: float) -> dict[tuple[int, bool, str], dict[str, np.ndarray]]:
    out = {}
    for track in decoded.tracks:
        a = track.notes.numpy()
        inside = (a["time"] >= lo) & (a["time"] < hi)
        if inside.any():
            out[(int(track.program), bool(track.is_drum), track.name)] = {
                "time": np.rint(a["time"][inside] * scale).astype(np.int64),
                "duration": np.maximum(1, np.rint(a["duration"][inside] * scale)).astype(np.int64),
                "pitch": a["pitch"][inside], "velocity": a["velocity"][inside]}
    return out


def replace_span(score, span_ticks: tuple[int, int], notes) -> object:
    """A copy of `score` whose notes starting inside [start, end) ticks are replaced by `notes` (from
    `span_notes`): every other note, track, program, tempo and time signature stays as it was. The written
    notes join the track of their program (drums: the drum track), or a new one."""
    out = score.copy()
    for track in out.tracks:
        a = track.notes.numpy()
        keep = (a["time"] < span_ticks[0]) | (a["time"] >= span_ticks[1])
        if not keep.all():
            track.notes = _notes({k: v[keep] for k, v in a.items()})
    return add_notes(out, notes, join=True)


def add_notes(score, notes, join: bool) -> object:
    """`score` with `notes` ((program, is_drum, name) -> arrays) added: with `join` to the track of their
    program and kind where there is one, else (and without `join`) to new tracks; notes in time order."""
    from symusic import Track

    for (program, drum, name), arrays in notes.items():
        track = next((t for t in score.tracks if int(t.program) == program and bool(t.is_drum) == drum), None)
        if track is None or not join:
            track = Track(name, program, drum)
            score.tracks.append(track)
        a = track.notes.numpy()
        merged = {k: np.concatenate([a[k].astype(np.int64), arrays[k].astype(np.int64)]) for k in arrays}
        order = np.lexsort((merged["pitch"], merged["time"]))
        track.notes = _notes({k: v[order] for k, v in merged.items()})
    return score


def _notes(a: dict[str, np.ndarray]):
    from symusic import Note

    return Note.from_numpy(a["time"].astype(np.int32), a["duration"].astype(np.int32), a["pitch"].astype(np.int8),
                           a["velocity"].astype(np.int8))


def keep_tracks(score, indices: list[int]) -> object:
    """A copy of `score` with only the tracks `indices` (tempi, time signatures and the rest unchanged)."""
    out = score.copy()
    for i in sorted(set(range(len(out.tracks))) - set(indices), reverse=True):
        del out.tracks[i]
    return out


def pick_tracks(score, specs: list[str]) -> list[int]:
    """Indices (0-based) of the tracks named by `specs`: 1-based track numbers as a MIDI editor counts them,
    or track or instrument names (case-insensitive); InfillError naming the piece's tracks otherwise."""
    from amadeus.theory import GM_PROGRAM_NAMES

    listing = ", ".join(f"{i + 1} {t.name or ('Drums' if t.is_drum else GM_PROGRAM_NAMES[t.program])}"
                        for i, t in enumerate(score.tracks))
    chosen: list[int] = []
    for spec in specs:
        text = str(spec).strip()
        if text.isdigit():
            found = [int(text) - 1] if 1 <= int(text) <= len(score.tracks) else []
        else:
            found = [i for i, t in enumerate(score.tracks) if text.lower() in
                     (t.name.lower(), "drums" if t.is_drum else GM_PROGRAM_NAMES[t.program].lower())]
        if not found:
            raise InfillError(f"track {text!r}: no such track; the piece has {len(score.tracks)} ({listing})")
        chosen += [i for i in found if i not in chosen]
    if len(chosen) == len(score.tracks):
        raise InfillError(f"every track is kept ({listing}): nothing is left to write")
    return chosen
