"""The sampler's guards: per-note tables and masks on hand-made piece states."""

from __future__ import annotations

import torch

from amadeus.controls import parse_controls
from amadeus.grammar import (
    COL_INSTRUMENT,
    COL_METRIC,
    COL_PITCH,
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
    st = _Piece(bar=[0, 1], ts=[-1, TOK.default_ts], pos=[0, 5], n_in_bar=[0, 1], n_gen=[0, 3], n_onset=[0, 1],
                inst=[0, 1], pitch=[0, 61])
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




def test_guards_keep_the_notes_of_an_onset_in_the_tokenizer_order():
    """A SAME_ONSET row's (instrument, pitch) is above the previous note's; a NEW_POSITION row is free."""
    g = Guards(TOK, parse_controls([], TOK), torch.device("cpu"))
    violin, piano = 1 + 40, 1 + 0  # instrument values (1 + GM program)
    st = _Piece(bar=[1], ts=[TOK.default_ts], pos=[5], n_in_bar=[2], n_gen=[3], n_onset=[2], inst=[violin],
                pitch=[61])
    t = g.note_tables(st, torch.tensor([0]))
    tok, rev = torch.zeros(1, TOK.K, dtype=torch.long), torch.zeros(1, TOK.K, dtype=torch.bool)
    ctrl = g.ctrl_static[None]

    def nonzero(a, col):
        return a[0, col].nonzero().squeeze(1)

    a = g.allowed(t, ctrl, *reveal_cols(tok, rev, {COL_METRIC: METRIC_SAME_ONSET}))
    assert nonzero(a, COL_INSTRUMENT).min() == violin and not a[0, COL_INSTRUMENT, piano]
    assert a[0, COL_PITCH, 40] and a[0, COL_PITCH, 61]  # a low pitch is still fine for a later instrument
    a = g.allowed(t, ctrl, *reveal_cols(tok, rev, {COL_METRIC: METRIC_SAME_ONSET, COL_INSTRUMENT: violin}))
    assert nonzero(a, COL_PITCH).min() == 62  # the violin's next note at this onset is higher
    # the instrument and pitch first: a lower violin note can only start a new position
    a = g.allowed(t, ctrl, *reveal_cols(tok, rev, {COL_INSTRUMENT: violin, COL_PITCH: 50}))
    assert not a[0, COL_METRIC, METRIC_SAME_ONSET] and a[0, COL_METRIC, METRIC_NEW_POSITION]
    a = g.allowed(t, ctrl, *reveal_cols(tok, rev, {COL_INSTRUMENT: piano}))
    assert not a[0, COL_METRIC, METRIC_SAME_ONSET]
    a = g.allowed(t, ctrl, *reveal_cols(tok, rev, {COL_METRIC: METRIC_NEW_POSITION}))
    assert a[0, COL_INSTRUMENT, piano] and a[0, COL_PITCH, 40]
    # slots revealed together are checked the same way
    for slots, ok in [({COL_METRIC: METRIC_SAME_ONSET, COL_INSTRUMENT: piano}, False),
                      ({COL_METRIC: METRIC_SAME_ONSET, COL_INSTRUMENT: violin, COL_PITCH: 50}, False),
                      ({COL_METRIC: METRIC_SAME_ONSET, COL_INSTRUMENT: violin, COL_PITCH: 61}, False),
                      ({COL_METRIC: METRIC_SAME_ONSET, COL_INSTRUMENT: violin, COL_PITCH: 62}, True),
                      ({COL_METRIC: METRIC_SAME_ONSET, COL_PITCH: 50}, True),  # a later instrument may play it
                      ({COL_METRIC: METRIC_NEW_POSITION, COL_INSTRUMENT: piano}, True)]:
        assert bool(g.consistent(t, ctrl, *reveal_cols(tok, rev, slots))) == ok, slots

    # at most max_onset_notes notes start at one onset
    capped = Guards(TOK, parse_controls([], TOK), torch.device("cpu"), max_onset_notes=2)
    assert capped.note_tables(st, torch.tensor([0])).allowed_metric[0, METRIC_SAME_ONSET] == False  # noqa: E712
    assert t.allowed_metric[0, METRIC_SAME_ONSET] and capped.note_tables(st, torch.tensor([0])).allowed_metric[
        0, METRIC_NEW_POSITION]


def reveal_cols(tok: torch.Tensor, rev: torch.Tensor, slots: dict[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(tok, rev) of one row with `slots` {column: value} revealed."""
    tk, rv = tok.clone(), rev.clone()
    for col, value in slots.items():
        tk[0, col], rv[0, col] = value, True
    return tk, rv
