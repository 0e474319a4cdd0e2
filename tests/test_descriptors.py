"""Per-piece descriptors on hand-made pieces with known values, and the set comparison (OA, KL)."""
import math

import numpy as np
import pytest
from midi_factory import make_score, part

from amadeus.descriptors import (DESCRIPTORS, EXTREMES, bandwidth, compare, corpus_limits, degenerate, describe,
                                 describe_set, overlap)

Q = 480  # ticks per quarter


def score_of(notes, time_signatures=((0, 4, 4),), drums=()):
    """notes: (onset quarters, duration quarters, pitch)."""
    tracks = [part([(int(t * Q), int(d * Q), p, 80) for t, d, p in notes])]
    if drums:
        tracks.append(part([(int(t * Q), int(d * Q), p, 80) for t, d, p in drums], is_drum=True))
    return make_score(tracks, tpq=Q, time_signatures=time_signatures)


def test_triad_is_consonant_and_in_scale():
    d = describe(score_of([(0, 1, 60), (0, 1, 64), (0, 1, 67)]))
    assert d["consonance"] == 1.0
    assert d["polyphony"] == 3.0
    assert d["pitch_range"] == 7.0
    assert d["scale_consistency"] == 1.0
    assert d["pitch_class_entropy"] == pytest.approx(math.log2(3))
    assert math.isnan(d["ioi"])  # one onset


def test_semitone_cluster_is_dissonant_and_held_notes_count():
    # C held for two quarters, C# enters at quarter 1: pairs at onset 1 = {C, C#} (ic 1)
    d = describe(score_of([(0, 2, 60), (1, 1, 61)]))
    assert d["consonance"] == 0.0
    assert d["polyphony"] == pytest.approx(1.5)  # 1 note sounds at onset 0, 2 at onset 1
    # a tritone and a fifth: one pair of each -> half consonant
    d = describe(score_of([(0, 1, 60), (0, 1, 66), (1, 1, 60), (1, 1, 67)]))
    assert d["consonance"] == pytest.approx(0.5)


def test_scale_and_rhythm():
    scale = [60, 62, 64, 65, 67, 69, 71, 61]  # C major plus C#: 7 of 8 notes in one scale
    d = describe(score_of([(i * 0.5, 0.5, p) for i, p in enumerate(scale)]))
    assert d["scale_consistency"] == pytest.approx(7 / 8)
    assert d["ioi"] == pytest.approx(0.5)
    assert d["note_length"] == pytest.approx(0.5)
    assert d["on_beat"] == pytest.approx(0.5)  # onsets 0, .5, 1, ..., 3.5 in 4/4
    assert d["melodic_interval"] == pytest.approx(np.abs(np.diff(scale)).mean())


def test_top_line_takes_the_highest_note_of_each_onset():
    notes = [(0, 1, 48), (0, 1, 60), (1, 1, 50), (1, 1, 64), (2, 1, 52), (2, 1, 67)]
    assert describe(score_of(notes))["melodic_interval"] == pytest.approx(3.5)


def test_on_beat_follows_the_time_signature():
    # in 6/8 the beat is an eighth: onsets every eighth are all on a beat
    notes = [(i * 0.5, 0.5, 60) for i in range(6)]
    assert describe(score_of(notes, time_signatures=((0, 6, 8),)))["on_beat"] == 1.0
    assert describe(score_of(notes))["on_beat"] == pytest.approx(0.5)


def test_groove_consistency_and_empty_beats():
    same = [(b * 4 + i, 1, 60) for b in range(2) for i in range(4)]
    assert describe(score_of(same))["groove_consistency"] == 1.0
    changed = [(i, 1, 60) for i in range(4)] + [(4, 2, 60), (6, 2, 60)]
    assert describe(score_of(changed))["groove_consistency"] == pytest.approx(1 - 2 / 48)
    d = describe(score_of([(0, 1, 60), (3, 1, 62)]))  # beats 1 and 2 of the bar are silent
    assert d["empty_beat_rate"] == pytest.approx(0.5)


def test_drums_count_for_rhythm_not_for_pitch():
    d = describe(score_of([(0, 4, 60)], drums=[(1, 0.5, 36), (2, 0.5, 38)]))
    assert d["pitch_range"] == 0.0 and d["polyphony"] == 1.0
    assert d["ioi"] == pytest.approx(1.0)  # onsets 0, 1, 2 (drums included)


def test_empty_piece_gives_nan_not_errors():
    d = describe(make_score([], tpq=Q))
    assert set(d) == set(DESCRIPTORS)
    assert all(math.isnan(v) for v in d.values())


def test_overlap_of_a_set_with_itself_is_one_and_disjoint_sets_near_zero():
    rng = np.random.default_rng(0)
    a = rng.normal(0, 1, 64)
    oa, kl = overlap(a, a)
    assert oa == pytest.approx(1.0, abs=1e-6) and kl == pytest.approx(0.0, abs=1e-6)
    oa, kl = overlap(a, a + 100)
    assert oa < 0.01 and kl > 10
    oa, _ = overlap(a, rng.normal(0, 1, 64))  # two samples of one distribution: high, below 1
    assert 0.75 < oa < 1.0
    assert overlap([math.nan], a)[0] == pytest.approx(0.0)  # undefined against defined: no overlap
    assert math.isnan(overlap([], a)[0])


