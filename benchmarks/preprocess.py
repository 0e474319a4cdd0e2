"""Preprocessing speed: amadeus (symusic + numpy) against a miditoolkit + per-note Python baseline.

    python benchmarks/preprocess.py [--quick]

Datasets: the embedded Bach chorales (about 300 notes each) and synthetic multi-track files (8
tracks including drums, about 4000 notes each, tempo changes, slightly off-grid onsets) written
with symusic. On the same files it times, per core (one process, one BLAS thread):
- amadeus tokenize: read + symusic parse + NoteTokenizer.encode_with_stats
- amadeus file -> row: the whole worker job of `amadeus preprocess` (checks, tokens, features, caption)
- miditoolkit baseline: miditoolkit.MidiFile parse, then the REMI / NMT way in Python, note by note:
  grid quantisation, bar / position, tempo / duration / velocity bins, a chord per onset from the
  sounding pitch classes (template match), rows sorted by onset, instrument, pitch
then the full `preprocess()` with a worker pool (wall time, startup included) and the streaming
DataModule on the resulting shards (windows/s, RSS growth over 10 000 windows).
Targets: >= 300 Bach-sized files/s per core; >= 20x faster per file than the miditoolkit pipeline.
Writes benchmarks/results/preprocess.json ({"rows": [...]}).
"""
from __future__ import annotations

import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):  # per-core numbers
    os.environ.setdefault(_var, "1")

import argparse
import bisect
import json
import math
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results" / "preprocess.json"
BACH_TARGET = 300.0  # files/s per core
SPEEDUP_TARGET = 20.0


# ----------------------------------------------------------------------------------------------
# data


def bach_files(quick: bool) -> list[Path]:
    """The embedded corpus (full, or 80 pieces for --quick), converted once and cached."""
    from amadeus.corpus import STAMP, build_bach_corpus, cache_root, default_bach_dir

    full = default_bach_dir() / "midi"
    stamp = full / STAMP
    if stamp.is_file() and json.loads(stamp.read_text()).get("config", {}).get("limit") is None:
        files = sorted(full.glob("*.mid"))
        return files[:80] if quick else files
    if quick:
        report = build_bach_corpus(cache_root() / "bench" / "bach-80", limit=80, progress=False)
    else:
        report = build_bach_corpus(full, progress=False)
    return [report.out_dir / n for n in report.pieces]


