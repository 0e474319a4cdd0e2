"""The note matrix's grammar: what a row of the [N, K] token matrix is, and which rows may follow.

The layout (columns, metric values) is defined here once; `amadeus.tokenizer` re-exports it. Every
module that asks "is this a note row", "does this row start a bar", "where does the piece end" or
"which time signature is in force" calls the helpers below instead of re-deriving the answer:

    is_note_metric(m), is_bar_start(m), is_ts_change(m), is_drum_pitch(p)   numpy or torch, elementwise
    note_rows(tok), cut_at_eos(tok), ts_per_row(m, default_ts, n_ts)        numpy token matrices
    marker_row(kind), is_marker(tok)                                         reordered sequences (infill)

The sampler's guards (`amadeus.sampling.guards`) and the evaluation's syntax check (`amadeus.syntax`)
build on these. numpy only: the tokenizer (and with it every preprocessing worker) imports this module
and stays free of torch.
"""

from __future__ import annotations

from typing import TypeVar

import numpy as np

from amadeus.theory import DRUM_PITCHES

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

# Marker rows of reordered sequences (`amadeus.infill`): an SOS-metric row whose position column says what
# follows it; every other column 0. A piece's own SOS row has position 0.
MARKER_SUFFIX = 1  # the music after a gap
MARKER_PREFIX = 2  # the music before the gap
MARKER_MIDDLE = 3  # the gap, which the model writes
MARKER_KEEP = 4  # the parts kept note for note (accompaniment)
MARKER_ADD = 5  # the parts the model writes around them
MARKERS = (MARKER_SUFFIX, MARKER_PREFIX, MARKER_MIDDLE, MARKER_KEEP, MARKER_ADD)

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


def marker_row(kind: int, K: int = len(ATTRIBUTES)) -> np.ndarray:
    """The row that marks a part of a reordered sequence (one of MARKERS)."""
    row = np.zeros(K, np.int64)
    row[COL_METRIC], row[COL_POSITION] = METRIC_SOS, kind
    return row


def is_marker(tok: np.ndarray) -> np.ndarray:
    """Bool [N]: marker rows (SOS metric with a marker in the position column)."""
    return (tok[:, COL_METRIC] == METRIC_SOS) & (tok[:, COL_POSITION] > 0)


def note_rows(tok: np.ndarray) -> np.ndarray:
    """Bool [N]: rows that carry a note (note metric and a pitch; the NEW_BAR_TS marker row has none)."""
    return is_note_metric(tok[:, COL_METRIC]) & (tok[:, COL_PITCH] > 0)


def sort_onsets(tok: np.ndarray) -> np.ndarray:
    """The notes of each onset in the tokenizer's order, (instrument, pitch, duration, velocity) ascending:
    a copy where those four attributes move between the onset's rows and every row keeps its metric,
    position, chord and tempo (an onset is a note row and the SAME_ONSET rows after it)."""
    notes = np.flatnonzero(note_rows(tok))
    onset = np.cumsum(tok[:, COL_METRIC] != METRIC_SAME_ONSET)[notes]
    t = tok[notes]
    order = np.lexsort((t[:, COL_VELOCITY], t[:, COL_DURATION], t[:, COL_PITCH], t[:, COL_INSTRUMENT], onset))
    out = tok.copy()
    out[notes, COL_INSTRUMENT:] = t[order, COL_INSTRUMENT:]
    return out


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
