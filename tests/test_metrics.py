"""Metrics on hand-made pieces and token matrices with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from midi_factory import block_chords, make_score, part, quarters, small_piece
from symusic import Score

from amadeus.captions import instrument_present, make_caption, parse_caption
from amadeus.features import extract_features
from amadeus.syntax import SYNTAX_ERRORS, syntax_errors
from amadeus.metrics import (
    CLAP_MISSING,
    ClapScore,
    GrooveConsistency,
    MetricUnavailable,
    NotesPerSecond,
    PitchClassEntropy,
    SyntaxErrorRate,
    TextAdherence,
)
from amadeus.theory import CHORD_QUALITIES, parse_chord, parse_key
from amadeus.tokenizer import NoteTokenizer, chord_name

Q = 480
TOK = NoteTokenizer()


def c_major_waltz() -> Score:
    """C major triads, one per bar, 90 bpm, 3/4, piano."""
    return make_score([part(block_chords([[60, 64, 67]] * 6, Q, beats=3), program=0)], tempos=[(0, 90)],
                      time_signatures=[(0, 3, 4)])


def violin_and_drums() -> Score:
    """G Em D7 C twice on violin, a kick drum every quarter, 140 bpm, 6/8."""
    prog = [[55, 59, 62], [52, 55, 59], [50, 54, 57, 60], [48, 52, 55]] * 2
    drums = part(quarters(Q, [(i, 0.5, 36) for i in range(24)]), is_drum=True)
    return make_score([part(block_chords(prog, Q, beats=3), program=40), drums], tempos=[(0, 140)],
                      time_signatures=[(0, 6, 8)])


def adherence(piece, target) -> dict[str, float]:
    m = TextAdherence()
    m.update([piece], [target])
    return {k: float(v) for k, v in m.compute().items()}


# ---- text adherence ---------------------------------------------------------------------------


def test_adherence_all_correct_and_wrong_key():
    full = {"key": "C major", "tempo": 90, "time_signature": "3/4", "instruments": ["piano"], "chords": ["C"]}
    r = adherence(c_major_waltz(), full)
    assert math.isnan(r.pop("CS"))  # no style stated
    assert r == {k: 100.0 for k in ("TB", "TBT", "CK", "CKD", "CTS", "CI", "CM_top3")}
    r = adherence(c_major_waltz(), {"key": "F# major"})
    assert r["CK"] == 0.0 and r["CKD"] == 0.0 and math.isnan(r["TB"]) and math.isnan(r["CI"])


@pytest.mark.parametrize("key, ck, ckd", [("A minor", 0, 100), ("C minor", 0, 100), ("E minor", 0, 0),
                                          ("B# major", 100, 100), ("G major", 0, 0)])
def test_key_with_duplicates(key, ck, ckd):
    r = adherence(c_major_waltz(), {"key": key})
    assert (r["CK"], r["CKD"]) == (ck, ckd)


def test_tempo_bins_time_signature_instruments_chords():
    piece = c_major_waltz()  # 90 bpm: Andante bin (70, 90]
    r = adherence(piece, {"tempo": 100})  # Moderato: next bin
    assert (r["TB"], r["TBT"]) == (0.0, 100.0)
    r = adherence(piece, {"tempo": 150})  # Vivace: three bins away
    assert (r["TB"], r["TBT"]) == (0.0, 0.0)
    assert adherence(piece, {"tempo_bins": {0, 1, 2, 3}})["TB"] == 100.0  # "slow"
    assert adherence(piece, {"time_signature": "4/4"})["CTS"] == 0.0
    assert adherence(piece, {"instruments": ["piano", "violin"]})["CI"] == 50.0
    assert adherence(piece, {"chords": ["C", "F", "G"]})["CM_top3"] == pytest.approx(100 / 3)

    other = violin_and_drums()
    assert adherence(other, {"instruments": ["violin", "drums"]})["CI"] == 100.0
    assert adherence(other, {"instruments": ["steel drums", "drum kit"]})["CI"] == 50.0
    assert adherence(other, {"chords": ["G", "Em", "D7", "C"]})["CM_top3"] == 100.0  # first 3 of the target
    assert adherence(other, {"chords": ["Em", "G", "Am"]})["CM_top3"] == pytest.approx(200 / 3)
    assert adherence(other, {"chords": ["Cmaj7"]})["CM_top3"] == 0.0  # quality matters


def test_tempo_word_spanning_bins_is_not_lenient_twice():
    """'moderate tempo' (80-120 bpm) overlaps bins 3-5 (70-140 bpm): that range is the tolerance, so TBT
    does not add bins 2 and 6 as well; a one-bin word keeps its one-bin tolerance."""
    target = parse_caption("A piece at a moderate tempo.")
    assert target["tempo_bins"] == [3, 4, 5]
    at = {bpm: make_score([part(block_chords([[60, 64, 67]] * 4, Q), program=0)], tempos=[(0, bpm)])
          for bpm in (65, 100, 150)}
    assert (adherence(at[100], target)["TB"], adherence(at[100], target)["TBT"]) == (100.0, 100.0)
    for bpm in (65, 150):  # bins 2 and 6, next to the range
        assert (adherence(at[bpm], target)["TB"], adherence(at[bpm], target)["TBT"]) == (0.0, 0.0)
    vivace = parse_caption("A Vivace piece.")  # one bin (140, 160]: its neighbours count for TBT
    assert vivace["tempo_bins"] == [6]
    assert (adherence(at[150], vivace)["TB"], adherence(at[100], vivace)["TBT"]) == (100.0, 0.0)
    assert adherence(make_score([part(block_chords([[60, 64, 67]] * 4, Q))], tempos=[(0, 120)]), vivace)["TBT"] == 100.0


def test_midicaps_convention_first_tempo_first_meter_music21_key():
    """MidiCaps' fields: the first tempo and time signature (ours: the longest held), music21's key."""
    from amadeus.features import adherence_features, music21_key

    # 8 bars at 60 bpm in 2/4 after one bar of 3/4 at 150 bpm; G major scale and triads
    notes = block_chords([[55, 59, 62], [60, 64, 67], [62, 66, 69], [55, 59, 62]] * 5, Q, beats=2)
    score = make_score([part(notes, program=0)], tempos=[(0, 150), (3 * Q, 60)],
                       time_signatures=[(0, 3, 4), (3 * Q, 2, 4)])
    ours, theirs = adherence_features(score), adherence_features(score, "midicaps")
    assert (ours["tempo"], ours["time_signature"]) == (60, "2/4")
    assert (theirs["tempo"], theirs["tempo_bin"], theirs["time_signature"]) == (150, 6, "3/4")
    assert theirs["key"] == "G major" == ours["key"] and music21_key(score) == (7, "major")
    assert theirs["instruments"] == ours["instruments"]  # only tempo, meter and key change
    assert adherence(score, {"tempo": 150, "time_signature": "3/4"})["CTS"] == 0.0
    m = TextAdherence()
    m.update([theirs], [{"tempo": 150, "time_signature": "3/4"}])
    assert float(m.compute()["TB"]) == 100.0 and float(m.compute()["CTS"]) == 100.0
    assert music21_key(make_score([])) is None
    with pytest.raises(ValueError, match="unknown feature convention"):
        adherence_features(score, "muspy")


def test_accumulates_and_counts_per_metric():
    m = TextAdherence()
    m.update([c_major_waltz(), violin_and_drums()], [{"key": "C major"}, {"key": "C major", "tempo": 140}])
    feats = extract_features(c_major_waltz())
    m.update([feats], [{}])  # pre-extracted features; nothing stated -> nothing scored
    out = m.compute()
    assert m.counts()["CK"] == 2 and m.counts()["TB"] == 1 and m.counts()["CI"] == 0
    assert float(out["CK"]) == 50.0 and float(out["TB"]) == 100.0 and math.isnan(float(out["CI"]))
    with pytest.raises(ValueError, match="2 pieces but 1 targets"):
        m.update([feats, feats], [{}])


def test_empty_piece_scores_zero():
    empty = make_score([], tempos=[(0, 120)])
    r = adherence(empty, {"tempo": 120, "time_signature": "4/4", "key": "C major"})
    assert r["TB"] == r["TBT"] == r["CTS"] == r["CK"] == 0.0


def test_instrument_matching_rules():
    assert instrument_present("piano", ["Acoustic Grand Piano"])
    assert instrument_present("strings", ["String Ensemble 1"])
    assert instrument_present("acoustic guitar", ["Acoustic Guitar (nylon)"])
    assert instrument_present("double bass", ["Contrabass"]) and instrument_present("alto saxophone", ["Alto Sax"])
    assert instrument_present("drums", ["Drums"]) and not instrument_present("drums", ["Steel Drums"])
    assert not instrument_present("violin", ["Viola"]) and not instrument_present("guitar", ["Acoustic Grand Piano"])


def test_parse_key_and_chord():
    assert parse_key("in the key of F# minor") == (6, "minor") == parse_key("F sharp minor")
    assert parse_key("Bb major") == (10, "major") == parse_key("A# major")
    assert parse_key("no key here") is None
    assert parse_chord("Em") == (4, "min") and parse_chord("D7") == (2, "7") and parse_chord("Bbmaj7") == (10, "maj7")
    assert parse_chord("F#m7b5") == (6, "m7b5") and parse_chord("C/G") == (0, "maj") and parse_chord("Gm") == (7, "min")
    assert parse_chord("And") is None and parse_chord("Bass") is None
    # every quality the tokenizer's chord detector names is read back as itself
    for cid in range(2, 2 + 12 * len(CHORD_QUALITIES)):
        root, q = divmod(cid - 2, len(CHORD_QUALITIES))
        assert parse_chord(chord_name(cid)) == (root, CHORD_QUALITIES[q])


def test_parse_caption_midicaps_sentences():
    a = parse_caption(
        "A melodic electronic song with ambient elements, featuring piano, acoustic guitar, alto saxophone, "
        "string ensemble, and electric bass. Set in G minor with a 4/4 time signature, it moves at a lively "
        "Presto tempo. The composition evokes a blend of relaxation and darkness.")
    assert a["key"] == "G minor" and a["time_signature"] == "4/4" and a["tempo_bins"] == [7]
    assert a["instruments"] == ["piano", "acoustic guitar", "alto sax", "string ensemble", "electric bass"]
    assert "chords" not in a and "tempo" not in a

    b = parse_caption("A slow classical piece for strings in the key of F# minor. The chord progression is "
                      "F#m, D, A, E. A calm mood.")
    assert b["key"] == "F# minor" and b["tempo_bins"] == [0, 1, 2, 3] and b["instruments"] == ["strings"]
    assert b["chords"] == ["F#m", "D", "A", "E"]  # stops at the sentence end ("A calm" is not a chord)

    c = parse_caption("This pop song in Bb major at 120 bpm features drums, bass guitar and synth pad; "
                      "the chords are Bb-F-Gm-Eb and it is in 6/8.")
    assert c["tempo"] == 120.0 and c["time_signature"] == "6/8" and c["chords"] == ["Bb", "F", "Gm", "Eb"]
    assert c["instruments"] == ["drums", "bass guitar", "synth pad"]
    assert parse_caption("") == {}


def test_parse_caption_recovers_generated_captions():
    feats = extract_features(violin_and_drums())
    for seed in range(12):
        caption = make_caption(feats, seed)
        target = parse_caption(caption)
        r = adherence(feats, caption)  # a caption string is parsed by TextAdherence itself
        assert target["chords"] == feats["chords"][:4] and target["tempo"] == feats["tempo"]
        assert math.isnan(r.pop("CS"))  # a caption without a corpus style: CS not scored
        assert all(v == 100.0 for v in r.values()), (make_caption(feats, seed), r)


# ---- structure metrics ------------------------------------------------------------------------


def small_piece_tokens() -> np.ndarray:
    return TOK.encode(small_piece(Q))


def test_syntax_error_rate_counts_rows():
    tok = small_piece_tokens()
    bad = tok.copy()  # the matrix of test_syntax.py::test_syntax_errors_on_hand_made_matrices
    bad[5, 1] = bad[4, 1] - 2  # NEW_POSITION going backwards
    bad[2, 1] += 1  # SAME_ONSET moved
    bad[7, 5] = 0  # note row with pitch 0
    bad[6, 1], bad[7, 1] = 49, 50  # positions beyond a 48-step 4/4 bar (the vocabulary allows 8/4)
    bad[3, 5] = 1 + 20  # drum pitch outside 27..87
    padded = np.concatenate([bad, bad[1:3], np.zeros((4, 8), np.int64)])  # 2 rows after EOS, 4 padding rows
    flags, rows = syntax_errors(padded, TOK)
    assert rows == 11
    m = SyntaxErrorRate(TOK)
    m.update([tok, padded])
    out = m.compute()
    assert set(out) == {"any", *SYNTAX_ERRORS}
    assert float(out["any"]) == pytest.approx(100 * flags.any(axis=1).sum() / 20)
    assert float(out["after_eos"]) == pytest.approx(100 * 2 / 20)


def test_pitch_class_entropy_scores_and_tokens():
    one = make_score([part(quarters(Q, [(i, 1, 60 + 12 * (i % 3)) for i in range(8)]))])
    chromatic = make_score([part(quarters(Q, [(i, 1, 60 + i) for i in range(12)])),
                            part(quarters(Q, [(0, 1, 36), (1, 1, 38)]), is_drum=True)])
    m = PitchClassEntropy()
    m.update([one])
    assert float(m.compute()) == 0.0
    m = PitchClassEntropy()
    m.update([chromatic])
    assert float(m.compute()) == pytest.approx(math.log2(12), abs=1e-6)
    m = PitchClassEntropy()
    m.update([TOK.encode(chromatic), TOK.encode(one)])  # token matrices; drums ignored
    assert float(m.compute()) == pytest.approx(math.log2(12) / 2, abs=1e-6)


def test_groove_consistency():
    beats = [(q, 0.5, 60) for q in range(4)]
    same = make_score([part(quarters(Q, [(4 * b + q, d, p) for b in range(4) for q, d, p in beats]))])
    m = GrooveConsistency(TOK)
    m.update([same])
    assert float(m.compute()) == 1.0
    # bars A, B, A: B lacks the onsets on beats 2 and 4 -> distance 2 of 48 grid steps each time
    a_b_a = make_score([part(quarters(Q, [(0, 1, 60), (1, 1, 60), (2, 1, 60), (3, 1, 60), (4, 2, 62), (6, 2, 62),
                                          (8, 1, 60), (9, 1, 60), (10, 1, 60), (11, 1, 60)]))])
    m = GrooveConsistency(TOK)
    m.update([TOK.encode(a_b_a)])
    assert float(m.compute()) == pytest.approx(1 - 2 / 48)


def test_notes_per_second():
    m = NotesPerSecond()
    m.update(100, 2.0)
    m.update([small_piece_tokens()], 0.14)  # 7 note rows
    assert float(m.compute()) == pytest.approx(107 / 2.14)


# ---- CLAP --------------------------------------------------------------------------------------


def test_clap_refuses_without_local_checkpoint(tmp_path):
    with pytest.raises(MetricUnavailable) as e:
        ClapScore(None)
    assert str(e.value) == CLAP_MISSING == "CLAP needs a local checkpoint (--clap PATH); none given"
    with pytest.raises(MetricUnavailable, match="not a local Hugging Face model directory"):
        ClapScore(tmp_path / "missing")


def tiny_clap_dir(path):
    """A randomly initialised ~1M-parameter CLAP saved locally (the pipeline, not a real model)."""
    from transformers import AutoTokenizer, ClapAudioConfig, ClapConfig, ClapFeatureExtractor, ClapModel, ClapProcessor, ClapTextConfig

    from amadeus.model.text import bundled_minilm_path

    torch.manual_seed(0)
    text = ClapTextConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                          intermediate_size=64, projection_dim=16, max_position_embeddings=130)
    audio = ClapAudioConfig(hidden_size=32, depths=[1, 1], num_attention_heads=[2, 2], patch_embeds_hidden_size=16,
                            projection_dim=16, window_size=4, spec_size=256, num_mel_bins=64, enable_fusion=False)
    ClapModel(ClapConfig(text_config=text.to_dict(), audio_config=audio.to_dict(), projection_dim=16)).save_pretrained(path)
    features = ClapFeatureExtractor(feature_size=64, sampling_rate=48000, truncation="rand_trunc")
    ClapProcessor(feature_extractor=features, tokenizer=AutoTokenizer.from_pretrained(bundled_minilm_path())).save_pretrained(path)
    return path


def test_clap_pipeline_with_a_tiny_local_model(tmp_path):
    import os

    os.environ["HF_HUB_OFFLINE"] = "1"
    clap = ClapScore(tiny_clap_dir(tmp_path / "clap"), chunk_seconds=5.0, min_similarity=-1.0)
    piece = c_major_waltz()  # 12 s
    audio = clap._render(piece)
    assert audio.ndim == 1 and 12 * 48000 <= len(audio) < 16 * 48000
    clap.update([piece, piece], ["a calm piano waltz", "a calm piano waltz"])
    assert int(clap.chunks) == 2 * math.ceil(len(audio) / (5 * 48000))
    assert -1.0 <= float(clap.compute()) <= 1.0
    assert set(clap.state_dict()) <= {"total", "chunks"}  # CLAP weights are not metric state
