"""Captions: every template states the facts; loader reads MidiCaps JSON / JSONL and fails clearly."""

from __future__ import annotations

import json
import random

import pytest
from midi_factory import block_chords, make_score, part

from amadeus.captions import TEMPLATES, load_captions, make_caption
from amadeus.features import extract_features

FEATURES = {
    "key": "G major", "key_mode": "major", "time_signature": "3/4", "tempo": 80, "tempo_word": "Andante",
    "instruments": ["Violin", "Cello", "Drums"], "n_voices": 2, "chords": ["G", "D", "Em", "C7"],
}


def test_every_template_states_key_meter_tempo_instruments_chords():
    seen = set()
    for seed in range(60):
        text = make_caption(FEATURES, seed)
        seen.add(text.split()[0])
        for fact in ("G major", "3/4", "80", "violin", "cello", "drums", "G, D, Em and C7"):
            assert fact in text or fact.capitalize() in text, (seed, text)
        assert text[0].isupper() and text.endswith(".") and " a a" not in text and " a e" not in text
    assert len(seen) >= len(TEMPLATES) - 1  # the templates really vary


def test_captions_are_deterministic():
    assert make_caption(FEATURES) == make_caption(dict(FEATURES))
    assert make_caption(FEATURES, 3) == make_caption(FEATURES, random.Random(3))
    assert len({make_caption(FEATURES, s) for s in range(20)}) > 3


def test_caption_of_a_real_piece_single_instrument_voices():
    chords = block_chords([[48, 64, 67, 72], [53, 65, 69, 72], [55, 62, 67, 71], [48, 64, 67, 72]] * 2, 480,
                          beats=2)
    voices = [part([n for n in chords if n[2] == p], program=0) for p in sorted({n[2] for n in chords})]
    score = make_score(voices, tpq=480, tempos=[(0, 80)], time_signatures=[(0, 4, 4)])
    f = extract_features(score)
    assert f["n_voices"] == 10 and f["instruments"] == ["Acoustic Grand Piano"]
    for seed in range(10):
        text = make_caption(f, seed)
        for fact in ("C major", "4/4", "80", "C, F and G"):
            assert fact in text, text
        assert "ten" in text.lower() and "acoustic grand piano" in text.lower()


def test_missing_facts_are_said_not_invented():
    text = make_caption({"instruments": [], "chords": [], "key": None})
    assert "no clear key" in text and "no clear chords" in text and "120" in text and "4/4" in text


def test_load_json_list_jsonl_and_mapping(tmp_path):
    recs = [{"location": "lmd_full/1/abc.mid", "caption": "one", "genre": ["pop"]},
            {"location": "lmd_full/2/def.mid", "caption": "two"},
            {"location": "other/abc.midi", "caption": "three"}]
    (tmp_path / "a.json").write_text(json.dumps(recs))
    (tmp_path / "b.jsonl").write_text("\n".join(json.dumps(r) for r in recs) + "\n\n")
    (tmp_path / "c.json").write_text(json.dumps({r["location"]: r["caption"] for r in recs}))
    for name in ("a.json", "b.jsonl", "c.json"):
        caps = load_captions(tmp_path / name)
        assert len(caps) == 3 and caps["lmd_full/2/def.mid"] == "two"
        assert caps["/data/x/def.mid"] == "two" and caps.get("def") == "two"  # by file name, by stem
        assert caps.get("abc.mid") == "one" and caps.get("abc.midi") == "three"
        assert caps.get("abc") is None and "abc" not in caps  # ambiguous stem
        assert "def.mid" in caps and caps.get("nothing.mid", "-") == "-"
        with pytest.raises(KeyError):
            caps["nothing.mid"]


def test_load_errors_name_the_file_and_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"location": "a.mid", "caption": "x"}\n{"location": "b.mid", "caption": \n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: invalid JSON"):
        load_captions(bad)
    bad.write_text('{"location": "a.mid", "caption": "x"}\n{"location": "b.mid"}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: missing or non-string 'caption'"):
        load_captions(bad)
    lst = tmp_path / "list.json"
    lst.write_text(json.dumps([{"location": "a.mid", "caption": "x"}, 5]))
    with pytest.raises(ValueError, match=r"list.json: item 1"):
        load_captions(lst)
    (tmp_path / "empty.json").write_text("  \n")
    with pytest.raises(ValueError, match="empty.json: empty"):
        load_captions(tmp_path / "empty.json")
    with pytest.raises(ValueError, match="nope.json: no such"):
        load_captions(tmp_path / "nope.json")


def test_transpose_caption_moves_key_and_chords_and_nothing_else():
    from amadeus.captions import parse_caption, transpose_caption
    from amadeus.theory import parse_chord, parse_key

    for seed in range(len(TEMPLATES) * 4):
        text = make_caption(FEATURES, seed)
        for s in (-5, -1, 2, 6):
            moved = transpose_caption(text, s)
            got, want = parse_caption(moved), parse_caption(text)
            assert parse_key(got["key"]) == ((parse_key(want["key"])[0] + s) % 12, "major"), moved
            assert [parse_chord(c) for c in got["chords"]] == [
                ((parse_chord(c)[0] + s) % 12, parse_chord(c)[1]) for c in want["chords"]]
            assert {k: v for k, v in got.items() if k not in ("key", "chords")} == {
                k: v for k, v in want.items() if k not in ("key", "chords")}
            assert transpose_caption(moved, -s) == text  # the generated spelling comes back exactly
        assert transpose_caption(text, 12) == text and transpose_caption(text, 0) == text
    free = "A song in the key of B flat minor; the chord progression is Bbm - Gb/Db - F7. A sad one."
    assert transpose_caption(free, 2) == "A song in the key of C minor; the chord progression is Cm - Ab/Eb - G7. A sad one."
    assert transpose_caption("A calm piece for a piano, slow.", 3) == "A calm piece for a piano, slow."