def test_an_outlier_cannot_raise_the_overlap():
    """The issue's case: a set shifted by 3 standard deviations scores low, and one extreme piece added to it
    must not raise its score (the kernel width is the reference's, whatever the generated set holds)."""
    rng = np.random.default_rng(3)
    real = rng.normal(0, 1, 64)
    shifted = rng.normal(3, 1, 64)
    oa_shifted, _ = overlap(shifted, real)
    assert oa_shifted < 0.3
    oa_outlier, _ = overlap(np.append(shifted, 1000.0), real)
    assert oa_outlier <= oa_shifted + 1e-9
    assert bandwidth(real) == pytest.approx(1.06 * np.std(real) * 64 ** -0.2)
    near, _ = overlap(rng.normal(0, 1, 64), real)
    assert overlap(np.append(rng.normal(0, 1, 64), 1000.0), real)[0] < near + 0.05  # no reward either way


def test_undefined_values_count_against_the_match():
    rng = np.random.default_rng(4)
    real = rng.uniform(0.5, 1.0, 40)
    same = real.copy()
    assert overlap(same, real)[0] == pytest.approx(1.0, abs=1e-6)
    half = same.copy()
    half[::2] = math.nan  # defined on one side only for half the pieces
    assert overlap(half, real)[0] == pytest.approx(0.5, abs=0.01)
    assert overlap([math.nan] * 5, [math.nan] * 7)[0] == pytest.approx(1.0)  # both undefined: the same atom
    mixed_real = np.append(real, [math.nan] * 40)  # half undefined in the reference too
    assert overlap(np.append(real, [math.nan] * 40), mixed_real)[0] == pytest.approx(1.0, abs=1e-6)
    assert overlap(real, mixed_real)[0] == pytest.approx(0.5, abs=0.01)


def test_compare_sets_of_pieces():
    real = [score_of([(i, 1, p + k) for i in range(4) for p in (60, 64, 67)]) for k in range(6)]
    noise = [score_of([(i, 1, p + k) for i in range(4) for p in (60, 61, 66)]) for k in range(6)]
    r = describe_set(real)
    assert compare(r, r)["oa"]["consonance"] == pytest.approx(1.0)
    result = compare(describe_set(noise), r)
    assert result["oa"]["consonance"] < 0.05
    assert result["mean"]["consonance"] < result["real_mean"]["consonance"]
    assert 0 < result["mean_oa"] < 1
    assert result["undefined"]["ioi"] == {"generated": 0.0, "reference": 0.0}
    assert result["bandwidth"]["consonance"] == pytest.approx(bandwidth(r["consonance"]))
    assert result["degenerate"]["rate"] == 0.0 and result["pieces"] == result["real_pieces"] == 6


def test_interval_furthest_pieces_and_degenerate_pieces():
    rng = np.random.default_rng(5)

    def chorale(k):  # four voices, one chord per beat, 8 beats
        return score_of([(b, 1, p + int(rng.integers(-2, 3))) for b in range(8) for p in (48, 55, 64, 72)])

    real = describe_set([chorale(k) for k in range(24)])
    gen_scores = [chorale(k) for k in range(11)]
    gen_scores.append(score_of([(0, 4, 40 + i) for i in range(40)] + [(4 + b, 1, 60) for b in range(4)]))  # a pile
    gen = describe_set(gen_scores)
    assert set(EXTREMES) <= set(gen)
    assert real["max_voices"].max() == 4 and gen["max_voices"][-1] == 40 and gen["max_notes_per_beat"][-1] == 40
    result = compare(gen, real, seed=1)
    low, high = result["mean_oa_ci95"]
    assert 0 <= low < result["mean_oa"] < high <= 1
    assert compare(gen, real, seed=1)["mean_oa_ci95"] == [low, high]  # seeded
    assert result["furthest"][0]["index"] == 11 and result["furthest"][0]["distance"] > 3
    assert result["furthest"][0]["descriptors"]["max_voices"] == 40
    assert result["degenerate"]["pieces"] == [11] and result["degenerate"]["rate"] == pytest.approx(1 / 12)
    limits = corpus_limits(real)
    assert limits == {"max_voices": 4.0, "max_notes_per_beat": 4.0}
    assert degenerate(gen, {"max_voices": 40.0, "max_notes_per_beat": 40.0})["rate"] == 0.0


def test_extremes_of_hand_made_pieces():
    # C held 4 beats under a run of eighths: 2 notes sound at every onset; 2 onsets per beat
    d = describe_set([score_of([(0, 4, 48)] + [(i * 0.5, 0.5, 60 + i) for i in range(8)])])
    assert d["max_voices"][0] == 2 and d["max_notes_per_beat"][0] == 3  # beat 1: the C and two eighths
    assert math.isnan(describe_set([make_score([], tpq=Q)])["max_voices"][0])
