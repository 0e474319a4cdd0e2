"""Train / validation / test splits of the embedded corpora: pieces with the same content share a split.

`content_key` fingerprints a piece's notes independently of key, tempo, instrument and tick resolution;
`assign_splits` gives every group of equal keys one split by a hash of the key, then moves whole training
groups to the test split until every style has its minimum share there.
"""
from __future__ import annotations

import hashlib
import math
from typing import Any, Mapping, Sequence

TEST_MIN_SHARE = 0.03  # every style keeps at least this share of its pieces in the test split


def content_key(score) -> str:
    """Hash of the note content (onsets and durations in quarters, pitches relative to the lowest),
    the same for a tune in any key, tempo, instrument or tick resolution."""
    import numpy as np

    from amadeus.tokenizer import note_table

    t = note_table(score)
    if not len(t["time"]):
        return ""
    tpq = score.ticks_per_quarter
    start = int(t["time"].min())
    rows = np.stack([(t["time"] - start) * 96 // tpq, t["duration"] * 96 // tpq, t["pitch"] - t["pitch"].min()], 1)
    rows = rows[np.lexsort((rows[:, 2], rows[:, 0]))]
    return hashlib.sha1(np.ascontiguousarray(rows, dtype=np.int64).tobytes()).hexdigest()[:16]



def _unit(key: str) -> float:
    return int(hashlib.sha1(key.encode()).hexdigest()[:15], 16) / 16 ** 15


def assign_splits(records: Sequence[Mapping[str, Any]], val_fraction: float = 0.05, test_fraction: float = 0.05,
                  test_min_share: float = TEST_MIN_SHARE) -> dict[str, str]:
    """{location: split}: pieces with the same content key form one group with one split (by a hash of
    the key); then, style by style, whole training groups move to the test split (in hash order) until
    the style has at least ceil(test_min_share * its pieces) test pieces."""
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for r in records:
        groups.setdefault(r.get("content_key") or r["location"], []).append(r)
    split: dict[str, str] = {}
    for key, members in groups.items():
        u = _unit(key)
        split[key] = "validation" if u < val_fraction else "test" if u < val_fraction + test_fraction else "train"
    by_style: dict[str, list[str]] = {}
    for key, members in groups.items():
        for r in members:
            by_style.setdefault(r["style"], []).append(key)
    for style in sorted(by_style):
        keys = by_style[style]
        need = math.ceil(test_min_share * len(keys))
        have = sum(split[k] == "test" for k in keys)
        for key in sorted({k for k in keys if split[k] == "train"}, key=_unit):
            if have >= need:
                break
            split[key] = "test"
            have += sum(r["style"] == style for r in groups[key])
    return {r["location"]: split[key] for key, members in groups.items() for r in members}
