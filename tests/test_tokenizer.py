"""NoteTokenizer: layout, lossless round trips, counted losses, robustness, persistence."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from midi_factory import block_chords, make_score, part, quarters, random_grid_notes, write
from symusic import Score

from amadeus.theory import CHORD_QUALITIES
from amadeus.cli import main as cli_main
from amadeus.syntax import syntax_errors
from amadeus.tokenizer import (
    ATTRIBUTES,
    CHORD_NONE,
    COL_CHORD,
    COL_INSTRUMENT,
    COL_METRIC,
    COL_PITCH,
    COL_POSITION,
    DRUM_INSTRUMENT,
    METRIC_EMPTY_BAR,
    METRIC_EOS,
    METRIC_NEW_BAR,
    METRIC_NEW_POSITION,
    METRIC_SAME_ONSET,
    METRIC_SOS,
    METRIC_TS_OFFSET,
    NoteTokenizer,
    TokenizerConfig,
    TokenizerError,
    chord_name,
    detect_chords,
)

TOK = NoteTokenizer()


def rich_score(tpq: int) -> Score:
    """Grid-aligned piece touching every feature of the format (see the test names)."""
    q = tpq
    piano = quarters(q, [
        (2, 1, 60), (2, 1, 64), (2, 1, 67),       # leading silence of two quarters, then a chord
        (3, 2, 60), (3.5, 0.5, 60),               # overlapping repeated pitch
        (4, 1, 72),                                # (a unison sounds once: test_unisons_sound_once)
        (5 + 1 / 3, 1 / 3, 74), (5 + 2 / 3, 1 / 3, 76), (5.25, 0.25, 48),  # triplets, sixteenths
        (10, 3, 62), (13, 3, 65), (16, 1.5, 67),   # 3/4 then 6/8 bars
        (19, 5, 55), (24, 3.5, 57),                # 5/4 and 7/8
        (80, 32, 40),                              # after > 8 empty bars, 32 quarters: the longest bin
    ])
    strings = quarters(q, [(2, 4, 48), (10, 6, 50), (19, 5, 43)], velocity=50)
    drums = [(round(t * q), q // 4, 36 + (i % 3), 100) for i, t in enumerate(np.arange(2, 10, 0.5))]
    drums.append((2 * q, q // 4, 60, 90))          # drum sound sharing an onset with pitched notes
    return make_score(
        [part(piano, program=0), part(strings, program=48), part(drums, is_drum=True)],
        tpq=tpq,
        tempos=[(0, 96), (6 * q, 140), (19 * q, 60)],
        time_signatures=[(0, 4, 4), (8 * q, 3, 4), (14 * q, 6, 8), (17 * q, 5, 4), (22 * q, 7, 8),
                         (25.5 * q, 4, 4)],
    )


def test_vocabulary_is_fixed_by_the_config():
    assert TOK.attribute_names == ATTRIBUTES and TOK.K == 8
    assert len(TOK.config.time_signatures) == 62
    assert TOK.vocab_sizes == (7 + 62, 1 + 96, 2 + 12 * len(CHORD_QUALITIES), 65, 130, 129, 81, 33)
    assert TOK.config.duration_values()[[0, 47, 48, 55, 56, -1]].tolist() == [1, 48, 54, 96, 108, 384]
    assert TOK.config.bar_lengths()[TOK.config.time_signatures.index((7, 8))] == 42
    small = NoteTokenizer(TokenizerConfig(resolution=4, velocity_bins=8, tempo_bins=16))
    assert small.vocab_sizes[1] == 1 + 32 and small.vocab_sizes[3] == 17 and small.vocab_sizes[7] == 9
    assert TOK.sos_row().tolist() == [METRIC_SOS] + [0] * 7
    assert TOK.eos_row().tolist() == [METRIC_EOS] + [0] * 7


@pytest.mark.parametrize("tpq", [96, 480, 960])
def test_grid_aligned_score_round_trips_exactly(tpq, tmp_path):
    score = rich_score(tpq)
    report = TOK.fidelity(score)
    assert report.notes == score.note_num()
    assert report.exact == report.notes and report.extra == 0 and report.percent == 100.0
    assert sum(report.lost.values()) == 0
    s = report.stats
    assert s.off_grid_onset == s.off_grid_duration == s.duration_snapped == s.zero_duration == 0
    assert s.time_signature_moved == 0 and s.time_signature_replaced == 0
    assert s.time_signature_changes == 5
    # the same through a MIDI file
    path = write(score, tmp_path / "rich.mid")
    assert TOK.fidelity(path).percent == 100.0


def test_decoded_score_keeps_signatures_tempi_and_drums():
    score = rich_score(480)
    tokens = TOK.encode(score)
    out = TOK.decode(tokens)
    assert out.ticks_per_quarter == 480
    sigs = [(ts.time / 480, ts.numerator, ts.denominator) for ts in out.time_signatures]
    assert sigs == [(0, 4, 4), (8, 3, 4), (14, 6, 8), (17, 5, 4), (22, 7, 8), (25.5, 4, 4)]
    ladder = TOK.config.tempo_values()
    tempos = [(t.time / 480, t.qpm) for t in out.tempos]
    assert [t for t, _ in tempos] == [0, 6, 19]
    for (_, got), want in zip(tempos, (96, 140, 60)):
        assert abs(got - ladder[np.argmin(abs(np.log(ladder / want)))]) < 0.05
    drums = [t for t in out.tracks if t.is_drum]
    assert len(drums) == 1 and drums[0].name == "Drums" and len(drums[0].notes) == 17
    names = sorted(t.name for t in out.tracks if not t.is_drum)
    assert names == ["Acoustic Grand Piano", "String Ensemble 1"]
    # re-encoding the decoded score gives the same tokens (the format is a fixed point)
    assert np.array_equal(TOK.encode(out), tokens)


def test_row_layout_follows_the_contract():
    q = 480
    score = make_score([part(quarters(q, [(4, 1, 64), (4, 1, 60), (5, 1, 62)]), program=5),
                        part(quarters(q, [(4, 2, 40)]), program=1),
                        part(quarters(q, [(60, 1, 67)]), program=1)],
                       tpq=q, time_signatures=[(0, 4, 4)])
    t = TOK.encode(score)
    m = t[:, COL_METRIC]
    ts44 = METRIC_TS_OFFSET + TOK.config.time_signatures.index((4, 4))
    assert m[0] == METRIC_SOS and m[-1] == METRIC_EOS
    assert m[1] == ts44 and t[1, COL_POSITION] == 0 and t[1, 1:].sum() == 0  # empty bar 0 keeps silence
    # bar 1: onset 4 quarters -> instrument ascending (program 1 before 5), then pitch ascending
    assert m[2:6].tolist() == [METRIC_NEW_BAR, METRIC_SAME_ONSET, METRIC_SAME_ONSET, METRIC_NEW_POSITION]
    assert t[2:6, COL_INSTRUMENT].tolist() == [2, 6, 6, 6]
    assert t[2:6, COL_PITCH].tolist() == [41, 61, 65, 63]
    assert t[2:6, COL_POSITION].tolist() == [1, 1, 1, 13]
    # bars 2..14 are empty (13 EMPTY_BAR rows, no cap), bar 15 holds the last note
    assert m[6:19].tolist() == [METRIC_EMPTY_BAR] * 13
    assert m[19] == METRIC_NEW_BAR and len(t) == 21
    assert (t[[0, -1] + list(range(6, 19)), 1:] == 0).all()
    assert TOK.decode(t).note_num() == 5


def test_pickup_bar_and_time_signature_moved_to_next_bar_line():
    q = 480
    notes = quarters(q, [(0, 1, 67), (1, 1, 72), (2, 1, 71), (3, 1, 69), (5, 1, 67), (7, 2, 72)])
    pickup = make_score([part(notes)], tpq=q, time_signatures=[(0, 1, 4), (q, 4, 4)])
    r = TOK.fidelity(pickup)
    assert r.percent == 100.0 and r.stats.time_signature_moved == 0
    t = TOK.encode(pickup)
    assert t[1, COL_METRIC] == METRIC_TS_OFFSET + TOK.config.time_signatures.index((1, 4))
    assert t[2, COL_METRIC] == METRIC_TS_OFFSET + TOK.config.time_signatures.index((4, 4))
    # a 3/4 change at quarter 6 falls mid-bar of 4/4: it moves to quarter 8, notes stay where they were
    notes.append((9 * q, q, 60, 80))
    mid = make_score([part(notes)], tpq=q, time_signatures=[(0, 4, 4), (6 * q, 3, 4)])
    r = TOK.fidelity(mid)
    assert r.percent == 100.0 and r.stats.time_signature_moved == 1
    sigs = [(ts.time / 480, ts.numerator) for ts in TOK.decode(TOK.encode(mid)).time_signatures]
    assert sigs == [(0, 4), (8, 3)]
    # repeating the signature in force mid-bar changes nothing and moves nothing
    _, stats = TOK.encode_with_stats(make_score([part(notes)], tpq=q, time_signatures=[(0, 4, 4), (6 * q, 4, 4)]))
    assert stats.time_signature_moved == 0 and stats.time_signature_changes == 0


def test_unsupported_time_signatures_are_replaced_and_counted():
    q = 480
    notes = quarters(q, [(i, 1, 60 + i) for i in range(12)])
    score = make_score([part(notes)], tpq=q, time_signatures=[(0, 8, 32), (4 * q, 3, 32), (8 * q, 9, 4)])
    tokens, stats = TOK.encode_with_stats(score)
    assert stats.time_signature_replaced == 3
    out = TOK.decode(tokens)
    assert [(ts.numerator, ts.denominator) for ts in out.time_signatures] == [(4, 16), (4, 4)]
    assert TOK.fidelity(score).percent == 100.0


def test_off_grid_and_long_notes_are_counted_zero_length_notes_dropped():
    q = 480
    notes = [(0, q, 60, 80), (7, q, 62, 80), (q, 13, 64, 80), (2 * q, 0, 65, 80), (3 * q, 40 * q, 67, 80),
             (4 * q, 4 * q + 30 * 4, 69, 80)]  # 4 quarters + 3 steps: between bins 48 and 54
    score = make_score([part(notes)], tpq=q)
    tokens, stats = TOK.encode_with_stats(score)
    assert stats.notes == 6 and stats.off_grid_onset == 1 and stats.off_grid_duration == 1
    assert stats.zero_duration == 1 and stats.duration_snapped == 2
    decoded = TOK.decode(tokens)
    assert decoded.note_num() == 5  # the zero-length note is silent: dropped, not an audible grid step
    assert 65 not in [n.pitch for t in decoded.tracks for n in t.notes]
    r = TOK.fidelity(score)
    assert r.exact == 1 and r.lost["off_grid_onset"] == 1 and r.lost["off_grid_duration"] == 1
    assert r.lost["zero_duration"] == 1 and r.lost["duration_snapped"] == 2 and r.lost["unexplained"] == 0
    assert r.extra == 4  # the four changed notes come back changed; the silent one does not come back


def test_unisons_sound_once():
    """One instrument starting one pitch twice at one grid onset is one MIDI note: the longest (then loudest)
    is written, the other counted as unison_merged; other instruments and other onsets are untouched."""
    q = 480
    piano = [(0, q, 60, 80), (0, 2 * q, 60, 50), (5, q, 60, 90), (0, q, 64, 80), (q, q, 60, 80)]  # 5 ticks: same step
    violin = [(0, q, 60, 80)]
    score = make_score([part(piano, program=0), part(violin, program=40)], tpq=q)
    tokens, stats = TOK.encode_with_stats(score)
    assert stats.notes == 6 and stats.unison_merged == 2
    notes = {(n.time, n.pitch, t.program): n.duration for t in TOK.decode(tokens).tracks for n in t.notes}
    assert sorted(notes) == [(0, 60, 0), (0, 60, 40), (0, 64, 0), (q, 60, 0)]
    assert notes[0, 60, 0] == 2 * q  # the longest of the three piano C4s
    assert not syntax_errors(tokens, TOK)[0].any()
    r = TOK.fidelity(score)
    assert r.lost["unison_merged"] == 2 and r.lost["unexplained"] == 0
    assert r.exact == 4 and r.sounding_percent == 100.0 and "of the notes that sound" in r.summary()


def test_zero_length_notes_only():
    q = 480
    score = make_score([part([(0, 0, 60, 80), (q, 0, 62, 80), (2 * q, q, 64, 80)])], tpq=q)
    tokens, stats = TOK.encode_with_stats(score)
    assert stats.notes == 3 and stats.zero_duration == 2
    assert [n.pitch for t in TOK.decode(tokens).tracks for n in t.notes] == [64]
    r = TOK.fidelity(score)
    assert (r.notes, r.exact, r.lost["zero_duration"], r.extra) == (3, 1, 2, 0)
    silent = make_score([part([(0, 0, 60, 80)])], tpq=q)
    assert TOK.decode(TOK.encode(silent)).note_num() == 0


def test_tempo_changes_between_onsets_are_counted():
    q = 480
    notes = quarters(q, [(0, 1, 60), (4, 1, 62)])
    score = make_score([part(notes)], tpq=q, tempos=[(0, 100), (2 * q, 70), (3 * q, 150), (4 * q, 150)])
    _, stats = TOK.encode_with_stats(score)
    assert stats.tempo_changes == 3 and stats.tempo_change_off_onset == 2  # 70 vanished, 150 moved
    _, stats = TOK.encode_with_stats(make_score([part(notes)], tpq=q, tempos=[(0, 500)]))
    assert stats.tempo_out_of_range == 1


def test_random_multitrack_scores_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    for tpq in (96, 480, 960):
        tracks = [part(random_grid_notes(rng, 300, tpq), program=int(p)) for p in rng.integers(0, 128, 3)]
        tracks.append(part(random_grid_notes(rng, 200, tpq), is_drum=True))
        tracks.append(part(random_grid_notes(rng, 50, tpq), program=int(tracks[0].program)))  # same program
        score = make_score(tracks, tpq=tpq, tempos=[(0, 77), (10 * tpq, 133)],
                           time_signatures=[(0, 3, 4), (9 * tpq, 7, 8), (9 * tpq + 21 * tpq // 2, 2, 2)])
        r = TOK.fidelity(score)
        unisons = r.stats.unison_merged  # random notes of one program may start one pitch together
        assert r.notes == 1150 and r.exact == r.notes - unisons and r.lost["unison_merged"] == unisons, r.summary()
        assert r.sounding_percent == 100.0


def test_too_many_bars_is_a_clear_error(tmp_path):
    tok = NoteTokenizer(TokenizerConfig(max_bars=10))
    path = write(make_score([part(quarters(480, [(0, 1, 60), (200, 1, 60)]))]), tmp_path / "long.mid")
    with pytest.raises(TokenizerError, match="long.mid.*max_bars"):
        tok.encode(path)


def test_missing_and_corrupt_files_raise_naming_the_file(tmp_path):
    with pytest.raises(TokenizerError, match="nope.mid: no such file"):
        TOK.encode(tmp_path / "nope.mid")
    bad = tmp_path / "bad.mid"
    bad.write_bytes(b"MThd this is not midi at all")
    with pytest.raises(TokenizerError, match="bad.mid: cannot read"):
        TOK.encode(bad)
    with pytest.raises(ValueError):  # TokenizerError is a ValueError
        TOK.fidelity(bad)


def test_empty_score_encodes_to_one_empty_bar():
    t = TOK.encode(Score(480))
    assert t[:, COL_METRIC].tolist() == [METRIC_SOS, METRIC_TS_OFFSET + TOK.default_ts, METRIC_EOS]
    assert TOK.decode(t).note_num() == 0


def test_decode_counts_bad_rows_and_never_crashes():
    good = TOK.encode(make_score([part(quarters(480, [(0, 1, 60), (1, 1, 62)]))]))
    note = good[2].copy()
    rows = [good[0], good[1], good[2]]
    bad_pos = note.copy(); bad_pos[COL_POSITION] = 60         # beyond a 4/4 bar (48 steps)
    no_pitch = note.copy(); no_pitch[COL_PITCH] = 0
    unknown = note.copy(); unknown[COL_PITCH] = 999
    negative = note.copy(); negative[3] = -5
    no_vel = note.copy(); no_vel[-1] = 0
    pad = np.zeros(8, np.int64)
    sos = TOK.sos_row()
    after = [TOK.eos_row(), note, note]
    tokens = np.stack(rows + [bad_pos, no_pitch, unknown, negative, no_vel, pad, sos] + after)
    score, stats = TOK.decode_with_stats(tokens)
    assert score.note_num() == 2 and stats.notes == 2
    assert stats.position_beyond_bar == 1 and stats.no_pitch == 1 and stats.unknown_id == 2
    assert stats.no_velocity == 1 and stats.pad_row == 1 and stats.misplaced_sos == 1
    assert stats.after_eos == 2 and stats.skipped == 7
    rng = np.random.default_rng(1)
    for _ in range(20):
        garbage = rng.integers(-3, 140, size=(rng.integers(0, 300), 8))
        out, st = TOK.decode_with_stats(garbage)
        assert out.note_num() == st.notes
        inrange = np.stack([rng.integers(0, v, 400) for v in TOK.vocab_sizes], axis=1)
        out, st = TOK.decode_with_stats(inrange)
        assert out.note_num() == st.notes
    with pytest.raises(ValueError, match="shape"):
        TOK.decode(np.zeros((3, 5), np.int64))


def test_transpose_shifts_pitched_notes_and_chords_but_not_drums():
    q = 480
    score = make_score([part(block_chords([[60, 64, 67], [57, 60, 64]], q)),
                        part([(0, q, 36, 100), (q, q, 38, 100)], is_drum=True)], tpq=q)
    t = TOK.encode(score)
    up = TOK.transpose(t, 2)
    drum = t[:, COL_INSTRUMENT] == DRUM_INSTRUMENT
    keep = [i for i in range(8) if i != COL_CHORD]  # the chord at a drum onset is the harmony: it moves
    assert drum.sum() == 2 and np.array_equal(up[drum][:, keep], t[drum][:, keep])
    pitched = (t[:, COL_PITCH] > 0) & ~drum
    assert np.array_equal(up[pitched, COL_PITCH], t[pitched, COL_PITCH] + 2)
    assert {chord_name(c) for c in t[1:-1, COL_CHORD]} == {"C", "Am"}
    assert {chord_name(c) for c in up[1:-1, COL_CHORD]} == {"D", "Bm"}
    assert np.array_equal(TOK.transpose(up, -2), t)
    assert TOK.transpose(t, 70) is None and TOK.transpose(t, -60) is None
    assert TOK.transpose(t, 0) is not t


def test_chord_detector():
    def one(pitches, dur=12):
        n = len(pitches)
        return chord_name(detect_chords(np.zeros(n), np.full(n, dur), np.array(pitches), np.array([0]), 12)[0])

    assert one([48, 64, 67, 72]) == "C"
    assert one([45, 60, 64, 69]) == "Am"
    assert one([43, 59, 62, 65]) == "G7"
    assert one([50, 65, 69, 72]) == "Dm7"
    assert one([59, 62, 65]) == "Bdim"
    assert one([60, 64, 67, 71]) == "Cmaj7"
    assert one([55, 60, 62]) == "Gsus4"
    assert one([60]) is None and one([60, 72]) is None
    assert detect_chords(np.zeros(0), np.zeros(0), np.zeros(0), np.array([0, 5]), 12).tolist() == [CHORD_NONE] * 2


def test_save_load_round_trip_and_hash(tmp_path):
    assert TOK.config_hash == NoteTokenizer().config_hash == "0c4418ebee05d577"
    other = NoteTokenizer(TokenizerConfig(resolution=8))
    assert other.config_hash != TOK.config_hash
    path = tmp_path / "tokenizer.json"
    other.save(path)
    back = NoteTokenizer.load(path)
    assert back.config == other.config and back.config_hash == other.config_hash
    assert back.vocab_sizes == other.vocab_sizes
    assert NoteTokenizer.from_dict(json.loads(json.dumps(TOK.to_dict()))).config == TOK.config
    d = json.loads(path.read_text())
    d["config_hash"] = "0" * 16
    path.write_text(json.dumps(d))
    with pytest.raises(TokenizerError, match="tokenizer.json.*hash mismatch"):
        NoteTokenizer.load(path)
    path.write_text("{not json")
    with pytest.raises(TokenizerError, match="tokenizer.json: not JSON"):
        NoteTokenizer.load(path)
    with pytest.raises(ValueError, match="resolution"):
        TokenizerConfig(resolution=7)


def test_cli_prints_per_file_and_total(tmp_path, capsys):
    write(rich_score(480), tmp_path / "a.mid")
    write(make_score([part([(7, 480, 60, 80), (480, 480, 62, 80)])]), tmp_path / "b.mid")
    (tmp_path / "c.mid").write_bytes(b"junk")
    assert cli_main(["fidelity", str(tmp_path)]) == 0
    captured = capsys.readouterr()
    lines = captured.out.strip().splitlines()
    assert len(lines) == 3 and "a.mid" in lines[0] and "100.000%" in lines[0]
    assert "off_grid_onset=1" in lines[1]
    n = rich_score(480).note_num()
    assert "total" in lines[2] and f"{n + 1}/{n + 2} exact" in lines[2]
    assert "c.mid" in captured.err


def test_bach_chorales_fidelity(tmp_path):
    """music21's Bach chorales -> MIDI -> tokens -> MIDI keeps >= 99.5 % of the sounding notes exactly (two
    voices in unison are one piano note: merged, and counted)."""
    from music21 import corpus

    total = None
    for name in corpus.chorales.Iterator(returnType="filename"):
        try:
            fp = corpus.parse(name).write("midi", fp=os.path.join(tmp_path, name.replace("/", "_") + ".mid"))
        except Exception:  # a few chorales have repeat marks music21 cannot expand; take the next
            continue
        r = TOK.fidelity(fp)
        total = r if total is None else total + r
        if total.notes > 6000:
            break
    assert total is not None and total.notes > 6000
    assert total.sounding_percent >= 99.5 and total.lost["unexplained"] == 0, total.summary()
    assert total.percent < total.sounding_percent  # the chorales have unisons
