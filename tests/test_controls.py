"""Attribute controls: parsing with clear errors, and 100 % of generated notes obeying them."""
from __future__ import annotations

import numpy as np
import pytest

from amadeus.controls import (
    ControlError,
    chord_value,
    instrument_value,
    key_pitch_classes,
    parse_controls,
    pitch_value,
    violations,
)
from amadeus.sampling import generate
from amadeus.tokenizer import (
    COL_CHORD,
    COL_INSTRUMENT,
    COL_METRIC,
    COL_PITCH,
    COL_TEMPO,
    DRUM_INSTRUMENT,
    METRIC_TS_OFFSET,
    NoteTokenizer,
    chord_name,
)

TOK = NoteTokenizer()


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny tensors run best on one thread


def test_names_values_and_aliases():
    assert instrument_value("piano") == 1 and instrument_value("Acoustic Grand Piano") == 1
    assert instrument_value("violin") == 41 and instrument_value("Violin") == 41
    assert instrument_value("drums") == DRUM_INSTRUMENT and instrument_value("40") == 41
    assert instrument_value("acoustic guitar (nylon)") == 25
    assert pitch_value("C4") == 60 and pitch_value("F#3") == 54 and pitch_value("Bb5") == 82 and pitch_value("60") == 60
    assert chord_name(chord_value("Am")) == "Am" and chord_name(chord_value("G7")) == "G7"
    assert chord_name(chord_value("F#m7b5")) == "F#m7b5" and chord_value("N") == 1
    assert key_pitch_classes("D") == (1, 2, 4, 6, 7, 9, 11)
    assert key_pitch_classes("A minor") == key_pitch_classes("C")


@pytest.mark.parametrize("spec, match", [
    ("instrument=pianoo", "unknown instrument name 'pianoo'.*did you mean piano"),
    ("instrument=kazoo", "unknown instrument name 'kazoo'"),
    ("instrument=200", "0-127"),
    ("time_signature=5/3", "impossible time signature 5/3: the denominator"),
    ("time_signature=17/4", "impossible time signature 17/4: bars longer"),
    ("time_signature=0/4", "impossible time signature 0/4"),
    ("time_signature=three", "expected n/d"),
    ("tempo=400", "outside the tokenizer's range"),
    ("tempo=fast", "not a number"),
    ("pitch=72-48", "low end is above"),
    ("pitch=H4", "note name"),
    ("velocity=0-200", "1-127"),
    ("velocity=63-65", "no velocity bin"),
    ("key=Q", "root note"),
    ("chord=C,Xyz", "root note"),
    ("chord=Cfoo", "unknown quality"),
    ("loudness=3", "unknown attribute 'loudness'"),
    ("density=-1", "density"),
    ("instrument", "expected NAME=VALUE"),
    ("velocity=80@bars=0", "numbered from 1"),
    ("time_signature=3/4@bars=1-2", "whole piece"),
])
def test_bad_controls_name_the_problem(spec, match):
    with pytest.raises(ControlError, match=match):
        parse_controls([spec], TOK)


def test_parsed_sets():
    c = parse_controls(["instrument=piano,violin", "tempo=96", "pitch=C3-C5", "velocity=60-100", "duration=1",
                        "time_signature=6/8", "density=2-6", "chord=C,G@bars=3-4"], TOK)
    m = c.static_masks(TOK.vocab_sizes)
    assert set(np.nonzero(m[COL_INSTRUMENT])[0]) == {1, 41}
    assert m[COL_TEMPO].sum() == 1
    assert set(np.nonzero(m[COL_PITCH])[0] - 1) == set(range(48, 73))
    assert c.time_signature == TOK.config.time_signatures.index((6, 8)) and c.density == (2, 6)
    assert c.chord_for_bar(2) is None and chord_name(c.chord_for_bar(3)) == "C" and chord_name(c.chord_for_bar(4)) == "G"
    assert c.chord_for_bar(5) is None


def _decoded_checks(tokens, lo=48, hi=72):
    score = TOK.decode(tokens)
    for track in score.tracks:
        assert track.is_drum or track.program in (0, 40)
        a = track.notes.numpy()
        assert a["pitch"].min() >= lo and a["pitch"].max() <= hi
        assert a["velocity"].min() >= 60 and a["velocity"].max() <= 100
    assert all((t.numerator, t.denominator) == (3, 4) for t in score.time_signatures)
    assert all(abs(t.qpm - 96) < 3 for t in score.tempos)


