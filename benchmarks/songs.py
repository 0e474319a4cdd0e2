"""Multi-track General MIDI songs with drums: user-like data for measuring `amadeus finetune`.

    python benchmarks/songs.py OUT --num 10 --seed 0 --styles rock,disco,funk

There is no pop MIDI on the machine and no network, so the fine-tuning measurements (benchmarks/finetune.py,
docs/finetune.md) use songs made here: a drum kit on channel 10 (`is_drum`), a bass, a chord instrument
(plus a pad in some styles) and a melody, in a random key (major or minor), tempo and form (intro,
verses, choruses, a bridge, an outro; 36-52 bars), each section on its own chord progression, the melody
built from a two-bar motif that repeats with variations. Six grooves, in two sets of three: the recipe
is chosen on `rock, disco, funk` and the acceptance run uses `shuffle, reggae, ballad` from other seeds,
so that no measured choice saw the acceptance songs. A song is a pure function of (seed, style).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from symusic import Note, Score, Tempo, TimeSignature, Track

TPQ = 480
MAJOR, MINOR = (0, 2, 4, 5, 7, 9, 11), (0, 2, 3, 5, 7, 8, 10)
PROGRESSIONS = {  # scale degrees (0 = tonic), one chord per bar
    "major": ((0, 4, 5, 3), (5, 3, 0, 4), (0, 3, 4, 3), (1, 4, 0, 5), (0, 5, 3, 4), (3, 4, 0, 0)),
    "minor": ((0, 5, 2, 6), (0, 3, 4, 0), (0, 6, 5, 6), (0, 3, 6, 2), (5, 6, 0, 0)),
}
KICK, SNARE, STICK, HAT, OPEN_HAT, RIDE, CRASH = 36, 38, 37, 42, 46, 51, 49
# style -> steps per bar (16 = sixteenths, 12 = swung triplets), tempo range, drum pattern {pitch: steps},
# bass pattern (step, chord-tone index: 0 root, 1 third, 2 fifth, 3 octave), comp steps and length, programs
STYLES = {
    "rock": dict(grid=16, tempo=(100, 140), drums={KICK: (0, 8, 10), SNARE: (4, 12), HAT: tuple(range(0, 16, 2))},
                 bass=[(s, 0) for s in range(0, 16, 2)], comp=((0, 4, 8, 12), 4), bass_prog=(33, 34),
                 comp_prog=(29, 30, 27), lead_prog=(81, 30, 65), pad_prog=None),
    "disco": dict(grid=16, tempo=(112, 128), drums={KICK: (0, 4, 8, 12), SNARE: (4, 12), OPEN_HAT: (2, 6, 10, 14),
                                                    HAT: (0, 4, 8, 12)},
                  bass=[(s, 0 if s % 4 == 0 else 3) for s in range(0, 16, 2)], comp=((2, 6, 10, 14), 1),
                  bass_prog=(38, 33), comp_prog=(4, 48, 61), lead_prog=(80, 73, 56), pad_prog=(48, 89)),
    "funk": dict(grid=16, tempo=(92, 112), drums={KICK: (0, 3, 10), SNARE: (4, 12), HAT: tuple(range(16))},
                 bass=[(0, 0), (3, 0), (6, 3), (7, 0), (10, 2), (12, 0), (14, 1)], comp=((1, 5, 7, 11, 13), 1),
                 bass_prog=(36, 37), comp_prog=(7, 27, 4), lead_prog=(61, 66, 56), pad_prog=None),
    "shuffle": dict(grid=12, tempo=(84, 120), drums={KICK: (0, 6), SNARE: (3, 9), RIDE: (0, 2, 3, 5, 6, 8, 9, 11)},
                    bass=[(0, 0), (3, 1), (6, 2), (9, 3)], comp=((3, 5, 9, 11), 1), bass_prog=(32, 33),
                    comp_prog=(0, 16, 4), lead_prog=(65, 66, 56), pad_prog=None),
    "reggae": dict(grid=16, tempo=(70, 90), drums={KICK: (8,), STICK: (8,), HAT: tuple(range(0, 16, 2))},
                   bass=[(0, 0), (3, 0), (6, 2), (8, 3), (11, 2), (14, 1)], comp=((4, 12), 1),
                   bass_prog=(33, 34), comp_prog=(27, 16, 17), lead_prog=(22, 73, 65), pad_prog=(16, 48)),
    "ballad": dict(grid=16, tempo=(60, 80), drums={KICK: (0, 10), SNARE: (8,), RIDE: tuple(range(0, 16, 2))},
                   bass=[(0, 0), (8, 2)], comp=(tuple(range(0, 16, 2)), 2), bass_prog=(33, 32),
                   comp_prog=(0, 1, 46), lead_prog=(73, 53, 40), pad_prog=(48, 49, 89)),
}
TRAIN_STYLES, UNSEEN_STYLES = ("rock", "disco", "funk"), ("shuffle", "reggae", "ballad")
FORMS = (("intro", "verse", "chorus", "verse", "chorus", "outro"),
         ("intro", "verse", "chorus", "verse", "chorus", "bridge", "chorus", "outro"),
         ("verse", "chorus", "verse", "chorus", "bridge", "outro"))
SECTION_BARS = {"intro": 4, "verse": 8, "chorus": 8, "bridge": 4, "outro": 4}


def _track(notes: list[tuple[int, int, int, int]], program: int, is_drum: bool = False, name: str = "") -> Track:
    arr = np.array(sorted(notes), dtype=np.int64).reshape(-1, 4)  # (time, duration, pitch, velocity)
    track = Track(name=name, program=program, is_drum=is_drum)
    track.notes = Note.from_numpy(arr[:, 0].astype(np.int32), arr[:, 1].astype(np.int32),
                                  arr[:, 2].astype(np.int8), np.clip(arr[:, 3], 1, 127).astype(np.int8))
    return track


def _chord(scale: tuple[int, ...], tonic: int, degree: int) -> list[int]:
    """The triad on a scale degree, as pitches above `tonic` (root, third, fifth)."""
    return [tonic + scale[(degree + i) % 7] + 12 * ((degree + i) // 7) for i in (0, 2, 4)]


def _motif(rng: np.random.Generator, grid: int) -> list[tuple[int, int, int]]:
    """A two-bar melodic rhythm: (step, length in steps, scale-step move) with a note on the first step."""
    eighths = range(0, 2 * grid, 2) if grid == 16 else [s for s in range(2 * grid) if s % 3 != 1]  # straight / swung
    steps = [s for s in eighths if s == 0 or rng.random() < 0.5]
    ends = steps[1:] + [2 * grid]
    return [(s, min(e - s, grid // 2), int(rng.choice([-3, -2, -1, -1, 0, 1, 1, 2, 3])))
            for s, e in zip(steps, ends)]


def make_song(seed: int, style: str) -> Score:
    """One song of `style` (a key of STYLES), a pure function of (seed, style)."""
    cfg = STYLES[style]
    rng = np.random.default_rng([seed, sorted(STYLES).index(style)])
    mode = "minor" if rng.random() < 0.4 else "major"
    scale, tonic = (MINOR if mode == "minor" else MAJOR), 48 + int(rng.integers(0, 12))
    grid = cfg["grid"]
    step = 4 * TPQ // grid  # ticks per grid step (4/4 bars)
    bar_ticks = 4 * TPQ
    bpm = float(rng.integers(*cfg["tempo"]))
    form = FORMS[int(rng.integers(len(FORMS)))]
    progressions = {name: PROGRESSIONS[mode][int(rng.integers(len(PROGRESSIONS[mode])))] for name in SECTION_BARS}
    motifs = {name: _motif(rng, grid) for name in SECTION_BARS}
    parts: dict[str, list[tuple[int, int, int, int]]] = {k: [] for k in ("drums", "bass", "comp", "pad", "lead")}
    bar, degree_at = 0, 4  # the melody's position on the scale (index into 3 octaves of it)
    for section in form:
        prog = progressions[section]
        for b in range(SECTION_BARS[section]):
            t0, chord = bar * bar_ticks, _chord(scale, tonic, prog[b % len(prog)])
            loud = 12 if section == "chorus" else 0
            for pitch, steps in cfg["drums"].items():
                if section == "intro" and pitch not in (HAT, RIDE, KICK):
                    continue
                for s in steps:
                    accent = 10 if s % (grid // 4) == 0 else -12
                    parts["drums"].append((t0 + s * step, step, pitch, int(80 + accent + loud + rng.integers(-6, 7))))
            if b == 0 and section in ("chorus", "bridge", "outro"):
                parts["drums"].append((t0, 2 * step, CRASH, 100))
            for s, tone in cfg["bass"]:
                pitch = chord[0] - 12 + (12 if tone == 3 else chord[tone] - chord[0] if tone else 0)
                parts["bass"].append((t0 + s * step, max(1, grid // 8) * step, pitch, int(90 + rng.integers(-8, 9))))
            comp_steps, comp_len = cfg["comp"]
            arpeggio = style == "ballad"  # one chord tone per step, below the pad
            voicing = chord if arpeggio else [p + 12 for p in chord]
            for i, s in enumerate(comp_steps):
                notes = [voicing[(0, 1, 2, 1)[i % 4]]] if arpeggio else voicing
                for p in notes:
                    parts["comp"].append((t0 + s * step, comp_len * step, p, int(72 + loud + rng.integers(-6, 7))))
            if cfg["pad_prog"] is not None and section != "intro":
                for p in chord:
                    parts["pad"].append((t0, bar_ticks, p + (12 if arpeggio else 0), 56 + loud))
            if section != "intro" and b % 2 == 0:
                lift = 2 if section == "chorus" else 0
                for s, length, move in motifs[section]:
                    degree_at = int(np.clip(degree_at + move, 0, 13))
                    if s == 0 or s == grid:  # strong beats land on a chord tone
                        degree_at = min(range(14), key=lambda d: abs(d - degree_at) + 10 * (
                            (tonic + scale[d % 7]) % 12 not in {c % 12 for c in chord}))
                    pitch = tonic + 12 + scale[(degree_at + lift) % 7] + 12 * ((degree_at + lift) // 7)
                    if b + 1 == SECTION_BARS[section] - 1 and rng.random() < 0.5:
                        pitch += int(rng.choice([-12, 0]))  # variation in a section's last phrase
                    velocity = int(88 + loud + rng.integers(-5, 6))
                    parts["lead"].append((t0 + s * step, max(1, length) * step, pitch, velocity))
            bar += 1
    pick = lambda key: int(rng.choice(cfg[key]))  # noqa: E731
    score = Score(TPQ)
    score.tempos.append(Tempo(0, qpm=bpm))
    score.time_signatures.append(TimeSignature(0, 4, 4))
    score.tracks.append(_track(parts["drums"], 0, is_drum=True, name="Drums"))
    score.tracks.append(_track(parts["bass"], pick("bass_prog"), name="Bass"))
    score.tracks.append(_track(parts["comp"], pick("comp_prog"), name="Chords"))
    if parts["pad"]:
        score.tracks.append(_track(parts["pad"], pick("pad_prog"), name="Pad"))
    score.tracks.append(_track(parts["lead"], pick("lead_prog"), name="Melody"))
    return score


def write_songs(out: str | Path, num: int, seed: int = 0, styles: tuple[str, ...] = TRAIN_STYLES) -> list[Path]:
    """`num` songs into OUT (song_<seed>_<style>.mid), styles in turn, seeds seed, seed + 1, ..."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(num):
        style = styles[i % len(styles)]
        path = out / f"song_{seed + i:04d}_{style}.mid"
        make_song(seed + i, style).dump_midi(str(path))
        paths.append(path)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out")
    parser.add_argument("--num", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--styles", default=",".join(TRAIN_STYLES), help=f"any of {', '.join(STYLES)}")
    args = parser.parse_args()
    styles = tuple(s.strip() for s in args.styles.split(",") if s.strip())
    unknown = [s for s in styles if s not in STYLES]
    if unknown:
        parser.error(f"unknown style(s) {unknown}; known: {', '.join(STYLES)}")
    paths = write_songs(args.out, args.num, args.seed, styles)
    print(f"{len(paths)} songs -> {args.out}")


if __name__ == "__main__":
    main()
