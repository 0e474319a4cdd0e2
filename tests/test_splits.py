"""Splits by melody (amadeus.corpus.splits): transposition-free keys, twins in one split, the same piece in
two corpora in the same split, and what a rebuild moved."""
from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
from midi_factory import make_score, part, quarters, write

from amadeus.corpus.splits import (SPLIT_INTERVALS, TWIN_INTERVALS, assign_splits, melody_key, moved_pieces,
                                   moved_text, previous_splits, score_intervals, split_for_key, token_intervals)
from amadeus.preprocess import preprocess
from amadeus.tokenizer import NoteTokenizer

TPQ = 480


def tune(pitches, *, shift: int = 0, program: int = 0, tpq: int = TPQ, step: float = 0.5, bass: bool = True):
    """A melody (one note per step, pitches + shift) over a held bass note per bar (lower: not the top line)."""
    notes = [(i * step, step, p + shift) for i, p in enumerate(pitches)]
    tracks = [part(quarters(tpq, notes), program=program)]
    if bass:
        bars = int(len(pitches) * step // 4) + 1
        tracks.append(part(quarters(tpq, [(4 * b, 4, 36 + shift) for b in range(bars)]), program=32))
    return make_score(tracks, tpq=tpq, time_signatures=[(0, 4, 4)])


def random_melody(rng: np.random.Generator, n: int = 40) -> list[int]:
    return (60 + np.cumsum(rng.integers(-4, 5, n))).clip(40, 90).tolist()


def test_melody_key_ignores_key_tempo_instrument_repeats_and_the_lower_voices():
    rng = np.random.default_rng(0)
    melody = random_melody(rng)
    key = melody_key(tune(melody))
    assert key.startswith("m")
    assert melody_key(tune(melody, shift=5, program=40, tpq=96, step=1.0)) == key  # transposed, slower, violin
    repeated = [p for p in melody[:10] for _ in (0, 1)] + melody[10:]  # notes split in two: repeats collapse
    assert melody_key(tune(repeated)) == key
    assert melody_key(tune(melody, bass=False)) == key
    late = melody[:SPLIT_INTERVALS + 3] + [p + 7 for p in melody[SPLIT_INTERVALS + 3:]]  # a variant, later on
    assert melody_key(tune(late)) == key
    other = melody[:3] + [melody[3] + 1] + melody[4:]
    assert melody_key(tune(other)) != key
    assert melody_key(tune([60, 62, 60])) != melody_key(tune([60, 64, 60]))  # too short: the whole content
    assert melody_key(tune([60, 62, 60])) == melody_key(tune([60, 62, 60], shift=5))


def test_token_intervals_read_the_same_top_line_as_the_score():
    rng = np.random.default_rng(1)
    score = tune(random_melody(rng, 30))
    tokens = NoteTokenizer().encode(score)
    assert np.array_equal(token_intervals(tokens), score_intervals(score))
    assert len(score_intervals(score)) >= TWIN_INTERVALS


def test_split_is_a_pure_function_of_the_key():
    keys = [f"k{i}" for i in range(2000)]
    splits = [split_for_key(k) for k in keys]
    share = {s: splits.count(s) / len(keys) for s in ("validation", "test")}
    assert 0.03 < share["validation"] < 0.07 and 0.03 < share["test"] < 0.07
    records = [{"location": f"p{i}", "melody_key": k} for i, k in enumerate(keys)]
    full, half = assign_splits(records), assign_splits(records[::2])
    assert all(full[loc] == s for loc, s in half.items())  # the rest of the corpus does not matter


def _rows(out):
    rows = []
    for f in sorted((out / "shards").glob("part-*.parquet")):
        rows += pq.read_table(f, columns=["source", "split"]).to_pylist()
    return {r["source"]: r["split"] for r in rows}


def test_twins_share_a_split_and_two_corpora_agree(tmp_path):
    """Preprocess puts every twin (transposed, retimed, another instrument) beside its tune, and a piece that
    is in two corpora (another file name, other company) lands in the same split in both."""
    rng = np.random.default_rng(2)
    melodies = [random_melody(rng) for _ in range(24)]
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    for i, m in enumerate(melodies):
        write(tune(m), a / f"tune{i:02d}.mid")
        if i < 8:  # twins inside corpus a
            write(tune(m, shift=-3, program=40, step=0.25), a / f"twin{i:02d}.mid")
        if i % 3 == 0:  # corpus b: a third of the tunes under other names, among tunes of its own
            write(tune(m, shift=2, program=73), b / f"other_name{i:02d}.mid")
    for i in range(12):
        write(tune(random_melody(rng)), b / f"own{i:02d}.mid")
    preprocess(a, tmp_path / "out_a", workers=0, val_fraction=0.3, test_fraction=0.3, progress=False)
    preprocess(b, tmp_path / "out_b", workers=0, val_fraction=0.3, test_fraction=0.3, progress=False)
    sa, sb = _rows(tmp_path / "out_a"), _rows(tmp_path / "out_b")
    assert set(sa.values()) == {"train", "validation", "test"}
    assert all(sa[f"twin{i:02d}.mid"] == sa[f"tune{i:02d}.mid"] for i in range(8))
    assert all(sb[f"other_name{i:02d}.mid"] == sa[f"tune{i:02d}.mid"] for i in range(0, 24, 3))
    # an embedded corpus' records (amadeus.corpus.music21 / bach) split by the same rule
    records = [{"location": f"tune{i:02d}.mid", "melody_key": melody_key(tune(m))} for i, m in enumerate(melodies)]
    assert assign_splits(records, 0.3, 0.3) == {k: v for k, v in sa.items() if k.startswith("tune")}


def test_a_rebuild_says_what_moved(tmp_path):
    captions = tmp_path / "captions.jsonl"
    assert previous_splits(captions) == {}
    captions.write_text("".join(json.dumps({"location": f"x/p{i}.mid", "caption": "c", "split": s}) + "\n"
                                for i, s in enumerate(["train", "train", "test", "validation"])))
    before = previous_splits(captions)
    assert before == {"x/p0.mid": "train", "x/p1.mid": "train", "x/p2.mid": "test", "x/p3.mid": "validation"}
    moved = moved_pieces(before, {"x/p0.mid": "train", "p1.mid": "test", "x/p2.mid": "train", "x/p9.mid": "test"})
    assert moved == {"compared": 3, "moved": 2, "moves": {"test->train": 1, "train->test": 1}}
    assert "2 of 3 pieces moved split" in moved_text(moved) and "first build" in moved_text({})