@pytest.mark.parametrize("steps", [1, 2, 8])
def test_every_control_is_obeyed_by_a_trained_model(trained_tiny, steps):
    model = trained_tiny[0]
    specs = ["instrument=piano,violin", "tempo=96", "time_signature=3/4", "pitch=48-72", "velocity=60-100",
             "chord=C,G,Am,F", "density=2-6"]
    controls = parse_controls(specs, model.tokenizer)
    result = generate(model, 3, controls=specs, max_notes=120, steps=steps, seed=steps)
    assert result.notes > 20
    for tokens in result.tokens:
        assert all(v == 0 for v in violations(controls, model.tokenizer, tokens).values())
        _decoded_checks(tokens)
        notes = tokens[tokens[:, COL_PITCH] > 0]
        assert notes[0, COL_METRIC] == METRIC_TS_OFFSET + TOK.config.time_signatures.index((3, 4))
        assert {chord_name(c) for c in notes[:, COL_CHORD]} <= {"C", "G", "Am", "F"}


def test_key_duration_drums_and_scoped_controls(trained_tiny):
    model = trained_tiny[0]
    for specs in (["key=D", "duration=0.5-1"], ["instrument=drums"], ["velocity=100@bars=2-3", "pitch=60-64@bars=1"],
                  ["instrument=flute@bars=2", "density=3"]):
        controls = parse_controls(specs, model.tokenizer)
        for tokens in generate(model, 2, controls=specs, max_notes=80, steps=4, seed=1).tokens:
            assert all(v == 0 for v in violations(controls, model.tokenizer, tokens).values()), (specs, violations(controls, model.tokenizer, tokens))
            assert model.tokenizer.decode_with_stats(tokens)[1].skipped == 0
            if specs == ["instrument=drums"]:
                p = tokens[tokens[:, COL_PITCH] > 0, COL_PITCH] - 1
                assert (tokens[tokens[:, COL_PITCH] > 0, COL_INSTRUMENT] == DRUM_INSTRUMENT).all()
                assert p.min() >= 27 and p.max() <= 87


def test_violations_catches_disobedience():
    """The checker itself: a piece that breaks a control is reported."""
    from midi_factory import block_chords, make_score, part

    score = make_score([part(block_chords([[40, 76]] * 8), program=0)], tempos=[(0, 120.0)])
    tokens = TOK.encode(score)
    c = parse_controls(["pitch=48-72", "instrument=violin", "tempo=96", "time_signature=3/4", "density=1"], TOK)
    v = violations(c, TOK, tokens)
    assert v["pitch=48-72"] == 16 and v["instrument=violin"] == 16 and v["tempo=96"] == 16
    assert v["time_signature"] == 1 and v["density"] >= 1


def test_fixed_values_are_revealed_before_the_first_step(trained_tiny, monkeypatch):
    """tempo=96 fixes the tempo: after the metric decides the row is a note, the tempo slot is placed as a
    revealed token, so the denoiser never sees it masked and it is never ranked or re-sampled."""
    model = trained_tiny[0]
    calls = []
    real = model.head.logits

    def spy(C, tokens, masked):
        calls.append((tokens.clone(), masked.clone()))
        return real(C, tokens, masked)

    monkeypatch.setattr(model.head, "logits", spy)
    tempo = 1 + int(TOK.config.tempo_index(np.array([96.0]))[0])
    generate(model, 1, controls=["tempo=96"], max_notes=20, steps=8, seed=0)
    pre, later, empty_bar = 0, 0, 0
    for tokens, masked in calls:
        if masked[0, COL_METRIC]:  # the metric pass: everything masked
            assert masked.all()
            pre += 1
        elif masked[0, 1:].all():  # a time-signature row: "empty bar or note" given the metric only
            assert tokens[0, COL_METRIC] >= METRIC_TS_OFFSET
            empty_bar += 1
        elif tokens[0, COL_PITCH] > 0 or masked[0, COL_PITCH]:  # a note row's denoising passes
            assert not masked[0, COL_TEMPO] and tokens[0, COL_TEMPO] == tempo
            later += 1
    assert pre > 5 and later > 5 * 6 and empty_bar >= 1
