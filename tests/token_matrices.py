"""Hand-made token matrices for the grammar, syntax and guard tests."""
from __future__ import annotations

import numpy as np

from amadeus.grammar import (
    COL_METRIC,
    COL_PITCH,
    COL_POSITION,
    METRIC_EMPTY_BAR,
    METRIC_EOS,
    METRIC_NEW_BAR,
    METRIC_NEW_POSITION,
    METRIC_SAME_ONSET,
    METRIC_SOS,
    METRIC_TS_OFFSET,
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
