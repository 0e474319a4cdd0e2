"""Musical features: key, tempo, time signature, instruments, chords, on pieces with known answers."""

from __future__ import annotations

import json

import pytest
from midi_factory import block_chords, make_score, part, quarters, write
from symusic import Score

from amadeus.features import (
    TEMPO_BIN_EDGES,
    TEMPO_WORDS,
    estimate_key,
    extract_features,
    tempo_bin,
    tempo_word,
)

Q = 480
C_MAJOR = [[48, 64, 67, 72], [53, 65, 69, 72], [55, 62, 67, 71], [48, 64, 67, 72]]  # C F G C
A_MINOR = [[45, 60, 64, 69], [50, 62, 65, 69], [52, 59, 64, 68], [45, 60, 64, 69]]  # Am Dm E Am


def c_major_piece() -> Score:
    chords = block_chords(C_MAJOR * 2, Q, beats=2)
    melody = quarters(Q, [(i, 1, p) for i, p in enumerate([72, 76, 77, 72, 74, 71, 72, 67] * 2)])  # chord tones
    return make_score([part(chords, program=0), part(melody, program=0)], tpq=Q, tempos=[(0, 80)],
                      time_signatures=[(0, 4, 4)])


def test_c_major_piece():
    f = extract_features(c_major_piece())
    assert (f["key"], f["key_tonic"], f["key_mode"]) == ("C major", "C", "major")
    assert f["tempo"] == f["tempo_first"] == 80 and f["tempo_word"] == "Andante"
    assert f["time_signature"] == "4/4" and f["time_signature_changes"] == 0
    assert f["instruments"] == ["Acoustic Grand Piano"] and f["instrument_programs"] == [0]
    assert f["n_notes"] == 48 and f["n_tracks"] == 2 and f["n_voices"] == 2
    assert f["chords"] == ["C", "F", "G"]  # C sounds longest
    assert f["chord_progression"] == ["C", "F", "G"]
    assert f["duration"] == pytest.approx(16 * 60 / 80)
    json.dumps(f)  # JSON-serialisable


def test_a_minor_piece_in_three_four():
    score = make_score([part(block_chords(A_MINOR * 2, Q, beats=3), program=40)], tpq=Q, tempos=[(0, 150)],
                       time_signatures=[(0, 3, 4)])
    f = extract_features(score)
    assert f["key"] == "A minor" and f["key_mode"] == "minor"
    assert f["time_signature"] == "3/4" and f["tempo_word"] == "Vivace"
    assert set(f["chords"]) == {"Am", "Dm", "E"} and f["instruments"] == ["Violin"]


def test_most_used_tempo_and_signature_and_instrument_order(tmp_path):
    drums = [(i * Q // 2, Q // 4, 36, 100) for i in range(40)]
    violin = quarters(Q, [(i, 1, 67 + i % 3) for i in range(10)])
    cello = quarters(Q, [(4 * i, 4, 48) for i in range(5)])
    score = make_score([part(cello, program=42), part(drums, is_drum=True), part(violin, program=40)],
                       tpq=Q, tempos=[(0, 150), (Q, 60)],
                       time_signatures=[(0, 4, 4), (4 * Q, 3, 4)])
    path = write(score, tmp_path / "mix.mid")
    f = extract_features(path)
    assert f["instruments"] == ["Drums", "Violin", "Cello"]
    assert f["instrument_programs"] == [128, 40, 42] and f["instrument_notes"] == [40, 10, 5]
    assert f["tempo"] == 60 and f["tempo_first"] == 150 and f["tempo_word"] == "Largo"
    assert f["time_signature"] == "3/4" and f["time_signature_changes"] == 1
    assert f["n_voices"] == 2 and f["n_tracks"] == 3
    assert f["duration"] == pytest.approx(60 / 150 + 19 * 60 / 60)  # ends at quarter 20


def test_tempo_bins_are_public_and_match_midicaps():
    assert len(TEMPO_WORDS) == len(TEMPO_BIN_EDGES) + 1
    assert [tempo_bin(b) for b in (20, 40, 40.5, 60, 61, 90, 120, 160, 200, 211, 300)] == \
        [0, 0, 1, 1, 2, 3, 5, 6, 7, 8, 8]
    assert tempo_word(100) == "Moderato" and tempo_word(30) == "Grave" and tempo_word(250) == "Prestissimo"
    assert [tempo_word(b, simple=True) for b in (60, 100, 150, 200)] == ["Slow", "Moderate tempo", "Fast",
                                                                       "Very fast"]


def test_key_estimation_on_scales():
    import numpy as np

    for tonic in range(12):
        major = np.array([0, 2, 4, 5, 7, 9, 11, 12]) + 60 + tonic
        weights = np.array([4, 1, 2, 1, 3, 1, 1, 4])  # tonic and dominant emphasised
        assert estimate_key(major, weights)[:2] == (tonic, "major")
        minor = np.array([0, 2, 3, 5, 7, 8, 11, 12]) + 60 + tonic
        assert estimate_key(minor, weights)[:2] == (tonic, "minor")
    assert estimate_key(np.array([60]), np.array([0])) is None


def test_empty_score_and_bad_file(tmp_path):
    f = extract_features(Score(480))
    assert f["n_notes"] == 0 and f["key"] is None and f["chords"] == [] and f["time_signature"] == "4/4"
    assert f["tempo"] == 120 and f["instruments"] == []
    json.dumps(f)
    with pytest.raises(ValueError, match="missing.mid"):
        extract_features(tmp_path / "missing.mid")
