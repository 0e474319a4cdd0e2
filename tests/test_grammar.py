"""The note matrix's grammar on hand-made token matrices: row predicates, EOS cut, the time signature
in force at each row."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from amadeus.grammar import (
    COL_METRIC,
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
    is_drum_pitch,
    is_note_metric,
    is_ts_change,
    note_rows,
    ts_per_row,
)
from amadeus.theory import DRUM_PITCHES
from token_matrices import PIECE, TOK, TS_3_4, TS_6_8


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


@pytest.mark.parametrize("module", ["amadeus.grammar", "amadeus.tokenizer", "amadeus.syntax",
                                    "amadeus.sampling.options", "amadeus.commands.corpus",
                                    "amadeus.commands.preprocess"])
def test_grammar_and_tokenizer_import_without_torch(module):
    """The tokenizer (preprocessing workers) imports the grammar, the data commands the sampler's options:
    none of them may pull in torch."""
    import subprocess
    import sys

    code = f"import sys, {module}; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
