"""Musical features of a Score (key, tempo, time signature, instruments, chords), MidiCaps-like.

Used to caption corpora without text (amadeus.captions), to store beside every shard row, and by the
text-adherence metrics (tempo bins for TB/TBT, key for CK, time signature for CTS, instruments for
CI, chords for CM). The output of `extract_features` is a JSON-serialisable dict:

| key | meaning |
|---|---|
| n_notes, n_tracks, n_voices | notes; non-empty tracks; non-empty non-drum tracks |
| duration, duration_word | seconds to the end of the last note; DURATION_WORDS bin |
| key, key_tonic, key_mode, key_confidence | Krumhansl-Schmuckler key, e.g. "G major" (None if no pitched notes) |
| tempo, tempo_first, tempo_word, tempo_bin | most-used bpm (by time), first bpm (MidiCaps' choice), word and bin index |
| time_signature, time_signature_changes | most-used "n/d" (by time; "4/4" if none), number of changes |
| instruments, instrument_programs, instrument_notes | GM names by note count ("Drums" = program 128) |
| chords, chord_progression | most frequent chord names (by time); most repeated chord sequence |

Two conventions for the fields the adherence metrics compare (`adherence_features(score, convention)`):
"amadeus" (the table above: the longest-held tempo and time signature, Krumhansl-Kessler key profiles)
and "midicaps" (MidiCaps' pipeline: the first tempo event, the first time signature and music21's key
analysis, `score.analyze('key')`, on the piece written as MIDI; about 0.25 s per piece).

Tempo words use MidiCaps' bins: TEMPO_WORDS[i] covers TEMPO_BIN_EDGES[i-1] < bpm <= TEMPO_BIN_EDGES[i]
(Grave <= 40 < Largo <= 60 < Adagio <= 70 < Andante <= 90 < Moderato <= 110 < Allegro <= 140 <
Vivace <= 160 < Presto <= 210 < Prestissimo); the simpler words (Slow <= 80 < Moderate tempo <= 120 <
Fast <= 160 < Very fast) are the other vocabulary MidiCaps captions use.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from symusic import Score

from amadeus.theory import key_name
from amadeus.tokenizer import (CHORD_NONE, DRUM_INSTRUMENT, chord_name, detect_chords, instrument_name, load_score,
                               note_table)

TEMPO_BIN_EDGES = (40, 60, 70, 90, 110, 140, 160, 210)
TEMPO_WORDS = ("Grave", "Largo", "Adagio", "Andante", "Moderato", "Allegro", "Vivace", "Presto", "Prestissimo")
SIMPLE_TEMPO_EDGES = (80, 120, 160)
SIMPLE_TEMPO_WORDS = ("Slow", "Moderate tempo", "Fast", "Very fast")
DURATION_EDGES = (30, 120, 300)
FEATURE_CONVENTIONS = ("amadeus", "midicaps")
DURATION_WORDS = ("Short fragment", "Short song", "Song", "Long piece")

# Krumhansl-Kessler key profiles (tonic first): the weights of estimate_key, not vocabulary, so they
# stay with the algorithm (key spelling and scales are in amadeus.theory)
MAJOR_PROFILE = np.array([6.35, 2.23, 3.48, 2.33, 4.38, 4.09, 2.52, 5.19, 2.39, 3.66, 2.29, 2.88])
MINOR_PROFILE = np.array([6.33, 2.68, 3.52, 5.38, 2.60, 3.53, 2.54, 4.75, 3.98, 2.69, 3.34, 3.17])


def tempo_bin(bpm: float) -> int:
    """Index into TEMPO_WORDS: the number of TEMPO_BIN_EDGES strictly below bpm."""
    return int(np.sum(float(bpm) > np.asarray(TEMPO_BIN_EDGES)))


def tempo_word(bpm: float, simple: bool = False) -> str:
    """MidiCaps tempo word of a bpm (Italian marking, or Slow/Moderate tempo/Fast/Very fast)."""
    if simple:
        return SIMPLE_TEMPO_WORDS[int(np.sum(float(bpm) > np.asarray(SIMPLE_TEMPO_EDGES)))]
    return TEMPO_WORDS[tempo_bin(bpm)]


def duration_word(seconds: float) -> str:
    return DURATION_WORDS[int(np.sum(float(seconds) > np.asarray(DURATION_EDGES)))]


def estimate_key(pitches: np.ndarray, weights: np.ndarray) -> tuple[int, str, float] | None:
    """Krumhansl-Schmuckler: (tonic pitch class, "major"/"minor", correlation) of weighted pitches.

    The pitch-class histogram (weights = durations) is correlated with the 24 rotated key profiles;
    the best correlation wins (ties: major, then the lower tonic). None without pitches.
    """
    hist = np.bincount(np.asarray(pitches, dtype=np.int64) % 12, weights=np.asarray(weights, float), minlength=12)
    if hist.sum() <= 0 or np.allclose(hist, hist[0]):
        return None
    rot = (np.arange(12)[None, :] - np.arange(12)[:, None]) % 12  # rot[tonic, pc] = pc - tonic
    profiles = np.concatenate([MAJOR_PROFILE[rot], MINOR_PROFILE[rot]])  # [24, 12]
    h = hist - hist.mean()
    p = profiles - profiles.mean(axis=1, keepdims=True)
    corr = (p @ h) / (np.linalg.norm(p, axis=1) * np.linalg.norm(h))
    best = int(np.argmax(corr))
    return best % 12, ("major" if best < 12 else "minor"), float(corr[best])


def _seconds(ticks: np.ndarray, score: Score) -> np.ndarray:
    """Seconds of tick times under the score's tempo map (120 bpm before the first tempo event)."""
    tp = score.tempos.numpy()
    order = np.argsort(tp["time"], kind="stable")
    times = np.concatenate([[0], tp["time"].astype(np.int64)[order]])
    mspq = np.concatenate([[500000], tp["mspq"].astype(np.int64)[order]]).astype(np.float64)
    sec_per_tick = mspq / 1e6 / score.ticks_per_quarter
    start_sec = np.concatenate([[0.0], np.cumsum(np.diff(times) * sec_per_tick[:-1])])
    i = np.searchsorted(times, ticks, side="right") - 1
    return start_sec[i] + (np.asarray(ticks) - times[i]) * sec_per_tick[i]


