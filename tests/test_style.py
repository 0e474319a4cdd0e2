"""The style classifier (amadeus.style) and style adherence CS: synthetic jigs vs chorales."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from amadeus.metrics import TextAdherence, adherence_scores
from amadeus.style import FEATURE_NAMES, STYLE_FILE, StyleClassifier, corpus_style_classifier, piece_vector
from midi_factory import make_score, part, write

MAJOR = (0, 2, 4, 5, 7, 9, 11)


def jig(rng: np.random.Generator, tonic: int) -> "object":
    """A 6/8 fiddle tune: running eighth notes on the major scale, a dotted-quarter at each bar's end."""
    notes, t, degree = [], 0, 7
    for bar in range(8):
        for i in range(6 if bar % 2 == 0 else 3):
            degree = int(np.clip(degree + rng.choice([-2, -1, 1, 2]), 0, 13))
            notes.append((t, 240, tonic + 12 * (degree // 7) + MAJOR[degree % 7], 90))
            t += 240
        if bar % 2:
            notes.append((t, 720, tonic + MAJOR[int(rng.integers(0, 3)) * 2], 90))
            t += 720
    return make_score([part(notes, program=40)], tempos=[(0, 116)], time_signatures=[(0, 6, 8)])


def chorale(rng: np.random.Generator, tonic: int) -> "object":
    """A 4/4 four-voice chorale: block triads in half and quarter notes."""
    tracks = []
    chords = [(0, 4, 7), (5, 9, 12), (7, 11, 14), (9, 12, 16)]
    plan = [chords[int(rng.integers(0, 4))] for _ in range(12)]
    lengths = [960 if i % 3 == 0 else 480 for i in range(12)]
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    for voice, octave in enumerate((12, 0, -12, -24)):
        notes = [(int(s), int(d), tonic + octave + (c[voice % 3] if voice < 3 else c[0]), 70)
                 for s, d, c in zip(starts, lengths, plan)]
        tracks.append(part(notes, program=52, name=f"voice {voice}"))
    return make_score(tracks, tempos=[(0, 80)], time_signatures=[(0, 4, 4)])


def two_styles(seed: int, n: int) -> tuple[list, list[str]]:
    rng = np.random.default_rng(seed)
    scores, styles = [], []
    for i in range(n):
        tonic = 55 + int(rng.integers(0, 12))
        scores += [jig(rng, tonic), chorale(rng, tonic)]
        styles += ["Irish jig", "Bach chorale"]
    return scores, styles


def test_piece_vector_shape_and_shares():
    score = jig(np.random.default_rng(0), 62)
    v = piece_vector(score)
    assert v.shape == (len(FEATURE_NAMES),)
    named = dict(zip(FEATURE_NAMES, v))
    assert named["meter_6/8"] == 1.0 and named["meter_4/4"] == 0.0
    assert sum(named[f"pc_{i}"] for i in range(12)) == pytest.approx(1.0)
    assert sum(named[f"pc_{i}"] > 0 for i in range(12)) <= 7 and named["pc_0"] > 0  # diatonic, from the tonic
    assert named["phase_0"] + named["phase_6"] == pytest.approx(1.0)  # eighth notes only
    empty = piece_vector(make_score([]))
    assert empty.shape == (len(FEATURE_NAMES),) and math.isnan(empty[0])


def test_classifier_separates_two_styles_and_round_trips(tmp_path):
    scores, styles = two_styles(0, 12)
    model = StyleClassifier.fit(np.array([piece_vector(s) for s in scores]), styles)
    assert model.classes == ["Bach chorale", "Irish jig"]
    test, truth = two_styles(1, 8)  # new pieces, new keys
    assert model.predict(test) == truth
    acc = model.accuracy(np.array([piece_vector(s) for s in test]), truth + ["Unknown style"] * 0)
    assert acc["accuracy"] == 100.0 and acc["pieces"] == 16 and acc["per_style"] == {"Bach chorale": 100.0,
                                                                                      "Irish jig": 100.0}
    loaded = StyleClassifier.load(model.save(tmp_path / "style.json"))
    assert loaded.predict(test) == truth and loaded.classes == model.classes
    with pytest.raises(ValueError, match="at least two styles"):
        StyleClassifier.fit(np.zeros((3, len(FEATURE_NAMES))), ["a", "a", "a"])


def test_cs_on_hand_made_pieces():
    scores, styles = two_styles(0, 10)
    model = StyleClassifier.fit(np.array([piece_vector(s) for s in scores]), styles)
    rng = np.random.default_rng(5)
    pieces = [jig(rng, 62), jig(rng, 57), chorale(rng, 60)]
    predicted = model.predict(pieces)
    targets = [{"style": "Irish jig"}, {"style": "Bach chorale"}, {"style": "Bach chorale"}]
    # two of three generated pieces have the caption's style: CS = 66.7 %
    metric = TextAdherence()
    metric.update([{"style": s, "n_notes": 10} for s in predicted], targets)
    assert float(metric.compute()["CS"]) == pytest.approx(200 / 3) and metric.counts()["CS"] == 3
    assert math.isnan(float(metric.compute()["CK"]))
    assert adherence_scores({"style": "Irish jig"}, {"key": "C major"}).get("CS") is None  # no style stated
    assert adherence_scores({"style": "Irish jig", "n_notes": 0}, {"style": "Irish jig"})["CS"] == 0.0


@pytest.fixture(scope="module")
def styled_corpus(tmp_path_factory):
    """ROOT/midi (24 jigs and 24 chorales, captions.jsonl with `style`, as amadeus.corpus.music21 writes
    it) and ROOT/shards, whose features JSON has no style: the styles come from captions.jsonl."""
    from amadeus.preprocess import preprocess

    root = tmp_path_factory.mktemp("styled")
    scores, styles = two_styles(3, 24)
    records, splits = [], {}
    for i, (score, style) in enumerate(zip(scores, styles)):
        name = f"{style.split()[-1]}/{i:03d}.mid"
        (root / "midi" / name).parent.mkdir(parents=True, exist_ok=True)
        write(score, root / "midi" / name)
        caption = (f"An Irish jig in some key, 6/8, for violin, at 116 bpm." if style == "Irish jig"
                   else f"A Bach chorale in some key, 4/4, for four voices, at 80 bpm.")
        records.append({"location": name, "caption": caption, "style": style})
        splits[name] = "test" if i % 8 < 2 else "validation" if i % 8 == 2 else "train"
    (root / "midi" / "captions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    preprocess(root / "midi", root / "shards", captions=root / "midi" / "captions.jsonl", splits=splits, workers=0,
               shard_size=16, progress=False)
    return root


def test_corpus_classifier_fits_caches_and_scores_held_out(styled_corpus, tmp_path):
    data = styled_corpus / "shards"
    logs = []
    model = corpus_style_classifier(data, log=logs.append)
    assert model is not None and model.classes == ["Bach chorale", "Irish jig"] and logs
    assert (data / STYLE_FILE).is_file()
    assert model.info["train_pieces"] == {"Bach chorale": 18, "Irish jig": 12}
    held = model.info["held_out"]
    assert held["pieces"] == 18 and held["accuracy"] == 100.0
    logs.clear()
    again = corpus_style_classifier(data, log=logs.append)  # from the cache: nothing fitted
    assert not logs and again.classes == model.classes and again.info["key"] == model.info["key"]
    # elsewhere when asked; options are part of the cache key
    other = corpus_style_classifier(data, tmp_path / "s.json", max_per_style=5)
    assert other.info["train_pieces"] == {"Bach chorale": 5, "Irish jig": 5} and (tmp_path / "s.json").is_file()
    assert corpus_style_classifier(data, min_pieces=100) is None  # no style has enough pieces
