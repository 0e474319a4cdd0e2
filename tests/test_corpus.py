"""The embedded Bach corpus: MIDI + captions from music21 (a few pieces), cache stamp, bar lines after
pickups and irregular bars, statistics, failures reported instead of raised, the CLI pair."""
from __future__ import annotations

import argparse
import json
import time
import warnings

import pytest

from amadeus.commands import corpus
from amadeus.corpus import bach_chorale_paths, build_bach_corpus, chorale_to_score, corpus_statistics, midi_name


def test_chorale_list_is_the_bach_chorales():
    paths = bach_chorale_paths()
    names = [midi_name(p) for p in paths]
    assert 400 <= len(paths) <= 440 and len(set(names)) == len(names)
    assert "bwv846.mid" not in names and all(n.startswith("bwv") for n in names)
    assert not any(p.suffix == ".rntxt" for p in paths)
    assert next(p for p in paths if midi_name(p) == "bwv277.mid").suffix == ".mxl"  # MusicXML over Humdrum


def test_build_caches_and_writes_midicaps_captions(tmp_path):
    out = tmp_path / "midi"
    first = build_bach_corpus(out, limit=4, workers=2, progress=False)
    assert not first.cached and len(first.pieces) == 4 and not first.skipped
    assert sorted(p.name for p in out.glob("*.mid")) == first.pieces
    records = [json.loads(line) for line in (out / "captions.jsonl").read_text().splitlines()]
    assert [r["location"] for r in records] == first.pieces
    for r in records:
        assert r["caption"] and r["key"] and r["time_signature"] and r["tempo"] > 0 and r["instruments"]
    assert first.notes == sum(r["n_notes"] for r in records) > 0

    t0 = time.perf_counter()
    again = build_bach_corpus(out, limit=4, workers=2, progress=False)
    assert again.cached and time.perf_counter() - t0 < 1.0
    assert (again.pieces, again.notes) == (first.pieces, first.notes)
    stamp = json.loads((out / "corpus.json").read_text())
    import music21

    assert stamp["music21"] == music21.__version__ and stamp["config"]["limit"] == 4

    other = build_bach_corpus(out, limit=2, workers=1, progress=False)  # another config: rebuilt
    assert not other.cached and sorted(p.name for p in out.glob("*.mid")) == first.pieces[:2]

    stats = corpus_statistics(out)
    assert stats.pieces == 2 and stats.notes > 0 and 95.0 < stats.fidelity <= 100.0 and stats.skipped == 0


def _bar_lines(score) -> set[int]:
    """Bar lines implied by the MIDI time signatures (ticks)."""
    ts = sorted(score.time_signatures, key=lambda e: e.time)
    end, tpq, lines = score.end(), score.ticks_per_quarter, set()
    for i, e in enumerate(ts):
        stop = ts[i + 1].time if i + 1 < len(ts) else end + 1
        lines |= set(range(e.time, stop, e.numerator * 4 * tpq // e.denominator))
    return lines


@pytest.mark.parametrize("name", ["bwv1.6", "bwv389", "bwv4.8"])  # pickup; 3+1 split bars; a 3-beat bar
def test_midi_bar_lines_match_the_score(name):
    from music21 import corpus as m21corpus

    from amadeus.corpus.bach import _pickup_quarters

    path = next(p for p in bach_chorale_paths() if midi_name(p) == f"{name}.mid")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m21 = m21corpus.parse(str(path))
    pickup = _pickup_quarters(m21)
    assert pickup == 3.0  # all three open with a one-beat upbeat in 4/4
    score = chorale_to_score(path)
    tpq = score.ticks_per_quarter
    first_onset = min(t.notes[0].time for t in score.tracks if len(t.notes))
    assert first_onset == 3 * tpq  # the upbeat ends the first bar
    measures = list(m21.parts[0].getElementsByClass("Measure"))[1:]  # after the pickup
    lines = _bar_lines(score)
    for prev, m in zip([None] + measures[:-1], measures):
        if prev is not None and prev.duration.quarterLength < prev.barDuration.quarterLength \
                and prev.duration.quarterLength + m.duration.quarterLength <= prev.barDuration.quarterLength:
            continue  # second half of a bar split around a repeat sign: not a downbeat
        assert round((float(m.offset) + pickup) * tpq) in lines, f"{name}: measure {m.number} off the grid"


def test_failed_conversions_are_reported_not_raised(tmp_path):
    report = build_bach_corpus(tmp_path / "midi", limit=2, workers=1, timeout=0.01, progress=False)
    assert report.pieces == [] and len(report.skipped) == 2
    assert all("timed out" in s["reason"] for s in report.skipped)
    assert not (tmp_path / "midi" / "corpus.json").exists()  # a timeout is not cached: the next call retries
    retry = build_bach_corpus(tmp_path / "midi", limit=2, workers=1, progress=False)
    assert not retry.cached and len(retry.pieces) == 2


def test_cli_builds_midi_shards_and_prints_statistics(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    corpus.add_arguments(parser)
    code = corpus.run(parser.parse_args(["bach", str(tmp_path), "--limit", "3", "--workers", "1", "--quiet"]))
    out = capsys.readouterr().out
    assert code == 0 and "3 chorales" in out and "statistics: 3 pieces" in out and "fidelity" in out
    manifest = json.loads((tmp_path / "shards" / "manifest.json").read_text())
    assert manifest["counts"]["pieces"] == 3 and manifest["counts"]["captioned"] == 3
    code = corpus.run(parser.parse_args(["bach", str(tmp_path / "m"), "--limit", "1", "--midi-only", "--quiet"]))
    assert code == 0 and not (tmp_path / "m" / "shards").exists()
    assert corpus.run(parser.parse_args(["bach", str(tmp_path), "--limit", "0"])) == 2