def _weighted_mode(values: list, spans: np.ndarray):
    """The value with the largest total span (first one on ties)."""
    totals: dict = {}
    for v, s in zip(values, spans.tolist()):
        totals[v] = totals.get(v, 0) + s
    return max(totals, key=lambda v: (totals[v], -values.index(v)))


def _chord_progression(names: list[str]) -> list[str]:
    """Most repeated sequence of 4, 3 or 2 consecutive chords (MidiCaps-like), else the first chords."""
    for n in (4, 3, 2):
        grams = Counter(tuple(names[i:i + n]) for i in range(len(names) - n + 1))
        grams = Counter({g: c for g, c in grams.items() if g[0] != g[-1]})
        if grams:
            gram, count = grams.most_common(1)[0]
            if count >= 2:
                return list(gram)
    return names[:4]


def extract_features(score_or_path: Score | str | Path) -> dict[str, Any]:
    """Features of a Score or MIDI/ABC file (see the module docstring for the keys)."""
    score, _ = load_score(score_or_path)
    tpq = score.ticks_per_quarter
    t = note_table(score)
    n = len(t["time"])
    end = int((t["time"] + t["duration"]).max()) if n else 0
    end = max(end, score.end(), 1)
    pitched = t["instrument"] != DRUM_INSTRUMENT
    feats: dict[str, Any] = {"n_notes": n}
    feats["n_tracks"] = sum(1 for tr in score.tracks if len(tr.notes))
    feats["n_voices"] = sum(1 for tr in score.tracks if len(tr.notes) and not tr.is_drum)

    seconds = float(_seconds(np.array([end if n else 0]), score)[0])
    feats["duration"] = round(seconds, 2)
    feats["duration_word"] = duration_word(seconds)

    key = estimate_key(t["pitch"][pitched], np.maximum(t["duration"][pitched], 1)) if pitched.any() else None
    feats["key"] = key_name(key[0], key[1]) if key else None
    feats["key_tonic"] = key_name(key[0], key[1]).split()[0] if key else None
    feats["key_mode"] = key[1] if key else None
    feats["key_confidence"] = round(key[2], 4) if key else None

    # tempo: most used by time, and the first one
    tp = score.tempos.numpy()
    order = np.argsort(tp["time"], kind="stable")
    tt = tp["time"].astype(np.int64)[order]
    bpm = np.round(6e7 / np.maximum(tp["mspq"].astype(np.float64)[order], 1.0)).astype(int).tolist()
    if not bpm or tt[0] > 0:
        tt, bpm = np.concatenate([[0], tt]), [120] + bpm
    spans = np.diff(np.append(np.minimum(tt, end), end))
    feats["tempo"] = int(_weighted_mode(bpm, np.maximum(spans, 0)))
    feats["tempo_first"] = int(bpm[np.searchsorted(tt, 0, side="right") - 1])
    feats["tempo_word"] = tempo_word(feats["tempo"])
    feats["tempo_bin"] = tempo_bin(feats["tempo"])

    ts = score.time_signatures.numpy()
    order = np.argsort(ts["time"], kind="stable")
    ts_t = ts["time"].astype(np.int64)[order]
    sigs = [f"{a}/{b}" for a, b in zip(ts["numerator"][order].tolist(), ts["denominator"][order].tolist())]
    if not sigs or ts_t[0] > 0:
        ts_t, sigs = np.concatenate([[0], ts_t]), ["4/4"] + sigs
    spans = np.diff(np.append(np.minimum(ts_t, end), end))
    feats["time_signature"] = _weighted_mode(sigs, np.maximum(spans, 0))
    feats["time_signature_changes"] = sum(a != b for a, b in zip(sigs[:-1], sigs[1:]))

    values, counts = np.unique(t["instrument"], return_counts=True)
    rank = np.lexsort((values, -counts))
    feats["instruments"] = [instrument_name(int(v)) for v in values[rank]]
    feats["instrument_programs"] = [int(v) - 1 for v in values[rank]]  # drums -> 128
    feats["instrument_notes"] = [int(c) for c in counts[rank]]

    # chords at every pitched onset (the tokenizer's detector, one-beat window), weighted by time
    names: list[str] = []
    chords: list[str] = []
    if pitched.any():
        st = t["time"][pitched]
        en = st + np.maximum(t["duration"][pitched], 1)
        times = np.unique(st)
        ids = detect_chords(st, en, t["pitch"][pitched], times, tpq)
        span = np.diff(np.append(times, max(end, int(times[-1]) + 1)))
        keep = ids != CHORD_NONE
        ids, span = ids[keep], span[keep]
        if len(ids):
            seq = ids[np.append(True, ids[1:] != ids[:-1])]  # chord changes
            names = [chord_name(c) for c in seq.tolist()]
            total = np.bincount(ids, weights=span)
            distinct, first = np.unique(seq, return_index=True)
            top = np.lexsort((first, -total[distinct]))[:4]  # longest total time, then first heard
            chords = [chord_name(c) for c in distinct[top].tolist()]
    feats["chords"] = chords
    feats["chord_progression"] = _chord_progression(names)
    return feats


