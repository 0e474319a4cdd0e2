"""TokenizerConfig: everything that fixes the note matrix's vocabularies (grid, time signatures, tempo ladder,
velocity and duration bins), and the hash that travels with every shard and checkpoint.

numpy only: the tokenizer, the preprocessing workers and the sampler's guards read it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np

FORMAT_VERSION = 2  # 2: tempo ladder anchored at 120 bpm
DECODE_TPQ = 480  # ticks per quarter of decoded MIDI (the grid resolution must divide it)



@dataclass(frozen=True)
class TokenizerConfig:
    """Everything that fixes the vocabularies; saved (with its hash) beside every shard and checkpoint.

    resolution: grid steps per quarter note (must divide 480, the tick rate of decoded MIDI).
    max_bar_quarters: longest bar; time signatures longer than this are replaced by 4/4.
    tempo_min / tempo_max / tempo_bins: geometric tempo ladder (bpm), nearest bin in log space.
    velocity_bins: equal-width bins over velocities 1..127, decoded to the bin centre.
    max_duration_quarters: longest duration; durations are every grid step up to 4 quarters, every
        half quarter up to 8 quarters, then every quarter.
    max_bars: guard against pathological files (a clear error beyond it).
    """

    resolution: int = 12
    max_bar_quarters: int = 8
    tempo_min: float = 24.0
    tempo_max: float = 320.0
    tempo_bins: int = 64
    velocity_bins: int = 32
    max_duration_quarters: int = 32
    max_bars: int = 20000

    def __post_init__(self) -> None:
        problems = []
        if self.resolution < 1 or DECODE_TPQ % self.resolution:
            problems.append(f"resolution={self.resolution} must divide {DECODE_TPQ}")
        if self.max_bar_quarters < 4:
            problems.append("max_bar_quarters must be >= 4 (4/4 is the default signature)")
        if not 0 < self.tempo_min < self.tempo_max or self.tempo_bins < 2:
            problems.append("need 0 < tempo_min < tempo_max and tempo_bins >= 2")
        if not 1 <= self.velocity_bins <= 127:
            problems.append("velocity_bins must be in 1..127")
        if self.max_duration_quarters < 1 or self.max_bars < 1:
            problems.append("max_duration_quarters and max_bars must be >= 1")
        if problems:
            raise ValueError("invalid TokenizerConfig: " + "; ".join(problems))

    @cached_property
    def time_signatures(self) -> tuple[tuple[int, int], ...]:
        """Every n/d (d in 1,2,4,8,16) whose bar fits max_bar_quarters and the grid; ordered by d, n."""
        out = []
        for d in (1, 2, 4, 8, 16):
            for n in range(1, self.max_bar_quarters * d // 4 + 1):
                if (n * 4 * self.resolution) % d == 0:
                    out.append((n, d))
        return tuple(out)

    def bar_lengths(self) -> np.ndarray:
        """Bar length in grid steps of each time signature: int64 [n_time_signatures]."""
        return np.array([n * 4 * self.resolution // d for n, d in self.time_signatures], dtype=np.int64)

    def _tempo_ladder(self) -> tuple[float, int]:
        """(ratio, first exponent): the ladder is 120 * ratio**(k0 + i), i < tempo_bins.

        Geometric from about tempo_min to tempo_max, anchored so that 120 bpm (MIDI's default)
        is a ladder value and decodes exactly.
        """
        ratio = (self.tempo_max / self.tempo_min) ** (1.0 / (self.tempo_bins - 1))
        return ratio, int(round(np.log(self.tempo_min / 120.0) / np.log(ratio)))

    def tempo_values(self) -> np.ndarray:
        """The tempo ladder in bpm: float64 [tempo_bins]."""
        ratio, k0 = self._tempo_ladder()
        return 120.0 * ratio ** (k0 + np.arange(self.tempo_bins, dtype=np.float64))

    def tempo_index(self, bpm: np.ndarray) -> np.ndarray:
        """Nearest ladder bin (in log space) of each tempo; out-of-range tempos clip to the ends."""
        ratio, k0 = self._tempo_ladder()
        bpm = np.clip(np.asarray(bpm, dtype=np.float64), 1e-6, None)
        x = np.log(bpm / 120.0) / np.log(ratio) - k0
        return np.clip(np.rint(x), 0, self.tempo_bins - 1).astype(np.int64)

    def velocity_index(self, velocity: np.ndarray) -> np.ndarray:
        """Equal-width bin of each velocity (0 counts as 1)."""
        v = np.clip(np.asarray(velocity, dtype=np.int64), 1, 127)
        return (v - 1) * self.velocity_bins // 127

    def velocity_values(self) -> np.ndarray:
        """Decoded velocity of each bin: the middle integer of the bin, int64 [velocity_bins]."""
        v = np.arange(1, 128)
        idx = self.velocity_index(v)
        bins = np.arange(self.velocity_bins)
        lo = v[np.searchsorted(idx, bins, side="left")]
        hi = v[np.searchsorted(idx, bins, side="right") - 1]
        return (lo + hi) // 2

    def duration_values(self) -> np.ndarray:
        """Duration bins in grid steps, ascending: int64 [n_durations]."""
        r = self.resolution
        half = max(1, r // 2)
        top = self.max_duration_quarters * r
        vals = np.concatenate([np.arange(1, 4 * r + 1), np.arange(4 * r + half, 8 * r + 1, half),
                               np.arange(9 * r, top + 1, r)])
        return np.unique(vals[vals <= top]).astype(np.int64)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TokenizerConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown TokenizerConfig keys: {sorted(unknown)}")
        return cls(**d)

    @property
    def config_hash(self) -> str:
        """First 16 hex digits of sha256 over the canonical JSON of the config and the format version."""
        blob = json.dumps({"format_version": FORMAT_VERSION, **self.to_dict()}, sort_keys=True,
                          separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:16]
