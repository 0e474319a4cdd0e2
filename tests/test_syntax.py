"""The evaluation's independent syntax check on hand-made token matrices."""

from __future__ import annotations

import numpy as np
import torch

from amadeus.grammar import (
    COL_INSTRUMENT,
    COL_PITCH,
    DRUM_INSTRUMENT,
    METRIC_EMPTY_BAR,
    METRIC_EOS,
    METRIC_NEW_BAR,
    METRIC_NEW_POSITION,
    METRIC_SOS,
    METRIC_TS_OFFSET,
)
from amadeus.grammar import sort_onsets
from amadeus.syntax import SYNTAX_ERRORS, syntax_errors
from amadeus.theory import DRUM_PITCHES
from midi_factory import small_piece
from token_matrices import TOK, TS_3_4, matrix


# ---- syntax errors (moved from test_metrics.py) -----------------------------------------------


def small_piece_tokens() -> np.ndarray:
    return TOK.encode(small_piece())


def test_syntax_errors_on_hand_made_matrices():
    tok = small_piece_tokens()
    # rows: 0 SOS | 1 TS(C4) 2 SAME(E4) 3 SAME(drum) 4 NEWPOS(G4) 5 NEWPOS(C5) | 6 NEWBAR 7 NEWPOS | 8 EOS
    flags, rows = syntax_errors(tok, TOK)
    assert rows == 9 and not flags.any()
    bad = tok.copy()
    bad[5, 1] = bad[4, 1] - 2  # NEW_POSITION going backwards
    bad[2, 1] += 1  # SAME_ONSET moved
    bad[7, 5] = 0  # note row with pitch 0
    bad[6, 1], bad[7, 1] = 49, 50  # positions beyond a 48-step 4/4 bar (the vocabulary allows 8/4)
    bad[3, 5] = 1 + 20  # drum pitch outside 27..87
    padded = np.concatenate([bad, bad[1:3], np.zeros((4, 8), np.int64)])  # 2 rows after EOS, 4 padding rows
    flags, rows = syntax_errors(padded, TOK)
    counts = dict(zip(SYNTAX_ERRORS, flags.sum(axis=0).tolist()))
    assert rows == 11
    assert counts == {"bad_metric": 0, "orphan_onset": 0, "position_backwards": 1, "same_onset_moved": 2,
                      "onset_order": 0, "position_outside_bar": 2, "note_missing_attribute": 1, "drum_pitch": 1,
                      "stray_attributes": 0, "after_eos": 2}  # row 3 (drum) no longer shares row 2's moved onset
    same, _ = syntax_errors(torch.as_tensor(padded), TOK)  # a tensor gives the same flags
    assert (same == flags).all()


def test_syntax_orphans_and_stray_values():
    tok = small_piece_tokens()
    bad = tok.copy()
    bad[1, 0] = METRIC_NEW_POSITION  # first note of the piece without a bar
    bad[0, 3] = 5  # SOS row with a tempo value
    flags, _ = syntax_errors(bad, TOK)
    counts = dict(zip(SYNTAX_ERRORS, flags.sum(axis=0).tolist()))
    assert counts["orphan_onset"] == 1 and counts["stray_attributes"] == 1
    bad = tok.copy()
    bad[4, 0] = 0  # metric n/a on a non-padding row
    bad[5, 6] = 10_000  # unknown duration id
    counts = dict(zip(SYNTAX_ERRORS, syntax_errors(bad, TOK)[0].sum(axis=0).tolist()))
    assert counts["bad_metric"] == 2


def test_syntax_onset_order():
    # rows 1-3 share an onset in the tokenizer's order: C4, E4, then the drum (the last instrument)
    tok = small_piece_tokens()
    assert not syntax_errors(tok, TOK)[0].any()
    swapped = tok.copy()
    swapped[[2, 3], 4:6] = tok[[3, 2], 4:6]  # the drum before E4: the instrument steps back
    flags, _ = syntax_errors(swapped, TOK)
    assert flags[:, SYNTAX_ERRORS.index("onset_order")].nonzero()[0].tolist() == [3] and flags.sum() == 1
    lower = tok.copy()
    lower[2, COL_PITCH] = tok[1, COL_PITCH] - 1  # below C4 with the same instrument
    flags, _ = syntax_errors(lower, TOK)
    assert flags[:, SYNTAX_ERRORS.index("onset_order")].nonzero()[0].tolist() == [2]
    same = tok.copy()
    same[2, 4:6] = tok[1, 4:6]  # a unison in one instrument: the tokenizer writes it once
    assert syntax_errors(same, TOK)[0][2, SYNTAX_ERRORS.index("onset_order")]


def test_sort_onsets_restores_the_tokenizer_order():
    tok = small_piece_tokens()
    swapped = tok.copy()
    swapped[[2, 3], 4:] = tok[[3, 2], 4:]  # the drum note before E4 at the first onset
    assert syntax_errors(swapped, TOK)[0].any()
    np.testing.assert_array_equal(sort_onsets(swapped), tok)
    np.testing.assert_array_equal(sort_onsets(tok), tok)


def test_syntax_errors_follow_the_time_signature_in_force():
    # a 3/4 bar is 36 steps: position 37 fits 4/4 but not 3/4; the empty-bar marker row is no note
    tok = matrix([(METRIC_SOS, 0, 0), (METRIC_TS_OFFSET + TS_3_4, 37, 61), (METRIC_EMPTY_BAR, 0, 0),
                  (METRIC_TS_OFFSET + TOK.default_ts, 0, 0), (METRIC_NEW_BAR, 37, 61), (METRIC_EOS, 0, 0)])
    flags, rows = syntax_errors(tok, TOK)
    counts = dict(zip(SYNTAX_ERRORS, flags.sum(axis=0).tolist()))
    assert rows == 6 and counts["position_outside_bar"] == 1 and flags.sum() == 1
    assert flags[1, SYNTAX_ERRORS.index("position_outside_bar")]
    drum = tok.copy()
    drum[4, COL_INSTRUMENT], drum[4, COL_PITCH] = DRUM_INSTRUMENT, 1 + DRUM_PITCHES[1] + 1
    assert syntax_errors(drum, TOK)[0][4, SYNTAX_ERRORS.index("drum_pitch")]


