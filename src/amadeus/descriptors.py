"""Per-piece musical descriptors and set-vs-set comparison: does generated music resemble real music?

A loss that falls is not music. Following Yang & Lerch ("On the evaluation of generative models in
music", 2020), each piece is reduced to a few interpretable descriptors (consonance, scale
consistency, polyphony, rhythm, range ...); a generated set and a reference set of real pieces are then
compared descriptor by descriptor as *distributions*: the overlapped area (OA, 1 = identical, 0 =
disjoint) and the KL divergence of their kernel density estimates. Always report them beside the
real-vs-real ceiling (training pieces against the same reference), below 1 because two finite sets differ.

What makes the OA a measurement (`compare`):
- the kernel width of each descriptor is fixed by the *reference* set (Scott's rule on its values), the
  same for every set compared with it: a generated set cannot widen the kernels with an outlier and so
  raise its own score (with a width shared between the two sets, a set shifted by 3 standard deviations
  plus one extreme piece scored 0.95);
- an undefined value (nan: consonance of a one-voice tune, anything of an empty piece) is an atom of the
  distribution: OA = min(u_gen, u_ref) + the overlap of the defined parts weighted by their shares, so a
  value defined on one side only counts against the match instead of dropping out;
- `mean_oa_ci95`: a bootstrap over both the generated and the reference pieces (its spread placed on the
  estimate: `mean_oa_interval` says why);
- `furthest`: the generated pieces furthest from the reference, with their descriptors;
- `degenerate`: pieces above DEGENERATE_FACTOR x the corpus' most simultaneous notes (`max_voices`: notes
  sounding at one onset) or most note onsets in one beat (`max_notes_per_beat`), the collapse of rows that
  stop advancing time.

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

EXTREMES = (  # per-piece maxima behind `degenerate` (not compared as distributions)
    "max_voices",  # most notes (drums included) sounding at one onset
    "max_notes_per_beat",  # most note onsets inside one beat of the current time signature
)
DEGENERATE_FACTOR = 1.5  # a piece above this times the corpus' maximum of an EXTREMES value is degenerate
RESAMPLES = 1000  # bootstrap resamples of mean_oa_ci95
UNDEFINED_Z = 4.0  # distance of a value undefined where most reference pieces have one (and the reverse)

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


def max_voices(p: _Piece) -> float:
    """Most notes (drums included) sounding at one onset: started there or still held."""
    if not len(p.onset):
        return math.nan
    times = np.unique(p.onset)
    started = np.searchsorted(np.sort(p.onset), times, side="right")
    ended = np.searchsorted(np.sort(p.offset), times, side="right")
    return float((started - ended).max())


def max_notes_per_beat(p: _Piece) -> float:
    """Most note onsets (drums included) inside one beat of the bar grid."""
    if not len(p.onset):
        return math.nan
    starts = np.concatenate([b0 + w * np.arange(max(1, round((b1 - b0) / w)))
                             for b0, b1, w in zip(p.bars[:-1], p.bars[1:], p.beat)])
    beat = np.clip(np.searchsorted(starts, p.onset + 1e-9, side="right") - 1, 0, len(starts) - 1)
    return float(np.bincount(beat).max())


_EXTREME_FUNCTIONS = {"max_voices": max_voices, "max_notes_per_beat": max_notes_per_beat}


def describe(score: Score) -> dict[str, float]:
    """Every descriptor of one piece (nan where it is undefined, e.g. range without pitched notes)."""
    p = _piece(score)
    return {name: fn(p) for name, fn in _FUNCTIONS.items()}


def describe_set(scores: Iterable[Score]) -> dict[str, np.ndarray]:
    """Descriptors and EXTREMES of many pieces: {name: float array [pieces]}."""
    rows = []
    for score in scores:
        p = _piece(score)
        rows.append({name: fn(p) for name, fn in (_FUNCTIONS | _EXTREME_FUNCTIONS).items()})
    return {name: np.array([r[name] for r in rows], dtype=np.float64) for name in DESCRIPTORS + EXTREMES}


# ----------------------------------------------------------------------------------------------
# comparing a set with a reference set


def bandwidth(reference: Sequence[float]) -> float:
    """The kernel width of one descriptor, from the reference set's defined values: Scott's rule, floored at
    1 % of the values' scale so that a constant descriptor still has a density; nan without values."""
    x = np.asarray(reference, np.float64)
    x = x[np.isfinite(x)]
    if not len(x):
        return math.nan
    return max(1.06 * float(np.std(x)) * len(x) ** (-1 / 5), 1e-2 * max(abs(float(np.mean(x))), 1.0))


