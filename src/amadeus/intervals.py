"""Bootstrap intervals of per-piece scores: how sure a percentage over a few dozen pieces is.

The text-adherence metrics (TB, CK, CTS, CS, ...) are means over prompt pieces of per-piece scores in
[0, 1] (amadeus.metrics.adherence_scores). Each gets a 95 % percentile bootstrap interval over the pieces
(`resamples` resamples, a fixed seed: the same report gives the same interval), and the difference between
two modes scored on the same prompts (with text - without text) gets a *paired* interval: the prompts
are resampled together, so the difference is judged against its own noise, not against the sum of both.
A percentile bootstrap is used rather than a Wilson interval because CI and CM_top3 are shares per piece,
not hits; for the 0/1 metrics the two agree closely at these sizes.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np

RESAMPLES = 1000
METHOD = "percentile bootstrap over the prompt pieces (95 %, 1000 resamples, seed 0)"


def score_matrix(rows: Sequence[Mapping[str, float]], names: Sequence[str]) -> np.ndarray:
    """[pieces, metrics] of per-piece scores, nan where a piece's target does not state the field."""
    return np.array([[float(r.get(n, math.nan)) for n in names] for r in rows], dtype=np.float64).reshape(-1, len(names))


def _resample_means(x: np.ndarray, resamples: int, seed: int) -> np.ndarray:
    """[B, M] column means (nan-aware) of bootstrap resamples of the rows of x [n, M]."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(x), (resamples, len(x)))
    sample = x[idx]  # [B, n, M]
    with np.errstate(invalid="ignore"):
        return np.nansum(sample, axis=1) / np.isfinite(sample).sum(axis=1)


def _percentiles(means: np.ndarray) -> list[list[float | None]]:
    out = []
    for col in means.T:
        col = col[np.isfinite(col)]
        out.append([float(v) for v in np.percentile(col, [2.5, 97.5])] if len(col) else [None, None])
    return out


def mean_intervals(x: np.ndarray, names: Sequence[str], resamples: int = RESAMPLES, seed: int = 0,
                   scale: float = 100.0) -> dict[str, list[float | None]]:
    """{metric: [low, high]} of each column's mean (times `scale`: percent), [None, None] where nothing
    was scored."""
    if not len(x):
        return {n: [None, None] for n in names}
    bounds = _percentiles(_resample_means(x, resamples, seed) * scale)
    return {n: b for n, b in zip(names, bounds)}


def paired_difference(a: np.ndarray, b: np.ndarray, names: Sequence[str], resamples: int = RESAMPLES,
                      seed: int = 0, scale: float = 100.0) -> dict[str, dict[str, Any]]:
    """{metric: {"difference", "ci95", "pieces"}}: mean of a - b over the pieces scored in both (times
    `scale`), with a paired bootstrap interval; rows of a and b are the same prompts."""
    if a.shape != b.shape:
        raise ValueError(f"paired_difference: shapes {a.shape} and {b.shape} differ")
    d = a - b  # nan where either is unscored
    out: dict[str, dict[str, Any]] = {}
    bounds = _percentiles(_resample_means(d, resamples, seed) * scale) if len(d) else [[None, None]] * len(names)
    for j, name in enumerate(names):
        col = d[:, j][np.isfinite(d[:, j])] if len(d) else np.zeros(0)
        out[name] = {"difference": float(col.mean() * scale) if len(col) else None, "ci95": bounds[j],
                     "pieces": int(len(col))}
    return out
