"""Render a symusic Score: a piano-roll PNG (matplotlib, Agg) and a WAV (symusic's synthesizer).

Audio uses a local soundfont only (nothing is downloaded): $AMADEUS_SOUNDFONT, else Debian's
MuseScore_General.sf3 (package musescore-general-soundfont-small). TimGM6mb is never used: symusic
plays its piano off-pitch. Without a soundfont `render_wav` says so and returns None.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
from symusic import Score, TimeUnit

from amadeus.tokenizer import DRUM_INSTRUMENT, instrument_name

log = logging.getLogger(__name__)

SOUNDFONT_ENV = "AMADEUS_SOUNDFONT"
SOUNDFONT_PATHS = (
    "/usr/share/sounds/sf3/MuseScore_General.sf3",
    "/usr/share/sounds/sf2/MuseScore_General.sf2",
    "/usr/share/sounds/sf3/MuseScore_General_Lite.sf3",
)
NO_SOUNDFONT = (f"no soundfont found: set {SOUNDFONT_ENV}=/path/to/font.sf2|sf3 or install Debian's "
                "musescore-general-soundfont-small (MuseScore_General.sf3); WAV skipped")


class RenderError(ValueError):
    """A file that cannot be rendered (names the path and the problem)."""


def find_soundfont() -> Path | None:
    """$AMADEUS_SOUNDFONT if it names a file, else the first installed MuseScore General font, else None."""
    env = os.environ.get(SOUNDFONT_ENV)
    if env:
        if Path(env).is_file():
            return Path(env)
        log.warning("%s=%s is not a file; looking for MuseScore_General instead", SOUNDFONT_ENV, env)
    for p in SOUNDFONT_PATHS:
        if Path(p).is_file():
            return Path(p)
    return None


def render_wav(score: Score, path: str | Path, soundfont: str | Path | None = None,
               sample_rate: int = 44100) -> Path | None:
    """Synthesize `score` to a 16-bit stereo WAV. Returns the path, or None (with a logged message)
    when no soundfont is available."""
    import symusic

    sf = Path(soundfont) if soundfont else find_soundfont()
    if sf is None:
        log.warning(NO_SOUNDFONT)
        return None
    if not sf.is_file():
        raise RenderError(f"{sf}: soundfont not found")
    if "timgm6mb" in sf.name.lower():
        raise RenderError(f"{sf}: TimGM6mb plays the piano off-pitch with symusic; use MuseScore_General.sf3")
    synth = symusic.Synthesizer(str(sf), sample_rate, 0)
    audio = synth.render(score, True)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    symusic.dump_wav(str(path), audio, sample_rate, True)
    return path


def _bar_lines(score: Score, end: int) -> np.ndarray:
    """Bar-line ticks up to `end` from the time signatures (4/4 before the first one)."""
    tpq = score.ticks_per_quarter
    ts = sorted(((t.time, t.numerator, t.denominator) for t in score.time_signatures), key=lambda x: x[0])
    if not ts or ts[0][0] > 0:
        ts.insert(0, (0, 4, 4))
    lines = []
    for i, (t0, n, d) in enumerate(ts):
        t1 = ts[i + 1][0] if i + 1 < len(ts) else end
        bar = max(1, n * 4 * tpq // d)
        lines.append(np.arange(t0, max(t0, t1), bar))
    return np.concatenate(lines) if lines else np.zeros(0)


def piano_roll_figure(score: Score, title: str | None = None, width: float = 12.0, height: float = 5.0):
    """A matplotlib Figure of the piano roll: one colour per instrument, bar lines, x in quarters."""
    import matplotlib
    from matplotlib.collections import PatchCollection
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    if score.ttype != TimeUnit.tick:
        score = score.to("tick")
    tpq = score.ticks_per_quarter
    fig = Figure(figsize=(width, height), dpi=100)
    ax = fig.add_subplot(1, 1, 1)
    n_tracks = sum(1 for t in score.tracks if len(t.notes))
    cmap = matplotlib.colormaps["tab10" if n_tracks <= 10 else "tab20"]
    end, lo, hi = 0, 127, 0
    handles = []
    for i, track in enumerate(t for t in score.tracks if len(t.notes)):
        a = track.notes.numpy()
        start, dur, pitch = a["time"] / tpq, np.maximum(a["duration"], 1) / tpq, a["pitch"]
        value = DRUM_INSTRUMENT if track.is_drum else 1 + int(track.program)
        colour = cmap(i % cmap.N)
        rects = [Rectangle((s, p - 0.4), d, 0.8) for s, d, p in zip(start.tolist(), dur.tolist(), pitch.tolist())]
        ax.add_collection(PatchCollection(rects, facecolor=colour, edgecolor="none", alpha=0.85))
        handles.append(Rectangle((0, 0), 1, 1, color=colour, label=instrument_name(value)))
        end = max(end, int((a["time"] + a["duration"]).max()))
        lo, hi = min(lo, int(pitch.min())), max(hi, int(pitch.max()))
    if not handles:
        lo, hi, end = 48, 72, 4 * tpq
    for x in _bar_lines(score, end) / tpq:
        ax.axvline(x, color="0.55", linewidth=0.7, zorder=0)
    ax.set_xlim(0, max(end / tpq, 1.0))
    ax.set_ylim(lo - 2, hi + 2)
    ax.set_xlabel("quarter notes")
    ax.set_ylabel("MIDI pitch")
    if title:
        ax.set_title(title)
    if handles:
        ax.legend(handles=handles, loc="upper right", fontsize=8, framealpha=0.8)
    fig.tight_layout()
    return fig


def piano_roll_png(score: Score, path: str | Path, title: str | None = None) -> Path:
    """Write the piano roll of `score` to a PNG (no display needed: matplotlib's Agg canvas)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    fig = piano_roll_figure(score, title)
    FigureCanvasAgg(fig)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(str(path))
    return path
