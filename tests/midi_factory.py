"""Build small symusic Scores for tests (no files needed; `write` saves one as MIDI when a path is).

Times are in ticks unless a helper says quarters. Reusable by any test module:
`from midi_factory import make_score, part, ...` (pytest puts tests/ on sys.path).
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from symusic import Note, Score, Tempo, TimeSignature, Track

NoteSpec = tuple[int, int, int, int]  # (time, duration, pitch, velocity) in ticks


def part(notes: Iterable[NoteSpec], program: int = 0, is_drum: bool = False, name: str = "") -> Track:
    """A track from (time, duration, pitch, velocity) tuples."""
    arr = np.array(list(notes), dtype=np.int64).reshape(-1, 4)
    track = Track(name=name or ("Drums" if is_drum else f"program {program}"), program=program, is_drum=is_drum)
    track.notes = Note.from_numpy(arr[:, 0].astype(np.int32), arr[:, 1].astype(np.int32),
                                  arr[:, 2].astype(np.int8), arr[:, 3].astype(np.int8))
    return track


def make_score(tracks: Sequence[Track], tpq: int = 480, tempos: Sequence[tuple[int, float]] = (),
               time_signatures: Sequence[tuple[int, int, int]] = ()) -> Score:
    """A Score from tracks, tempo events (tick, bpm) and time signatures (tick, numerator, denominator)."""
    score = Score(tpq)
    for t, bpm in tempos:
        score.tempos.append(Tempo(int(t), qpm=float(bpm)))
    for t, n, d in time_signatures:
        score.time_signatures.append(TimeSignature(int(t), int(n), int(d)))
    for track in tracks:
        score.tracks.append(track)
    return score


def quarters(tpq: int, items: Iterable[tuple[float, float, int]], velocity: int = 80) -> list[NoteSpec]:
    """Notes from (onset in quarters, duration in quarters, pitch); onsets rounded to ticks."""
    return [(round(on * tpq), round(du * tpq), p, velocity) for on, du, p in items]


def block_chords(chords: Sequence[Sequence[int]], tpq: int = 480, beats: float = 1.0, velocity: int = 80,
                 start: float = 0.0) -> list[NoteSpec]:
    """One block chord (list of MIDI pitches) every `beats` quarters."""
    out = []
    for i, chord in enumerate(chords):
        for p in chord:
            out.append((round((start + i * beats) * tpq), round(beats * tpq), p, velocity))
    return out


def random_grid_notes(rng: np.random.Generator, n: int, tpq: int, steps_per_quarter: int = 12,
                      span_quarters: int = 64, max_quarters: int = 8) -> list[NoteSpec]:
    """n notes with onsets and durations on a grid of tpq / steps_per_quarter ticks."""
    step = tpq // steps_per_quarter
    on = rng.integers(0, span_quarters * steps_per_quarter, n) * step
    du = rng.integers(1, max_quarters * steps_per_quarter // 2, n)
    du = np.where(du > 4 * steps_per_quarter, (du // steps_per_quarter) * steps_per_quarter, du) * step
    pitch = rng.integers(30, 100, n)
    vel = rng.integers(1, 128, n)
    return list(zip(on.tolist(), du.tolist(), pitch.tolist(), vel.tolist()))


def small_piece(tpq: int = 480) -> Score:
    """One 4/4 bar and a half: a piano (C4+E4, G4, C5 | C4, D4) and a drum hit on beat 1.

    Encoded with the default tokenizer: 0 SOS | 1 TS(C4) 2 SAME(E4) 3 SAME(drum) 4 NEWPOS(G4)
    5 NEWPOS(C5) | 6 NEWBAR(C4) 7 NEWPOS(D4) | 8 EOS.
    """
    notes = quarters(tpq, [(0, 1, 60), (0, 1, 64), (1, 1, 67), (2, 1, 72), (4, 1, 60), (6, 1, 62)])
    drums = part(quarters(tpq, [(0, 0.5, 36)]), is_drum=True)
    return make_score([part(notes, program=0), drums], tpq, tempos=[(0, 120)], time_signatures=[(0, 4, 4)])


def write(score: Score, path: str | Path) -> Path:
    """Save as a MIDI file and return the path."""
    path = Path(path)
    score.dump_midi(str(path))
    return path


# two styles for the style classifier (amadeus.style) and CS

MAJOR = (0, 2, 4, 5, 7, 9, 11)


def jig(rng: np.random.Generator, tonic: int) -> Score:
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


def chorale(rng: np.random.Generator, tonic: int) -> Score:
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


def two_styles(seed: int, n: int) -> tuple[list[Score], list[str]]:
    """n jigs and n chorales in random keys, alternating, with their style labels."""
    rng = np.random.default_rng(seed)
    scores, styles = [], []
    for i in range(n):
        tonic = 55 + int(rng.integers(0, 12))
        scores += [jig(rng, tonic), chorale(rng, tonic)]
        styles += ["Irish jig", "Bach chorale"]
    return scores, styles
