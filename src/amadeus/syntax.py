"""The evaluation's independent grammar check of generated token matrices: one flag per error kind and row.

Independent of the sampler's guards (`amadeus.sampling.guards`), which prevent these errors; this check
finds them in any matrix (a model sampled without guards, another decoder, a damaged file).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from amadeus.grammar import (
    COL_INSTRUMENT,
    COL_METRIC,
    COL_PITCH,
    COL_POSITION,
    DRUM_INSTRUMENT,
    METRIC_NEW_POSITION,
    METRIC_PAD,
    METRIC_SAME_ONSET,
    METRIC_SOS,
    cut_at_eos,
    is_drum_pitch,
    is_note_metric,
    is_ts_change,
    ts_per_row,
)
from amadeus.tokenizer import NoteTokenizer

SYNTAX_ERRORS = (
    "bad_metric",  # metric 0 (n/a) in a non-padding row, unknown id in any column, SOS after row 0
    "orphan_onset",  # SAME_ONSET / NEW_POSITION with no note of the same bar before it
    "position_backwards",  # NEW_POSITION at or before the previous onset of the bar
    "same_onset_moved",  # SAME_ONSET with a position different from the previous note's
    "onset_order",  # SAME_ONSET with (instrument, pitch) not above the previous note's (the tokenizer sorts them)
    "position_outside_bar",  # position beyond the bar length of the current time signature
    "note_missing_attribute",  # a note row with 0 (n/a) in a column (pitch 0 included)
    "drum_pitch",  # a drum note outside the drum range DRUM_PITCHES
    "stray_attributes",  # SOS / EOS / EMPTY_BAR / bar-marker rows with values in note columns
    "after_eos",  # non-padding rows after the first EOS
)


def syntax_errors(tok: Any, tokenizer: NoteTokenizer) -> tuple[np.ndarray, int]:
    """Error flags of each non-padding row of a token matrix (numpy or torch):
    (flags bool [rows, len(SYNTAX_ERRORS)], rows).

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
    key = inst * 1000 + pitch  # (instrument, pitch) in lexicographic order
    prev_key = np.zeros(len(t), np.int64)
    prev_key[1:] = key[:-1]
    flags[:end, col["onset_order"]] = ~bad & (m == METRIC_SAME_ONSET) & prev_note & (key <= prev_key)
    flags[:end, col["position_outside_bar"]] = notes & (pos > 0) & (pos - 1 >= bar_len)
    flags[:end, col["note_missing_attribute"]] = notes & (t[:, 1:] == 0).any(axis=1)
    flags[:end, col["drum_pitch"]] = notes & (inst == DRUM_INSTRUMENT) & (pitch > 0) & ~is_drum_pitch(pitch)
    non_note = ~bad & ~notes
    flags[:end, col["stray_attributes"]] = non_note & (t[:, 1:] != 0).any(axis=1)
    return flags, n


