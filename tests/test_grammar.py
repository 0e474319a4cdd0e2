"""The note matrix's grammar on hand-made token matrices: row predicates, EOS cut, the time signature
in force at each row, the syntax-error check, and the sampler guards' per-note tables."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from midi_factory import small_piece

from amadeus.controls import parse_controls
from amadeus.theory import DRUM_PITCHES
from amadeus.grammar import (
    COL_INSTRUMENT,
    COL_METRIC,
    COL_PITCH,
    COL_POSITION,
    DRUM_INSTRUMENT,
    METRIC_EMPTY_BAR,
    METRIC_EOS,
    METRIC_NEW_BAR,
    METRIC_NEW_POSITION,
    METRIC_PAD,
    METRIC_SAME_ONSET,
    METRIC_SOS,
    METRIC_TS_OFFSET,
    SYNTAX_ERRORS,
    Grammar,
    NoteTables,
    cut_at_eos,
    is_bar_start,
    is_drum_pitch,
    is_note_metric,
    is_ts_change,
    note_rows,
    syntax_errors,
    ts_per_row,
)
from amadeus.tokenizer import NoteTokenizer

TOK = NoteTokenizer()
TS_3_4 = TOK.config.time_signatures.index((3, 4))
TS_6_8 = TOK.config.time_signatures.index((6, 8))


def matrix(rows: list[tuple[int, int, int]]) -> np.ndarray:
    """A token matrix from (metric, position, pitch) rows; the other note columns get 1 where pitch > 0."""
    tok = np.zeros((len(rows), 8), np.int64)
    for i, (m, pos, pitch) in enumerate(rows):
        tok[i, COL_METRIC], tok[i, COL_POSITION], tok[i, COL_PITCH] = m, pos, pitch
        if pitch:
            tok[i, 2:5] = 1
            tok[i, 6:] = 1
    return tok


# SOS | TS(3/4) note | SAME note | EMPTY_BAR | TS(6/8) marker of an empty bar (no pitch) |
# NEW_BAR note | NEWPOS note | EOS | a row after EOS
PIECE = matrix([
    (METRIC_SOS, 0, 0),
    (METRIC_TS_OFFSET + TS_3_4, 1, 61),
    (METRIC_SAME_ONSET, 1, 65),
    (METRIC_EMPTY_BAR, 0, 0),
    (METRIC_TS_OFFSET + TS_6_8, 0, 0),
    (METRIC_NEW_BAR, 1, 61),
    (METRIC_NEW_POSITION, 7, 63),
    (METRIC_EOS, 0, 0),
    (METRIC_NEW_POSITION, 9, 64),
])


# ---- row predicates ---------------------------------------------------------------------------


def test_metric_predicates_cover_every_metric_value():
    m = np.arange(METRIC_TS_OFFSET + 3)
    notes = [METRIC_SAME_ONSET, METRIC_NEW_POSITION, METRIC_NEW_BAR] + [METRIC_TS_OFFSET + i for i in range(3)]
    bars = [METRIC_EMPTY_BAR, METRIC_NEW_BAR] + [METRIC_TS_OFFSET + i for i in range(3)]
    assert np.nonzero(is_note_metric(m))[0].tolist() == notes
    assert np.nonzero(is_bar_start(m))[0].tolist() == bars
    assert np.nonzero(is_ts_change(m))[0].tolist() == [METRIC_TS_OFFSET + i for i in range(3)]
    for value in (METRIC_PAD, METRIC_SOS, METRIC_EOS):
        assert not is_note_metric(m)[value] and not is_bar_start(m)[value]


def test_predicates_work_on_torch_tensors_too():
    m = torch.arange(METRIC_TS_OFFSET + 3)
    for fn in (is_note_metric, is_bar_start, is_ts_change):
        out = fn(m)
        assert isinstance(out, torch.Tensor) and out.dtype == torch.bool
        assert out.tolist() == fn(m.numpy()).tolist()
    p = torch.arange(130)
    assert is_drum_pitch(p).tolist() == is_drum_pitch(p.numpy()).tolist()


def test_note_rows_and_bar_starts_of_a_hand_made_matrix():
    m = PIECE[:, COL_METRIC]
    # the NEW_BAR_TS marker of the empty 6/8 bar (row 4) starts a bar but carries no note
    assert np.nonzero(note_rows(PIECE))[0].tolist() == [1, 2, 5, 6, 8]
    assert np.nonzero(is_bar_start(m))[0].tolist() == [1, 3, 4, 5]
    assert np.nonzero(is_ts_change(m))[0].tolist() == [1, 4]
    assert np.cumsum(is_bar_start(m)).tolist() == [0, 1, 1, 2, 3, 4, 4, 4, 4]  # 1-based bar of each row


def test_drum_pitch_range_is_inclusive():
    lo, hi = DRUM_PITCHES
    p = np.arange(1, 129)  # pitch column values 1 + MIDI pitch
    assert (p[is_drum_pitch(p)] - 1).tolist() == list(range(lo, hi + 1))


# ---- EOS cut and time signature per row -------------------------------------------------------


def test_cut_at_eos():
    assert cut_at_eos(PIECE).tolist() == PIECE[:7].tolist()
    assert len(cut_at_eos(PIECE[:7])) == 7  # no EOS: everything
    two = np.concatenate([PIECE[:8], PIECE[:8]])
    assert len(cut_at_eos(two)) == 7  # the first EOS wins
    assert len(cut_at_eos(PIECE[7:])) == 0  # EOS first: nothing
    assert cut_at_eos(np.zeros((0, 8), np.int64)).shape == (0, 8)


def test_ts_per_row_forward_fills_and_defaults():
    m = PIECE[:, COL_METRIC]
    n_ts = len(TOK.config.time_signatures)
    expect = [TOK.default_ts, TS_3_4, TS_3_4, TS_3_4, TS_6_8, TS_6_8, TS_6_8, TS_6_8, TS_6_8]
    assert ts_per_row(m, TOK.default_ts, n_ts).tolist() == expect
    # before any NEW_BAR_TS row: the default, whatever it is
    assert ts_per_row(np.array([METRIC_SOS, METRIC_NEW_BAR, METRIC_NEW_POSITION]), 5, n_ts).tolist() == [5, 5, 5]
    # indices beyond the vocabulary are clipped to the last signature
    assert ts_per_row(np.array([METRIC_TS_OFFSET + n_ts + 4]), 0, n_ts).tolist() == [n_ts - 1]
    out = ts_per_row(np.zeros(0, np.int64), 0, n_ts)
    assert out.shape == (0,) and out.dtype == np.int64


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
                      "position_outside_bar": 2, "note_missing_attribute": 1, "drum_pitch": 1,
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


# ---- the sampler's guards ---------------------------------------------------------------------


class _Piece:
    """A PieceState for B pieces."""

    def __init__(self, **values: list[int]) -> None:
        for k, v in values.items():
            setattr(self, k, torch.tensor(v))


def test_note_tables_is_a_named_tuple_of_the_guards():
    g = Grammar(TOK, parse_controls([], TOK), torch.device("cpu"))
    # piece 0: nothing yet; piece 1: in a 4/4 bar, last note at position value 5
    st = _Piece(bar=[0, 1], ts=[-1, TOK.default_ts], pos=[0, 5], n_in_bar=[0, 1], n_gen=[0, 3])
    t = g.note_tables(st, torch.tensor([0, 0]))
    assert isinstance(t, NoteTables)
    B, Vm, Vp = 2, g.Vm, g.Vp
    assert t.allowed_metric.shape == (B, Vm) and t.can_be_empty.shape == (B, Vm)
    assert t.compatible_position.shape == (B, Vm, Vp)
    ts_values = torch.arange(Vm) >= METRIC_TS_OFFSET
    # before the first bar only a NEW_BAR_TS row may come; inside a bar, notes, bars and EOS too
    assert t.allowed_metric[0].tolist() == ts_values.tolist()
    for value in (METRIC_EOS, METRIC_EMPTY_BAR, METRIC_SAME_ONSET, METRIC_NEW_POSITION, METRIC_NEW_BAR):
        assert t.allowed_metric[1, value]
    # SAME_ONSET keeps position 5; NEW_POSITION moves forward inside the 48-step bar
    assert t.compatible_position[1, METRIC_SAME_ONSET].nonzero().squeeze(1).tolist() == [5]
    assert t.compatible_position[1, METRIC_NEW_POSITION].nonzero().squeeze(1).tolist() == list(range(6, 49))
    sub = t.take(torch.tensor([1]))
    assert isinstance(sub, NoteTables) and (sub.allowed_metric[0] == t.allowed_metric[1]).all()


def test_grammar_drum_mask_is_the_drum_range():
    g = Grammar(TOK, parse_controls([], TOK), torch.device("cpu"))
    lo, hi = DRUM_PITCHES
    assert (g.drum_pitch.nonzero().squeeze(1) - 1).tolist() == list(range(lo, hi + 1))


@pytest.mark.parametrize("module", ["amadeus.grammar", "amadeus.tokenizer"])
def test_grammar_and_tokenizer_import_without_torch(module):
    """The tokenizer (preprocessing workers) imports the grammar: neither may pull in torch."""
    import subprocess
    import sys

    code = f"import sys, {module}; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
