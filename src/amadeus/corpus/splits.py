"""Train / validation / test splits by content, the same for every corpus: a tune held out in one corpus is
held out in all, and its near-duplicates (the same tune in another key, tempo, instrument, file, collection
or corpus) are held out with it.

A piece's split is a pure function of its *melody key*, never of the file, the corpus or the other pieces:

- the top line: the highest pitched (non-drum) note starting at each onset;
- its pitch intervals in semitones with repeated notes collapsed (zero intervals dropped), so that a tune
  keeps its key in any transposition and a tie, a repeated note or a split note does not change it;
- the first SPLIT_INTERVALS (12, about three bars of a folk tune) of them, hashed (`melody_key`): two pieces
  whose first 24 intervals agree (the twin test of benchmarks/splits.py, TWIN_INTERVALS) agree on the first
  12 too, so twins are never split, and a variant that departs from its tune after the 12th interval is
  grouped with it. On the folk corpus 12 intervals put 2,843 of 12,945 tunes in groups of 2 to 9 (24
  intervals: 1,733; 8 intervals: 5,175, in groups of up to 28, many of them only a shared scale or arpeggio
  opening); on the chorales 26 of 409, in groups of 2 or 3;
- a piece with fewer than MIN_INTERVALS (4) intervals (a drum track, a drone) is keyed by its whole note
  content instead (`content_key`: onsets, durations and pitches relative to the lowest).

`split_for_key` maps a key to a split by a hash threshold (5 % validation, 5 % test by default); the
fractions are the only parameters, so the Bach corpus, the folk corpus, the music21 corpus and
`amadeus preprocess` on any MIDI folder agree piece by piece. Why no per-style minimum of test pieces (as
before): a rule that looks at the other pieces of a style depends on which pieces the corpus holds, so the
same chorale could be held out in one corpus and trained on in another.

`moved_pieces` compares a build's splits with the previous build's (its captions.jsonl, else its shards),
so that a rebuilt corpus says how many pieces changed split.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from amadeus.shards import SPLITS

SPLIT_VERSION = 2  # bump when the split rule changes: corpora record it in their stamps and are re-split
SPLIT_INTERVALS = 12  # melody intervals in the split key
TWIN_INTERVALS = 24  # melody intervals that make two pieces twins (benchmarks/splits.py)
MIN_INTERVALS = 4  # fewer: the piece is keyed by its whole content
VAL_FRACTION = 0.05
TEST_FRACTION = 0.05


def top_line_intervals(onsets: np.ndarray, pitches: np.ndarray) -> np.ndarray:
    """Intervals (semitones, repeats collapsed) of the highest pitch at each distinct onset: int64 [M].
    `onsets` and `pitches` are the pitched notes of a piece, in any order."""
    onsets, pitches = np.asarray(onsets), np.asarray(pitches, dtype=np.int64)
    if not len(onsets):
        return np.zeros(0, np.int64)
    order = np.lexsort((pitches, onsets))
    on, p = onsets[order], pitches[order]
    top = p[np.append(on[1:] != on[:-1], True)]  # sorted by (onset, pitch): the last of an onset is the highest
    steps = np.diff(top)
    return steps[steps != 0].astype(np.int64)


def score_intervals(score) -> np.ndarray:
    """The top-line intervals of a symusic Score (drum tracks left out)."""
    from amadeus.tokenizer import DRUM_INSTRUMENT, note_table

    t = note_table(score)
    pitched = t["instrument"] != DRUM_INSTRUMENT
    return top_line_intervals(t["time"][pitched], t["pitch"][pitched])


def token_intervals(tokens: np.ndarray) -> np.ndarray:
    """The top-line intervals of a token matrix [N, K] (docs/interfaces.md), read from its rows: a note
    row that is not SAME_ONSET starts an onset; drum rows are left out."""
    from amadeus.grammar import (COL_INSTRUMENT, COL_METRIC, COL_PITCH, DRUM_INSTRUMENT, METRIC_SAME_ONSET,
                                 cut_at_eos, note_rows)

    tok = cut_at_eos(np.asarray(tokens))
    rows = note_rows(tok)
    onset = np.cumsum(rows & (tok[:, COL_METRIC] != METRIC_SAME_ONSET))  # [N] onset number of each row
    keep = rows & (tok[:, COL_INSTRUMENT] != DRUM_INSTRUMENT)
    return top_line_intervals(onset[keep], tok[keep, COL_PITCH])


def content_key(score) -> str:
    """Hash of the note content (onsets and durations in quarters, pitches relative to the lowest),
    the same for a tune in any key, tempo, instrument or tick resolution; "" without notes."""
    from amadeus.tokenizer import note_table

    t = note_table(score)
    if not len(t["time"]):
        return ""
    tpq = score.ticks_per_quarter
    start = int(t["time"].min())
    rows = np.stack([(t["time"] - start) * 96 // tpq, t["duration"] * 96 // tpq, t["pitch"] - t["pitch"].min()], 1)
    rows = rows[np.lexsort((rows[:, 2], rows[:, 0]))]
    return hashlib.sha1(np.ascontiguousarray(rows, dtype=np.int64).tobytes()).hexdigest()[:16]


def interval_key(intervals: np.ndarray, n: int = SPLIT_INTERVALS) -> str:
    """Hash of the first `n` intervals ("" when there are fewer than MIN_INTERVALS)."""
    head = np.asarray(intervals, dtype=np.int64)[:n]
    if len(head) < MIN_INTERVALS:
        return ""
    return "m" + hashlib.sha1(head.tobytes()).hexdigest()[:15]


def melody_key(score) -> str:
    """The key a piece is split by: its melody (first SPLIT_INTERVALS top-line intervals), else its whole
    content; "" for a piece without notes."""
    return interval_key(score_intervals(score)) or content_key(score)


def unit(key: str) -> float:
    """A key's position in [0, 1) (sha1)."""
    return int(hashlib.sha1(key.encode()).hexdigest()[:15], 16) / 16 ** 15


