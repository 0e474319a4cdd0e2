"""Per-piece musical descriptors and set-vs-set comparison: does generated music resemble real music?

A loss that falls is not music. Following Yang & Lerch ("On the evaluation of generative models in
music", 2020), each piece is reduced to a few interpretable descriptors (consonance, scale
consistency, polyphony, rhythm, range ...); a generated set and a real set are then compared
descriptor by descriptor as *distributions*: the overlapped area (OA, 1 = identical, 0 = disjoint)
and the KL divergence of their kernel density estimates. Always report them beside the real-vs-real
ceiling (two real sets of the same corpus), which is below 1 because any two finite sets differ.

Everything is computed from a `symusic.Score` (ticks -> quarter notes) with numpy, vectorised over
the notes of a piece; no per-note Python objects.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

import numpy as np
from symusic import Score

from amadeus.theory import MAJOR_SCALE

GRID = 12  # onset grid per quarter note for rhythm patterns (16ths and triplets), as the tokenizer
CONSONANT_CLASSES = (0, 3, 4, 5)  # interval classes of unisons/octaves, thirds/sixths, fourths/fifths

DESCRIPTORS = (
    "pitch_class_entropy",  # bits, 0 .. log2(12): how evenly the 12 pitch classes are used
    "pitch_range",  # semitones between the lowest and the highest pitched note
    "polyphony",  # mean number of pitched notes sounding at each onset
    "consonance",  # share of simultaneous note pairs (at onsets) whose interval class is consonant
    "scale_consistency",  # largest share of pitched notes inside one major (= natural minor) scale
    "ioi",  # mean inter-onset interval between distinct onsets, in quarter notes
    "note_length",  # mean duration of pitched notes, in quarter notes
    "on_beat",  # share of note onsets that fall on a beat of the current time signature
    "melodic_interval",  # mean absolute interval (semitones) between successive notes of the top line
    "groove_consistency",  # 1 - mean Hamming distance between consecutive bars' onset patterns
    "empty_beat_rate",  # share of beats (up to the last note-off) in which no note sounds
)


@dataclass(frozen=True)
class _Piece:
    """The arrays of one piece that the descriptors read (times in quarter notes)."""

    onset: np.ndarray  # [N] all notes, drums included (rhythm descriptors)
    offset: np.ndarray  # [N]
    pitched: np.ndarray  # [N] bool: not a drum
    pitch: np.ndarray  # [N]
    bars: np.ndarray  # [B + 1] bar starts and the end
    beat: np.ndarray  # [B] beat length of each bar (quarters)


def _bar_grid(score: Score, end: float) -> tuple[np.ndarray, np.ndarray]:
    """Bar starts (plus `end`) and each bar's beat length, from the score's time signatures (4/4 if none)."""
    tpq = score.ticks_per_quarter
    sigs = sorted((ts.time / tpq, ts.numerator, ts.denominator) for ts in score.time_signatures)
    if not sigs or sigs[0][0] > 0:
        sigs.insert(0, (0.0, 4, 4))
    starts, beats = [], []
    for i, (t0, num, den) in enumerate(sigs):
        t1 = sigs[i + 1][0] if i + 1 < len(sigs) else max(end, t0)
        bar = num * 4.0 / den
        n = max(1, math.ceil((t1 - t0) / bar - 1e-9))
        starts.append(t0 + bar * np.arange(n))
        beats.append(np.full(n, 4.0 / den))
    bars = np.concatenate(starts)
    keep = bars < max(end, 1e-9)
    keep[0] = True
    return np.append(bars[keep], max(end, bars[keep][-1] + 1e-9)), np.concatenate(beats)[keep]


def _piece(score: Score) -> _Piece:
    tpq = float(score.ticks_per_quarter)
    parts = [(tr.notes.numpy(), tr.is_drum) for tr in score.tracks if len(tr.notes)]
    if not parts:
        z = np.zeros(0)
        return _Piece(z, z, z.astype(bool), z.astype(np.int64), np.array([0.0, 1.0]), np.array([1.0]))
    onset = np.concatenate([a["time"] for a, _ in parts]).astype(np.float64) / tpq
    dur = np.concatenate([a["duration"] for a, _ in parts]).astype(np.float64) / tpq
    pitch = np.concatenate([a["pitch"] for a, _ in parts]).astype(np.int64)
    pitched = np.concatenate([np.full(len(a["time"]), not d) for a, d in parts])
    order = np.lexsort((pitch, onset))
    onset, dur, pitch, pitched = onset[order], dur[order], pitch[order], pitched[order]
    offset = onset + np.maximum(dur, 0.0)
    bars, beat = _bar_grid(score, float(offset.max()))
    return _Piece(onset, offset, pitched, pitch, bars, beat)


def _sounding(p: _Piece) -> tuple[np.ndarray, np.ndarray]:
    """(distinct onsets of pitched notes [U], bool [U, Np]: pitched note j sounds at onset u)."""
    on, off = p.onset[p.pitched], p.offset[p.pitched]
    times = np.unique(on)
    return times, (on[None, :] <= times[:, None]) & (off[None, :] > times[:, None])


def pitch_class_entropy(p: _Piece) -> float:
    hist = np.bincount(p.pitch[p.pitched] % 12, minlength=12).astype(np.float64)
    if hist.sum() == 0:
        return math.nan
    q = hist[hist > 0] / hist.sum()
    return float(-(q * np.log2(q)).sum())


def pitch_range(p: _Piece) -> float:
    x = p.pitch[p.pitched]
    return float(x.max() - x.min()) if len(x) else math.nan


def polyphony(p: _Piece) -> float:
    times, sounding = _sounding(p)
    return float(sounding.sum(axis=1).mean()) if len(times) else math.nan


def consonance(p: _Piece) -> float:
    """Share of consonant pairs among all pairs of pitched notes sounding together at an onset."""
    times, sounding = _sounding(p)
    if not len(times):
        return math.nan
    pc = np.eye(12, dtype=np.int64)[p.pitch[p.pitched] % 12]  # [Np, 12]
    h = sounding.astype(np.int64) @ pc  # [U, 12] pitch classes sounding at each onset
    pairs = np.zeros(7)
    pairs[0] = (h * (h - 1) // 2).sum()
    for d in range(1, 7):
        pairs[d] = (h * np.roll(h, -d, axis=1)).sum() / (2 if d == 6 else 1)
    total = pairs.sum()
    return float(pairs[list(CONSONANT_CLASSES)].sum() / total) if total else math.nan


def scale_consistency(p: _Piece) -> float:
    pcs = p.pitch[p.pitched] % 12
    if not len(pcs):
        return math.nan
    hist = np.bincount(pcs, minlength=12)
    scale = np.zeros(12, bool)
    scale[list(MAJOR_SCALE)] = True
    inside = [hist[np.roll(scale, k)].sum() for k in range(12)]
    return float(max(inside) / len(pcs))


def ioi(p: _Piece) -> float:
    times = np.unique(p.onset)
    return float(np.diff(times).mean()) if len(times) > 1 else math.nan


def note_length(p: _Piece) -> float:
    d = (p.offset - p.onset)[p.pitched]
    return float(d.mean()) if len(d) else math.nan


def _bar_of(p: _Piece, t: np.ndarray) -> np.ndarray:
    return np.clip(np.searchsorted(p.bars, t, side="right") - 1, 0, len(p.beat) - 1)


def on_beat(p: _Piece) -> float:
    if not len(p.onset):
        return math.nan
    bar = _bar_of(p, p.onset)
    phase = (p.onset - p.bars[bar]) / p.beat[bar]
    return float(np.mean(np.abs(phase - np.round(phase)) < 1e-6))


def melodic_interval(p: _Piece) -> float:
    """Mean |interval| between the highest pitched notes of successive onsets (the top line)."""
    on, pitch = p.onset[p.pitched], p.pitch[p.pitched]
    if len(on) < 2:
        return math.nan
    last_at_onset = np.append(on[1:] != on[:-1], True)  # sorted by (onset, pitch): last = highest
    top = pitch[last_at_onset]
    return float(np.abs(np.diff(top)).mean()) if len(top) > 1 else math.nan


def groove_consistency(p: _Piece) -> float:
    """1 - mean Hamming distance of consecutive bars' onset patterns on a GRID-per-quarter grid."""
    n_bars = len(p.beat)
    if n_bars < 2 or not len(p.onset):
        return math.nan
    length = np.round((p.bars[1:] - p.bars[:-1]) * GRID).astype(np.int64)  # grid steps per bar
    bar = _bar_of(p, p.onset)
    step = np.clip(np.round((p.onset - p.bars[bar]) * GRID).astype(np.int64), 0, length[bar] - 1)
    pattern = np.zeros((n_bars, int(length.max())), bool)
    pattern[bar, step] = True
    diff = (pattern[1:] != pattern[:-1]).sum(axis=1)
    return float(1.0 - np.mean(diff / np.maximum(length[1:], length[:-1])))