def _grid(reference: np.ndarray, bw: float, max_points: int = 4096) -> np.ndarray:
    """Where the reference density lives (its values +- 6 widths), at most bw / 8 apart (fewer points only
    for a reference spread over more than 500 widths). Outside it the overlap has no mass."""
    lo, hi = float(reference.min()) - 6 * bw, float(reference.max()) + 6 * bw
    return np.linspace(lo, hi, min(max_points, int(math.ceil((hi - lo) / (bw / 8))) + 1))


def _kernels(x: np.ndarray, grid: np.ndarray, bw: float) -> np.ndarray:
    """[G, n]: each value's Gaussian kernel (integral 1) on the grid."""
    z = (grid[:, None] - x[None, :]) / bw
    return np.exp(-0.5 * z * z) / (bw * math.sqrt(2 * math.pi))


class _Overlap:
    """One descriptor of two sets on the reference's grid: overlap and KL for piece weights (the plain
    sets, or bootstrap resamples as weight columns)."""

    def __init__(self, a: np.ndarray, b: np.ndarray, bw: float) -> None:
        self.def_a, self.def_b = np.isfinite(a), np.isfinite(b)  # [na], [nb]
        self.grid = _grid(b[self.def_b], bw) if self.def_b.any() else np.zeros(1)
        self.dx = float(self.grid[1] - self.grid[0]) if len(self.grid) > 1 else 0.0
        self.ka = _kernels(np.where(self.def_a, a, 0.0), self.grid, bw) * self.def_a  # [G, na]
        self.kb = _kernels(np.where(self.def_b, b, 0.0), self.grid, bw) * self.def_b  # [G, nb]

    def parts(self, wa: np.ndarray, wb: np.ndarray) -> tuple[np.ndarray, ...]:
        """Undefined shares [B] and defined densities [G, B] (integrating to the defined shares) for piece
        weights wa [na, B], wb [nb, B] (columns sum to 1)."""
        ua, ub = (wa * ~self.def_a[:, None]).sum(0), (wb * ~self.def_b[:, None]).sum(0)
        return ua, ub, self.ka @ wa, self.kb @ wb

    def oa(self, wa: np.ndarray, wb: np.ndarray) -> np.ndarray:
        """[B] overlapped areas: the undefined atoms' overlap plus the defined densities'."""
        ua, ub, pa, pb = self.parts(wa, wb)
        return np.clip(np.minimum(ua, ub) + np.minimum(pa, pb).sum(0) * self.dx, 0.0, 1.0)

    def kl(self, wa: np.ndarray, wb: np.ndarray, eps: float = 1e-12) -> np.ndarray:
        """[B] KL(b || a) of the two mixtures (atom + density)."""
        ua, ub, pa, pb = self.parts(wa, wb)
        cont = (pb * (np.log(pb + eps) - np.log(pa + eps))).sum(0) * self.dx
        return np.maximum(ub * (np.log(ub + eps) - np.log(ua + eps)) + cont, 0.0)


def _plain(n: int) -> np.ndarray:
    return np.full((n, 1), 1.0 / n)


def overlap(a: Sequence[float], b: Sequence[float], width: float | None = None) -> tuple[float, float]:
    """(overlapped area, KL(b || a)) of one descriptor of set `a` against the reference set `b`.

    Kernel width `width` (default: `bandwidth(b)`, the reference's); nan values are an atom of each
    distribution (see the module docstring); nan when either set is empty.
    """
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if not len(a) or not len(b):
        return math.nan, math.nan
    bw = bandwidth(b) if width is None else width
    o = _Overlap(a, b, bw if math.isfinite(bw) else 1.0)
    wa, wb = _plain(len(a)), _plain(len(b))
    return float(o.oa(wa, wb)[0]), float(o.kl(wa, wb)[0])