def music21_key(score_or_path: Score | str | Path) -> tuple[int, str] | None:
    """(tonic pitch class, "major"/"minor") by music21's key analysis (`analyze('key')`, MidiCaps'
    choice) of the piece read back from MIDI; None without pitched notes."""
    import tempfile

    from music21 import converter

    score, _ = load_score(score_or_path)
    if not any(len(tr.notes) and not tr.is_drum for tr in score.tracks):
        return None
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "piece.mid"
        score.dump_midi(str(path))
        key = converter.parse(str(path), format="midi").analyze("key")
    return int(key.tonic.pitchClass), ("minor" if key.mode == "minor" else "major")


def first_time_signature(score: Score) -> str:
    """The time signature in force at the start ("n/d"; 4/4 when none is given there)."""
    sigs = sorted((ts.time, i, ts.numerator, ts.denominator) for i, ts in enumerate(score.time_signatures))
    return f"{sigs[0][2]}/{sigs[0][3]}" if sigs and sigs[0][0] == 0 else "4/4"


def adherence_features(score_or_path: Score | str | Path, convention: str = "amadeus") -> dict[str, Any]:
    """`extract_features`, with tempo, time signature and key taken by one of FEATURE_CONVENTIONS:
    "amadeus" (longest-held tempo and time signature, Krumhansl-Kessler key) or "midicaps" (first
    tempo event, first time signature, music21's key analysis), so adherence figures can be compared
    with MidiCaps' published tables."""
    if convention not in FEATURE_CONVENTIONS:
        raise ValueError(f"unknown feature convention {convention!r}; choose from {', '.join(FEATURE_CONVENTIONS)}")
    score, _ = load_score(score_or_path)
    feats = extract_features(score)
    if convention == "midicaps":
        feats.update(midicaps_fields(score, feats["tempo_first"]))
    return feats


def midicaps_fields(score: Score, tempo_first: int) -> dict[str, Any]:
    """The tempo, time signature and key fields under MidiCaps' conventions (see adherence_features)."""
    key = music21_key(score)
    return {"tempo": int(tempo_first), "tempo_word": tempo_word(tempo_first), "tempo_bin": tempo_bin(tempo_first),
            "time_signature": first_time_signature(score),
            "key": key_name(*key) if key else None, "key_tonic": key_name(*key).split()[0] if key else None,
            "key_mode": key[1] if key else None, "key_confidence": None}
