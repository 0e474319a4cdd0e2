"""The sampler's guards: per-note tables and masks on hand-made piece states."""

from __future__ import annotations

import torch

from amadeus.controls import parse_controls
from amadeus.grammar import (
    METRIC_EMPTY_BAR,
    METRIC_EOS,
    METRIC_NEW_BAR,
    METRIC_NEW_POSITION,
    METRIC_SAME_ONSET,
    METRIC_TS_OFFSET,
)
from amadeus.sampling.guards import Guards, NoteTables
from amadeus.theory import DRUM_PITCHES
from token_matrices import TOK


# ---- the sampler's guards ---------------------------------------------------------------------


class _Piece:
    """A PieceState for B pieces."""

    def __init__(self, **values: list[int]) -> None:
        for k, v in values.items():
            setattr(self, k, torch.tensor(v))


def test_note_tables_is_a_named_tuple_of_the_guards():
    g = Guards(TOK, parse_controls([], TOK), torch.device("cpu"))
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


def test_guards_drum_mask_is_the_drum_range():
    g = Guards(TOK, parse_controls([], TOK), torch.device("cpu"))
    lo, hi = DRUM_PITCHES
    assert (g.drum_pitch.nonzero().squeeze(1) - 1).tolist() == list(range(lo, hi + 1))