def empty_beat_rate(p: _Piece) -> float:
    if not len(p.onset):
        return math.nan
    starts = np.concatenate([b0 + w * np.arange(max(1, round((b1 - b0) / w)))
                             for b0, b1, w in zip(p.bars[:-1], p.bars[1:], p.beat)])
    ends = np.append(starts[1:], p.bars[-1])
    busy = (p.onset[None, :] < ends[:, None]) & (p.offset[None, :] > starts[:, None])
    return float(1.0 - busy.any(axis=1).mean())


_FUNCTIONS = {name: globals()[name] for name in DESCRIPTORS}


def describe(score: Score) -> dict[str, float]:
    """Every descriptor of one piece (nan where it is undefined, e.g. range without pitched notes)."""
    p = _piece(score)
    return {name: fn(p) for name, fn in _FUNCTIONS.items()}


def describe_set(scores: Iterable[Score]) -> dict[str, np.ndarray]:
    """Descriptors of many pieces: {name: float array [pieces]}."""
    rows = [describe(s) for s in scores]
    return {name: np.array([r[name] for r in rows], dtype=np.float64) for name in DESCRIPTORS}


# ----------------------------------------------------------------------------------------------
# comparing two sets


def _kde(x: np.ndarray, grid: np.ndarray, bw: float) -> np.ndarray:
    z = (grid[:, None] - x[None, :]) / bw
    return np.exp(-0.5 * z * z).sum(axis=1)