def _resample_weights(n: int, resamples: int, rng: np.random.Generator) -> np.ndarray:
    """[n, B]: each column the share of every piece in one bootstrap resample."""
    idx = rng.integers(0, n, (resamples, n)) + n * np.arange(resamples)[:, None]
    return np.bincount(idx.ravel(), minlength=n * resamples).reshape(resamples, n).T / n


def mean_oa_interval(generated: Mapping[str, np.ndarray], real: Mapping[str, np.ndarray],
                     widths: Mapping[str, float], resamples: int = RESAMPLES, seed: int = 0) -> list[float]:
    """95 % bootstrap interval [low, high] of the mean OA: both the generated and the reference pieces are
    resampled (the same pieces for every descriptor), the kernel widths stay fixed.

    A resample repeats pieces, and a set with repeated pieces overlaps less with any other (its density is
    lumpier): every resample's OA is lower than the set's own by a few hundredths, so the raw percentiles can
    lie wholly below the estimate. The interval is therefore the bootstrap's spread placed on the estimate:
    the 2.5 and 97.5 % percentiles of (resample OA - mean resample OA), added to the mean OA."""
    na, nb = len(generated[DESCRIPTORS[0]]), len(real[DESCRIPTORS[0]])
    if not na or not nb or resamples < 1:
        return [math.nan, math.nan]
    rng = np.random.default_rng(seed)
    wa, wb = _resample_weights(na, resamples, rng), _resample_weights(nb, resamples, rng)
    total = np.zeros(resamples)
    for name in DESCRIPTORS:
        bw = widths[name] if math.isfinite(widths[name]) else 1.0
        total += _Overlap(np.asarray(generated[name], np.float64), np.asarray(real[name], np.float64), bw).oa(wa, wb)
    means = total / len(DESCRIPTORS)
    estimate = float(np.mean([_Overlap(np.asarray(generated[n], np.float64), np.asarray(real[n], np.float64),
                                       widths[n] if math.isfinite(widths[n]) else 1.0).oa(_plain(na), _plain(nb))[0]
                              for n in DESCRIPTORS]))
    low, high = np.percentile(means - means.mean(), [2.5, 97.5]) + estimate
    return [float(max(low, 0.0)), float(min(high, 1.0))]


def _spread(x: np.ndarray) -> tuple[float, float, float]:
    """(median, standard deviation floored as the kernel width, undefined share) of a reference descriptor."""
    d = x[np.isfinite(x)]
    if not len(d):
        return math.nan, math.nan, 1.0
    return float(np.median(d)), max(float(np.std(d)), bandwidth(d)), 1.0 - len(d) / len(x)


def furthest_pieces(generated: Mapping[str, np.ndarray], real: Mapping[str, np.ndarray],
                    count: int = 5) -> list[dict[str, object]]:
    """The `count` generated pieces furthest from the reference: distance = the largest, over descriptors,
    of |value - reference median| / reference standard deviation (UNDEFINED_Z for a value undefined where
    most reference pieces have one, or the reverse). Each: {"index", "distance", "descriptor" (the
    furthest), "descriptors" {name: value}}."""
    n = len(generated[DESCRIPTORS[0]])
    if not n or not len(real[DESCRIPTORS[0]]):
        return []
    z = np.zeros((n, len(DESCRIPTORS)))
    for j, name in enumerate(DESCRIPTORS):
        x = np.asarray(generated[name], np.float64)
        med, sd, undefined = _spread(np.asarray(real[name], np.float64))
        mostly_defined = undefined < 0.5
        far = np.where(np.isfinite(x), np.abs(x - med) / sd if mostly_defined else UNDEFINED_Z,
                       UNDEFINED_Z if mostly_defined else 0.0)
        z[:, j] = np.nan_to_num(far, nan=0.0)
    worst = z.max(axis=1)
    out = []
    for i in np.argsort(-worst, kind="stable")[:count]:
        values = {k: float(generated[k][i]) for k in DESCRIPTORS + EXTREMES if k in generated}
        out.append({"index": int(i), "distance": float(worst[i]), "descriptor": DESCRIPTORS[int(z[i].argmax())],
                    "descriptors": {k: (v if math.isfinite(v) else None) for k, v in values.items()}})
    return out


