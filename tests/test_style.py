"""The style classifier (amadeus.style) and style adherence CS: synthetic jigs vs chorales."""
from __future__ import annotations

import math

import numpy as np
import pytest

from amadeus.metrics import TextAdherence, adherence_scores
from amadeus.style import FEATURE_NAMES, STYLE_FILE, StyleClassifier, corpus_style_classifier, piece_vector
from midi_factory import chorale, jig, make_score, two_styles

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


def test_windowed_classifier_without_the_metre(styled_corpus, tmp_path):
    """Fitted on the first rows of each piece (as generation cuts) and without the time-signature features:
    its own cache file, the metre columns not read, the same answers from full vectors after a round trip."""
    from amadeus.style import METRE_FEATURES, style_file

    data = styled_corpus / "shards"
    model = corpus_style_classifier(data, max_rows=24, exclude=METRE_FEATURES)
    assert model is not None and style_file(data, 24, METRE_FEATURES).is_file()
    assert style_file(data, 24, METRE_FEATURES).name == "style-classifier-rows24-no-metre.json"
    assert not set(METRE_FEATURES) & set(model.features) and len(model.features) == len(FEATURE_NAMES) - len(METRE_FEATURES)
    assert model.info["options"]["max_rows"] == 24 and model.info["held_out"]["pieces"] == 18
    again = StyleClassifier.load(style_file(data, 24, METRE_FEATURES))
    vectors = np.array([piece_vector(s) for s in two_styles(4, 2)[0]])
    assert again.predict_vectors(vectors) == model.predict_vectors(vectors)
    vectors[:, [FEATURE_NAMES.index(f) for f in METRE_FEATURES]] = 0.0  # the metre cannot change its answer
    assert again.predict_vectors(vectors) == model.predict_vectors(np.array([piece_vector(s) for s in two_styles(4, 2)[0]]))