def _bandwidth(x: np.ndarray) -> float:
    """Scott's rule; a small floor so that a constant descriptor still has a density."""
    sd = float(np.std(x))
    scale = max(abs(float(np.mean(x))), 1.0)
    return max(1.06 * sd * len(x) ** (-1 / 5), 1e-3 * scale)


def overlap(a: Sequence[float], b: Sequence[float], points: int = 1024) -> tuple[float, float]:
    """(overlapped area, KL(b || a)) of the Gaussian KDEs of two samples of one descriptor.

    Both densities use one bandwidth (the mean of each side's Scott bandwidth), so a set compared
    with itself gives OA 1 and KL 0. nan when either side has no finite value.
    """
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    a, b = a[np.isfinite(a)], b[np.isfinite(b)]
    if not len(a) or not len(b):
        return math.nan, math.nan
    pooled = np.concatenate([a, b])
    bw = 0.5 * (_bandwidth(a) + _bandwidth(b))
    grid = np.linspace(pooled.min() - 4 * bw, pooled.max() + 4 * bw, points)
    pa, pb = _kde(a, grid, bw), _kde(b, grid, bw)
    pa, pb = pa / pa.sum(), pb / pb.sum()  # probability mass per grid cell
    oa = float(np.minimum(pa, pb).sum())
    eps = 1e-12
    kl = float((pb * (np.log(pb + eps) - np.log(pa + eps))).sum())
    return min(oa, 1.0), max(kl, 0.0)


def compare(generated: Mapping[str, np.ndarray], real: Mapping[str, np.ndarray]) -> dict[str, object]:
    """OA and KL(real || generated) per descriptor, their means, and each side's descriptor means."""
    oa, kl = {}, {}
    for name in DESCRIPTORS:
        oa[name], kl[name] = overlap(generated[name], real[name])
    finite = [v for v in oa.values() if not math.isnan(v)]
    return {
        "mean_oa": float(np.mean(finite)) if finite else math.nan,
        "mean_kl": float(np.nanmean(list(kl.values()))) if finite else math.nan,
        "oa": oa,
        "kl": kl,
        "mean": {name: float(np.nanmean(generated[name])) if np.isfinite(generated[name]).any() else math.nan
                 for name in DESCRIPTORS},
        "real_mean": {name: float(np.nanmean(real[name])) if np.isfinite(real[name]).any() else math.nan
                      for name in DESCRIPTORS},
    }
