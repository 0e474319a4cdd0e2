"""Prompts and templates: what a piece starts from before the sampler writes (numpy only).

A prompt is a token matrix starting with SOS (a MIDI path, Score or matrix is encoded; anything after its
first EOS is cut); the output of `generate` starts with exactly its rows. `prompt_from_midi` cuts a piece
to its first bars or rows. A template (`regenerate`) keeps every slot of a piece except the chosen
attributes of the chosen note rows, which the sampler draws again.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple, Sequence

import numpy as np

from amadeus.grammar import (COL_INSTRUMENT, COL_METRIC, COL_PITCH, COL_POSITION, MARKER_MIDDLE, MARKER_PREFIX,
                             METRIC_EOS, METRIC_SOS, METRIC_TS_OFFSET, is_bar_start, is_marker, is_ts_change)
from amadeus.tokenizer import NoteTokenizer

REGENERABLE = ("chord", "tempo", "instrument", "pitch", "duration", "velocity")
"""Attributes `regenerate` may draw again (metric and position keep the rhythm, and with it the form)."""


def is_score(x: Any) -> bool:
    """A symusic Score (of any tick unit)."""
    return type(x).__name__.startswith("Score")


def as_tokens(x: Any, tokenizer: NoteTokenizer, what: str) -> np.ndarray:
    """A prompt / template as a token matrix starting with SOS, cut before its first EOS."""
    if isinstance(x, (str, Path)) or is_score(x):
        x = tokenizer.encode(x)
    tok = np.asarray(x, dtype=np.int64)
    if tok.ndim != 2 or tok.shape[1] != tokenizer.K:
        raise ValueError(f"{what} must be a token matrix [N, {tokenizer.K}], got shape {tok.shape}")
    bad = (tok < 0) | (tok >= np.asarray(tokenizer.vocab_sizes))
    if bad.any():
        r, k = map(int, np.argwhere(bad)[0])
        raise ValueError(f"{what}: row {r} attribute {tokenizer.attribute_names[k]} = {tok[r, k]} is outside "
                         f"its vocabulary (size {tokenizer.vocab_sizes[k]})")
    eos = np.nonzero(tok[:, COL_METRIC] == METRIC_EOS)[0]
    if len(eos):
        tok = tok[: eos[0]]
    if len(tok) == 0 or tok[0, COL_METRIC] != METRIC_SOS:
        tok = np.concatenate([tokenizer.sos_row()[None], tok])
    if ((tok[1:, COL_METRIC] == METRIC_SOS) & ~is_marker(tok[1:])).any():
        raise ValueError(f"{what}: SOS appears after the first row")
    return tok


def prompt_from_midi(tokenizer: NoteTokenizer, source: Any, bars: int | None = None,
                     notes: int | None = None) -> np.ndarray:
    """The first `bars` bars (or first `notes` rows after SOS) of a MIDI file / Score / token matrix,
    as a prompt (SOS first, no EOS). Both None: the whole piece."""
    tok = as_tokens(source, tokenizer, f"prompt {source}" if isinstance(source, (str, Path)) else "prompt")
    if bars is not None:
        if bars < 1:
            raise ValueError(f"prompt bars must be >= 1, got {bars}")
        m = tok[:, COL_METRIC]
        starts = np.nonzero(is_bar_start(m))[0]
        if len(starts) > bars:
            tok = tok[: starts[bars]]
    if notes is not None:
        if notes < 1:
            raise ValueError(f"prompt notes must be >= 1, got {notes}")
        tok = tok[: 1 + notes]
    return tok


class PromptState(NamedTuple):
    """The grammar state of the music the next row continues."""

    bars: int  # bars started
    ts: int  # current time-signature index (-1 before the first bar)
    pos: int  # position value of the last note in the current bar (0 if none)
    n_in_bar: int  # notes in the current bar
    n_onset: int  # notes at the last note's onset (0 if none)
    inst: int  # instrument of the last note in the current bar (0 if none)
    pitch: int  # its pitch (0 if none)


def prompt_state(tok: np.ndarray, tokenizer: NoteTokenizer) -> PromptState:
    """The grammar state (`PromptState`) of the music the next row continues. A reordered prompt (`amadeus.infill`) continues its last part: after an ADD
    marker a fresh piece (nothing yet); after a MIDDLE marker the music before the gap (between the PREFIX
    and MIDDLE markers), where the next row opens a bar (position and notes in the bar 0)."""
    markers = np.flatnonzero(is_marker(tok))
    if len(markers):
        kind = tok[markers[-1], COL_POSITION]
        if kind != MARKER_MIDDLE:
            return _state(tok[markers[-1] + 1:], tokenizer)
        prefix = markers[(tok[markers, COL_POSITION] == MARKER_PREFIX)]
        before = _state(tok[(prefix[-1] + 1 if len(prefix) else markers[-1]):markers[-1]], tokenizer)
        return PromptState(before.bars, before.ts, 0, 0, 0, 0, 0)
    return _state(tok, tokenizer)


def _state(tok: np.ndarray, tokenizer: NoteTokenizer) -> PromptState:
    m = tok[:, COL_METRIC]
    starts = is_bar_start(m)
    bars = int(starts.sum())
    if bars == 0:
        return PromptState(0, -1, 0, 0, 0, 0, 0)
    ts_rows = np.nonzero(is_ts_change(m))[0]
    ts = int(m[ts_rows[-1]] - METRIC_TS_OFFSET) if len(ts_rows) else tokenizer.default_ts
    last = int(np.nonzero(starts)[0][-1])
    bar_rows = tok[last:]
    note = bar_rows[:, COL_PITCH] > 0
    if not note.any():
        return PromptState(bars, ts, 0, 0, 0, 0, 0)
    last = bar_rows[note][-1]
    n_onset = int((bar_rows[note, COL_POSITION] == last[COL_POSITION]).sum())
    return PromptState(bars, ts, int(last[COL_POSITION]), int(note.sum()), n_onset, int(last[COL_INSTRUMENT]),
                       int(last[COL_PITCH]))


def template_slots(template: Any, tokenizer: NoteTokenizer, attributes: Sequence[str] | str,
                   rows: Any) -> tuple[np.ndarray, np.ndarray]:
    """(rows after SOS [T, K], free slots [T, K]) for regeneration: `attributes` of the note rows `rows`
    (None: every note; row numbers, 1 = the first row after SOS; or a boolean mask over those rows)."""
    tok = as_tokens(template, tokenizer, "template")[1:]
    names = tokenizer.attribute_names
    attributes = [attributes] if isinstance(attributes, str) else list(attributes)
    if not attributes:
        raise ValueError(f"regenerate: name the attributes to re-sample (any of {', '.join(REGENERABLE)})")
    bad = [a for a in attributes if a not in REGENERABLE]
    if bad:
        raise ValueError(f"regenerate: cannot re-sample {bad}; choose from {', '.join(REGENERABLE)} "
                         "(metric and position keep the rhythm, and with it the piece's structure)")
    note = tok[:, COL_PITCH] > 0
    chosen = np.ones(len(tok), dtype=bool)
    if rows is not None:
        r = np.asarray(rows)
        chosen = r.astype(bool) if r.dtype == bool else np.isin(np.arange(1, len(tok) + 1), r)
        if len(chosen) != len(tok):
            raise ValueError(f"regenerate_rows: a mask must have one entry per row after SOS ({len(tok)})")
    free = np.zeros(tok.shape, dtype=bool)
    cols = [names.index(a) for a in attributes]
    free[np.ix_(note & chosen, cols)] = True
    return tok, free

