"""Chords as the token matrix's chord column holds them: detection from sounding notes, and names.

Chord column values: 0 = not applicable (non-note rows), CHORD_NONE = no chord, 2 + root * Q + quality
for the 12 roots x Q = len(CHORD_QUALITIES) qualities of `amadeus.theory`.
"""

from __future__ import annotations

import numpy as np

from amadeus.theory import CHORD_INTERVALS, CHORD_QUALITIES, CHORD_SUFFIXES, PITCH_CLASS_NAMES

CHORD_NONE = 1  # chord column value for "no chord"



def _chord_templates() -> tuple[np.ndarray, np.ndarray]:
    """Binary pitch-class templates [12 * Q, 12] in chord-id order (root-major) and their roots."""
    q = len(CHORD_QUALITIES)
    templates = np.zeros((12 * q, 12))
    for root in range(12):
        for qi, quality in enumerate(CHORD_QUALITIES):
            templates[root * q + qi, [(root + i) % 12 for i in CHORD_INTERVALS[quality]]] = 1.0
    return templates, np.repeat(np.arange(12), q)


_TEMPLATES, _TEMPLATE_ROOTS = _chord_templates()


def pitch_class_profile(starts: np.ndarray, ends: np.ndarray, pitches: np.ndarray, times: np.ndarray,
                        window: int) -> tuple[np.ndarray, np.ndarray]:
    """Pitch classes around each query time, from note intervals [start, end).

    Returns (sounding [U, 12]: notes sounding at t, i.e. start <= t < end; weight [U, 12]: note-time
    of each pitch class inside [t, t + window)). Built from a start/end difference array on the
    compressed time axis (bincount + cumsum), so memory is O(notes), not O(time span).
    """
    times = np.asarray(times, dtype=np.int64)
    if len(starts) == 0 or len(times) == 0:
        return np.zeros((len(times), 12), np.int64), np.zeros((len(times), 12), np.float64)
    starts = np.asarray(starts, dtype=np.int64)
    ends = np.asarray(ends, dtype=np.int64)
    pcs = np.asarray(pitches, dtype=np.int64) % 12
    coords = np.unique(np.concatenate([starts, ends, times, times + window]))
    size = len(coords) * 12
    diff = (np.bincount(np.searchsorted(coords, starts) * 12 + pcs, minlength=size)
            - np.bincount(np.searchsorted(coords, ends) * 12 + pcs, minlength=size))  # np.add.at, faster
    count = np.cumsum(diff.reshape(-1, 12), axis=0)  # count[j] = notes sounding on [coords[j], coords[j+1])
    widths = np.diff(coords, append=coords[-1]).astype(np.float64)
    integral = np.concatenate([np.zeros((1, 12)), np.cumsum(count * widths[:, None], axis=0)])
    ti = np.searchsorted(coords, times)
    tw = np.searchsorted(coords, times + window)
    return count[ti], integral[tw] - integral[ti]


def detect_chords(starts: np.ndarray, ends: np.ndarray, pitches: np.ndarray, times: np.ndarray,
                  window: int) -> np.ndarray:
    """Chord id at each query time (chord column values: 1 = none, 2 + root * Q + quality).

    Pass pitched notes only (no drums). Weights = note-time of each pitch class over the next
    `window` (a beat); the template of 12 roots x CHORD_QUALITIES that best explains them wins:
    score = weight inside the template - 0.5 * fraction of template tones missing
    (+ 0.05 if the root is the lowest pitch starting at t; ties go to the lower id). No chord when
    fewer than 2 pitch classes sound at t, when the root is absent, when fewer than 2 tones match,
    or when less than 60 % of the weight lies inside the template.
    """
    times = np.asarray(times, dtype=np.int64)
    out = np.full(len(times), CHORD_NONE, dtype=np.int64)
    if len(starts) == 0 or len(times) == 0:
        return out
    sounding, weight = pitch_class_profile(starts, ends, pitches, times, window)
    w = weight / np.maximum(weight.sum(axis=1, keepdims=True), 1e-9)  # [U, 12]
    tones = (sounding > 0) | (w >= 0.15)  # [U, 12] pitch classes that count as present
    # bass: lowest pitch among notes starting exactly at t
    order = np.lexsort((pitches, starts))
    s_sorted, p_sorted = np.asarray(starts)[order], np.asarray(pitches)[order] % 12
    i = np.minimum(np.searchsorted(s_sorted, times), len(s_sorted) - 1)
    bass = np.where(s_sorted[i] == times, p_sorted[i], -1)
    bass_onehot = bass[:, None] == np.arange(12)[None, :]  # [U, 12]
    # one matmul: inside + 0.5 * covered / size + 0.05 * (root == bass)  (= score + 0.5)
    size = _TEMPLATES.sum(axis=1)  # [C]
    feats = np.concatenate([w, 0.5 * tones, 0.05 * bass_onehot], axis=1).astype(np.float32)  # [U, 36]
    root_onehot = (_TEMPLATE_ROOTS[:, None] == np.arange(12)[None, :]).astype(np.float64)  # [C, 12]
    proj = np.concatenate([_TEMPLATES, _TEMPLATES / size[:, None], root_onehot], axis=1).T  # [36, C]
    best = np.argmax(feats @ proj.astype(np.float32), axis=1)  # [U]
    tmpl = _TEMPLATES[best]  # [U, 12]
    inside = (w * tmpl).sum(axis=1)
    covered = (tones * tmpl).sum(axis=1)
    rows = np.arange(len(times))
    ok = ((sounding > 0).sum(axis=1) >= 2) & (inside >= 0.6) & (covered >= 2)
    ok &= tones[rows, _TEMPLATE_ROOTS[best]]
    out[ok] = 2 + best[ok]
    return out


def chord_name(chord_id: int) -> str | None:
    """Chord column value -> name like "G", "Em", "D7", "Bdim" (None for n/a or no chord)."""
    q = len(CHORD_QUALITIES)
    if not 2 <= chord_id < 2 + 12 * q:
        return None
    root, quality = divmod(int(chord_id) - 2, q)
    return PITCH_CLASS_NAMES[root] + CHORD_SUFFIXES[CHORD_QUALITIES[quality]]