def corpus_limits(*sets: Mapping[str, np.ndarray]) -> dict[str, float]:
    """The corpus' maxima of EXTREMES over the real sets given (nan where none has a value)."""
    out = {}
    for name in EXTREMES:
        values = np.concatenate([np.asarray(s[name], np.float64) for s in sets if name in s] or [np.zeros(0)])
        values = values[np.isfinite(values)]
        out[name] = float(values.max()) if len(values) else math.nan
    return out


def degenerate(generated: Mapping[str, np.ndarray], limits: Mapping[str, float],
               factor: float = DEGENERATE_FACTOR) -> dict[str, object]:
    """{"rate" (share of pieces), "pieces" (their indices), "limits", "factor"}: a piece is degenerate when
    an EXTREMES value is above `factor` x the corpus' maximum of it."""
    n = len(generated[EXTREMES[0]]) if EXTREMES[0] in generated else 0
    bad = np.zeros(n, bool)
    for name in EXTREMES:
        if name in generated and math.isfinite(limits.get(name, math.nan)):
            bad |= np.nan_to_num(np.asarray(generated[name], np.float64), nan=0.0) > factor * limits[name]
    return {"rate": float(bad.mean()) if n else math.nan, "pieces": [int(i) for i in np.flatnonzero(bad)],
            "limits": dict(limits), "factor": factor}


def compare(generated: Mapping[str, np.ndarray], real: Mapping[str, np.ndarray], *,
            limits: Mapping[str, float] | None = None, resamples: int = RESAMPLES, seed: int = 0,
            furthest: int = 5) -> dict[str, object]:
    """The generated set against the reference set `real` ({name: [pieces]} of `describe_set`).

    Returns mean_oa, mean_oa_ci95 ([low, high], bootstrap of `resamples`, seeded), mean_kl, and per
    descriptor oa, kl (KL(real || generated)), mean / real_mean (over the defined values), undefined
    ({"generated", "reference"} shares of nan), bandwidth (the reference's kernel width); `furthest` (the
    pieces furthest from the reference) and `degenerate` (against `limits`, default the reference's own
    maxima of EXTREMES); pieces / real_pieces.
    """
    widths = {name: bandwidth(real[name]) for name in DESCRIPTORS}
    oa, kl = {}, {}
    for name in DESCRIPTORS:
        oa[name], kl[name] = overlap(generated[name], real[name], widths[name])
    finite = [v for v in oa.values() if not math.isnan(v)]

    def mean(x: np.ndarray) -> float:
        x = np.asarray(x, np.float64)
        return float(np.nanmean(x)) if np.isfinite(x).any() else math.nan

    def undefined(x: np.ndarray) -> float:
        return float(np.mean(~np.isfinite(np.asarray(x, np.float64)))) if len(x) else math.nan

    has_extremes = all(name in generated for name in EXTREMES)
    return {
        "mean_oa": float(np.mean(finite)) if finite else math.nan,
        "mean_oa_ci95": mean_oa_interval(generated, real, widths, resamples, seed) if finite else [math.nan] * 2,
        "mean_kl": float(np.nanmean(list(kl.values()))) if finite else math.nan,
        "oa": oa, "kl": kl,
        "mean": {name: mean(generated[name]) for name in DESCRIPTORS},
        "real_mean": {name: mean(real[name]) for name in DESCRIPTORS},
        "undefined": {name: {"generated": undefined(generated[name]), "reference": undefined(real[name])}
                      for name in DESCRIPTORS},
        "bandwidth": widths,
        "furthest": furthest_pieces(generated, real, furthest),
        "degenerate": degenerate(generated, limits or corpus_limits(real)) if has_extremes else None,
        "pieces": len(generated[DESCRIPTORS[0]]), "real_pieces": len(real[DESCRIPTORS[0]]),
    }