def synthetic_files(n: int, out: Path, seed: int = 0) -> list[Path]:
    """n multi-track files: 7 pitched tracks + drums, ~500 notes per track, 3 tempos, some swing."""
    from symusic import Note, Score, Tempo, TimeSignature, Track

    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    tpq, bars = 480, 96
    files = []
    for i in range(n):
        score = Score(tpq)
        score.time_signatures.append(TimeSignature(0, 4, 4))
        for k, bpm in enumerate((96.0, 120.0, 132.0)):
            score.tempos.append(Tempo(k * bars // 3 * 4 * tpq, qpm=bpm))
        for t, program in enumerate((0, 33, 48, 25, 56, 73, 81, -1)):
            m = 500
            step = tpq // 4 if t != 1 else tpq // 2
            onset = np.sort(rng.integers(0, bars * 4 * tpq // step, m)) * step
            onset = onset + np.where(rng.random(m) < 0.1, rng.integers(-15, 16, m), 0)  # humanised
            dur = rng.choice([tpq // 4, tpq // 2, tpq, 2 * tpq], m) - np.where(rng.random(m) < 0.2, 7, 0)
            low, high = (35, 60) if program < 0 else (28 + 4 * t, 60 + 4 * t)
            pitch = rng.integers(low, high, m)
            vel = rng.integers(30, 120, m)
            track = Track(name="drums" if program < 0 else f"p{program}", program=max(program, 0),
                          is_drum=program < 0)
            track.notes = Note.from_numpy(np.maximum(onset, 0).astype(np.int32), dur.astype(np.int32),
                                          pitch.astype(np.int8), vel.astype(np.int8))
            score.tracks.append(track)
        path = out / f"synthetic_{i:03d}.mid"
        score.dump_midi(str(path))
        files.append(path)
    return files


# ----------------------------------------------------------------------------------------------
# the baseline: miditoolkit + per-note Python (REMI / NMT style)

def baseline_encode(path: Path, resolution: int = 12) -> list[list[int]]:
    """One row per note, computed note by note in Python after a miditoolkit parse."""
    import miditoolkit

    from amadeus.theory import CHORD_INTERVALS  # the same chord templates as amadeus

    midi = miditoolkit.MidiFile(str(path))
    tpb = midi.ticks_per_beat
    step = tpb / resolution
    durations = list(range(1, 4 * resolution + 1)) + list(range(5 * resolution, 32 * resolution + 1, resolution))
    tempo_ladder = [24.0 * (320.0 / 24.0) ** (i / 63) for i in range(64)]
    tempos = sorted((t.time, t.tempo) for t in midi.tempo_changes) or [(0, 120.0)]
    tempo_times = [t for t, _ in tempos]
    signatures = sorted((t.time, t.numerator, t.denominator) for t in midi.time_signature_changes) or [(0, 4, 4)]
    end = midi.max_tick
    bar_starts = []
    for i, (t, n, d) in enumerate(signatures):
        stop = signatures[i + 1][0] if i + 1 < len(signatures) else end + 1
        length = n * 4 * tpb // d
        x = t
        while x < stop:
            bar_starts.append(x)
            x += length

    notes = []
    for inst in midi.instruments:
        instrument = 129 if inst.is_drum else inst.program + 1
        for note in inst.notes:
            onset = int(round(note.start / step))
            steps = max(1, int(round((note.end - note.start) / step)))
            dur_bin = min(range(len(durations)), key=lambda j: abs(durations[j] - steps))
            tick = onset * step
            bar = max(0, bisect.bisect_right(bar_starts, tick) - 1)
            position = int(round((tick - bar_starts[bar]) / step))
            bpm = tempos[max(0, bisect.bisect_right(tempo_times, note.start) - 1)][1]
            tempo_bin = min(range(64), key=lambda j: abs(math.log(tempo_ladder[j] / bpm)))
            velocity_bin = (max(1, note.velocity) - 1) * 32 // 127
            notes.append([onset, instrument, note.pitch, dur_bin, velocity_bin, bar, position, tempo_bin,
                          note.start, note.end])
    notes.sort(key=lambda r: (r[0], r[1], r[2], r[3], r[4]))

    # a chord per onset, from the pitch classes sounding there (pitched notes only)
    chords: dict[int, int] = {}
    by_start = sorted((r for r in notes if r[1] != 129), key=lambda r: r[8])
    active: list[list[int]] = []
    k = 0
    for onset in sorted({r[0] for r in notes}):
        tick = onset * step
        while k < len(by_start) and by_start[k][8] <= tick:
            active.append(by_start[k])
            k += 1
        active = [r for r in active if r[9] > tick]
        pcs = {r[2] % 12 for r in active}
        best, best_score = 1, 0.0
        if len(pcs) >= 2:
            for root in range(12):
                for q, (name, intervals) in enumerate(CHORD_INTERVALS.items()):
                    tones = {(root + iv) % 12 for iv in intervals}
                    score = len(pcs & tones) / len(tones) - 0.5 * len(pcs - tones) / len(pcs)
                    if root in pcs and score > best_score:
                        best, best_score = 2 + root * len(CHORD_INTERVALS) + q, score
        chords[onset] = best

    rows, last_bar, last_onset = [[1, 0, 0, 0, 0, 0, 0, 0]], -1, -1
    for onset, instrument, pitch, dur_bin, velocity_bin, bar, position, tempo_bin, _, _ in notes:
        metric = 6 if bar != last_bar else (4 if onset == last_onset else 5)
        rows.append([metric, 1 + position, chords[onset], 1 + tempo_bin, instrument, 1 + pitch, 1 + dur_bin,
                     1 + velocity_bin])
        last_bar, last_onset = bar, onset
    rows.append([2, 0, 0, 0, 0, 0, 0, 0])
    return rows


# ----------------------------------------------------------------------------------------------
# measurements


def timed(fn, files: list[Path], repeat: int = 1) -> float:
    """Seconds per pass over the files (best of `repeat`)."""
    best = math.inf
    for _ in range(repeat):
        t0 = time.perf_counter()
        for f in files:
            fn(f)
        best = min(best, time.perf_counter() - t0)
    return best


def per_core_rows(name: str, files: list[Path], baseline_files: list[Path]) -> list[dict]:
    import symusic

    from amadeus import preprocess as pp
    from amadeus.tokenizer import NoteTokenizer

    tok = NoteTokenizer()
    pp._init_encoder(tok, True, 0.05, 0.05)
    notes = sum(symusic.Score(str(f)).note_num() for f in files)
    base_notes = sum(symusic.Score(str(f)).note_num() for f in baseline_files)

    def tokenize(f: Path):
        return tok.encode_with_stats(symusic.Score.from_midi(f.read_bytes()))

    def to_row(f: Path):
        return pp.encode_file((f.name, str(f), None, None, None))

    for f in files[:3]:  # warm up imports and caches
        tokenize(f), to_row(f)
    rows = []
    ours_ms = {}
    for label, fn in (("amadeus tokenize", tokenize), ("amadeus file -> row", to_row)):
        sec = timed(fn, files, repeat=2)
        base_sec = timed(fn, baseline_files, repeat=2)
        ours_ms[label] = 1e3 * base_sec / len(baseline_files)
        rows.append({"dataset": name, "pipeline": label, "files": len(files), "notes": notes,
                     "ms_per_file": round(1e3 * sec / len(files), 3),
                     "files_per_s_per_core": round(len(files) / sec, 1),
                     "notes_per_s_per_core": round(notes / sec)})
    sec = timed(baseline_encode, baseline_files)
    base_ms = 1e3 * sec / len(baseline_files)
    rows.append({"dataset": name, "pipeline": "miditoolkit + per-note Python", "files": len(baseline_files),
                 "notes": base_notes, "ms_per_file": round(base_ms, 3),
                 "files_per_s_per_core": round(len(baseline_files) / sec, 1),
                 "notes_per_s_per_core": round(base_notes / sec)})
    for r in rows[:2]:  # speedups measured on the same (baseline) files
        r["speedup_vs_miditoolkit"] = round(base_ms / ours_ms[r["pipeline"]], 1)
        r["meets_speedup_target"] = r["speedup_vs_miditoolkit"] >= SPEEDUP_TARGET
        if name == "bach":
            r["meets_bach_target"] = r["files_per_s_per_core"] >= BACH_TARGET
    return rows


def pool_row(name: str, files: list[Path], out: Path, workers: int, at_least: int) -> dict:
    """Wall time of preprocess() with a worker pool (startup included) over the files, linked
    repeatedly under other names until there are `at_least` of them, so startup is amortised."""
    from amadeus.preprocess import preprocess

    shutil.rmtree(out, ignore_errors=True)
    copies = out.parent / f"{out.name}-inputs"
    shutil.rmtree(copies, ignore_errors=True)
    copies.mkdir(parents=True)
    inputs = []
    for i in range(max(len(files), at_least)):
        link = copies / f"{i:05d}_{files[i % len(files)].name}"
        os.symlink(files[i % len(files)].resolve(), link)
        inputs.append(link)
    t0 = time.perf_counter()
    report = preprocess(copies, out, workers=workers, shard_size=250, progress=False)
    sec = time.perf_counter() - t0
    return {"dataset": name, "pipeline": f"amadeus preprocess (pool, {workers} workers, wall incl. startup)",
            "files": len(inputs), "notes": report.notes, "seconds": round(sec, 2),
            "files_per_s": round(len(inputs) / sec, 1), "files_per_s_per_worker": round(len(inputs) / sec / workers, 1),
            "notes_per_s": round(report.notes / sec), "skipped": len(report.skipped)}


def stream_row(shards: Path, windows: int = 10_000) -> dict:
    import psutil

    from amadeus.datamodule import MusicDataModule

    dm = MusicDataModule(str(shards), max_notes=256, num_workers=0, shuffle_buffer=256)
    stream = iter(dm.train_windows(limit=windows + 1000))
    for _ in range(1000):
        next(stream)
    proc = psutil.Process()
    before = proc.memory_info().rss
    t0 = time.perf_counter()
    count = sum(1 for _ in stream)
    sec = time.perf_counter() - t0
    after = proc.memory_info().rss
    return {"dataset": "bach shards", "pipeline": "MusicDataModule stream (1 process, T=256)", "windows": count,
            "windows_per_s": round(count / sec), "rss_before_mib": round(before / 2**20, 1),
            "rss_after_mib": round(after / 2**20, 1), "rss_growth_pct": round(100 * (after - before) / before, 2),
            "meets_memory_target": after < 1.10 * before}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller file sets (about a minute)")
    parser.add_argument("--workers", type=int, default=None, help="pool size (default: CPU cores)")
    args = parser.parse_args()

    from amadeus.workers import default_workers

    workers = args.workers or default_workers()
    bach = bach_files(args.quick)
    tmp = Path(tempfile.mkdtemp(prefix="amadeus-bench-"))
    try:
        synth = synthetic_files(12 if args.quick else 48, tmp / "synthetic")
        rows = per_core_rows("bach", bach, bach[: 40 if args.quick else 120])
        rows += per_core_rows("synthetic 8 tracks", synth, synth[: 4 if args.quick else 16])
        rows.append(pool_row("bach", bach, tmp / "bach-shards", workers, 600 if args.quick else 2000))
        rows.append(pool_row("synthetic 8 tracks", synth, tmp / "synth-shards", workers, 60 if args.quick else 200))
        rows.append(stream_row(tmp / "bach-shards", 10_000))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    keys = ("dataset", "pipeline", "files", "ms_per_file", "files_per_s_per_core", "notes_per_s_per_core",
            "speedup_vs_miditoolkit", "files_per_s", "files_per_s_per_worker", "windows_per_s", "rss_growth_pct")
    widths = {k: max(len(k), *(len(str(r.get(k, ""))) for r in rows)) for k in keys}
    print("  ".join(k.ljust(widths[k]) for k in keys))
    for r in rows:
        print("  ".join(str(r.get(k, "")).ljust(widths[k]) for k in keys))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"rows": rows, "quick": args.quick, "workers": workers,
                                   "cpu_count": os.cpu_count()}, indent=1) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