def split_for_key(key: str, val_fraction: float = VAL_FRACTION, test_fraction: float = TEST_FRACTION) -> str:
    """train / validation / test of a melody key: validation below `val_fraction`, test below their sum."""
    u = unit(key)
    return "validation" if u < val_fraction else "test" if u < val_fraction + test_fraction else "train"


def assign_splits(records: Sequence[Mapping[str, Any]], val_fraction: float = VAL_FRACTION,
                  test_fraction: float = TEST_FRACTION) -> dict[str, str]:
    """{location: split} of corpus records ({"location", "melody_key"}; a record without a key is split by
    its location): each by `split_for_key` of its key, so equal keys share a split in every corpus."""
    return {r["location"]: split_for_key(r.get("melody_key") or r["location"], val_fraction, test_fraction)
            for r in records}


# ----------------------------------------------------------------------------------------------
# what a rebuild moved


def previous_splits(captions: str | Path, shards_root: str | Path | None = None) -> dict[str, str]:
    """{location: split} of the previous build: the `split` fields of its captions.jsonl, else (older
    builds kept splits in the shards only) the `source` and `split` columns of SHARDS_ROOT's shards;
    {} when there was no previous build."""
    out: dict[str, str] = {}
    path = Path(captions)
    if path.is_file():
        for line in path.read_text().splitlines():
            if line.strip():
                r = json.loads(line)
                if r.get("split") in SPLITS and r.get("location"):
                    out[r["location"]] = r["split"]
    if out or shards_root is None or not (Path(shards_root) / "manifest.json").is_file():
        return out
    from amadeus.shards import load_manifest, read_shard

    try:
        manifest = load_manifest(shards_root)
        for shard in manifest["shards"]:
            table = read_shard(str(Path(shards_root) / shard["file"]), ["source", "split"])
            out.update(zip(table.column("source").to_pylist(), table.column("split").to_pylist()))
    except (OSError, ValueError, KeyError):
        return {}
    return out


def moved_pieces(previous: Mapping[str, str], current: Mapping[str, str]) -> dict[str, Any]:
    """How the splits changed between two builds: {"compared" (pieces in both), "moved", "moves"
    {"train->test": n, ...}}; pieces are matched by location (else by file name)."""
    by_name = {Path(k).name: v for k, v in previous.items()}
    moves: dict[str, int] = {}
    compared = 0
    for loc, split in current.items():
        before = previous.get(loc, by_name.get(Path(loc).name))
        if before is None:
            continue
        compared += 1
        if before != split:
            moves[f"{before}->{split}"] = moves.get(f"{before}->{split}", 0) + 1
    return {"compared": compared, "moved": sum(moves.values()), "moves": dict(sorted(moves.items()))}


def moved_text(moved: Mapping[str, Any] | None, cached: bool = False) -> str:
    """One line for a build report: how many pieces moved split against the build before; `cached`: the
    corpus came from the cache, so the line repeats what its build found."""
    if not moved or not moved.get("compared"):
        return "splits: first build (nothing to compare with)" + (" (cached)" if cached else "")
    detail = ", ".join(f"{k} {v}" for k, v in moved["moves"].items())
    when = "when this cached corpus was built" if cached else "since the previous build"
    return (f"splits: {moved['moved']} of {moved['compared']} pieces moved split {when}"
            + (f" ({detail})" if detail else ""))
