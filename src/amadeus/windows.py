"""Training windows: how pieces are cut into windows of at most T+1 rows, and windows packed into batch rows.

A piece of N rows is one window when it fits (N <= T+1), else ceil(N / T) windows of T+1 rows (the first
at its SOS row, the last ending at its EOS row, the others at random rows between). Without packing every
batch row holds one window, zero-padded to T+1 rows; in a corpus of short pieces most rows are then
padding (the folk tunes average about 95 notes: 9 rows in 10 of a 1,025-row window). Packing lays several
windows end to end in one row of T+1 (`pack_rows` plans which, `assemble_row` builds the row): every
window keeps its own SOS / EOS, and `segments` numbers the windows of a row (1, 2, ...; 0 = padding) so
that attention, positions and the MLSDES pooling never cross from one piece to the next
(`amadeus.model.transformer.segment_mask`). A window's loss and gradients in a packed row are those of
the window alone.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

OPEN_ROWS = 64  # rows the packer keeps open at once: windows land within this many rows of their plan place


def window_starts(n_rows: int, max_notes: int, rng: np.random.Generator | None) -> np.ndarray:
    """First rows of the training windows (T+1 rows each) of a piece of n_rows rows.

    One window when the piece fits; else ceil(n_rows / T) windows: the first at row 0 (SOS), the
    last ending at the final row (EOS), the rest at distinct random rows between them (rng None:
    evenly spaced).
    """
    length = max_notes + 1
    if n_rows <= length:
        return np.zeros(1, np.int64)
    k = math.ceil(n_rows / max_notes)
    last = n_rows - length
    if rng is None:
        return np.rint(np.linspace(0, last, k)).astype(np.int64)
    pool = last - 1  # rows 1 .. last-1: distinct from each other and from the two ends
    middle = 1 + rng.choice(pool, size=k - 2, replace=pool < k - 2) if k > 2 else np.zeros(0, np.int64)
    return np.concatenate([[0], np.sort(middle), [last]]).astype(np.int64)


def eval_starts(n_rows: int, max_notes: int) -> np.ndarray:
    """Deterministic windows for evaluation: consecutive, overlapping by one row, the last padded."""
    return np.arange(0, max(n_rows - 1, 1), max_notes, dtype=np.int64)


def n_windows(n_rows: np.ndarray, max_notes: int) -> np.ndarray:
    """Training windows per piece (what `window_starts` cuts): 1 when it fits, else ceil(N / T)."""
    n_rows = np.asarray(n_rows, np.int64)
    return np.where(n_rows <= max_notes + 1, 1, -(-n_rows // max_notes))


def window_lengths(n_rows: np.ndarray, max_notes: int) -> np.ndarray:
    """Rows of every training window of pieces of n_rows rows, piece after piece: int64 [sum n_windows].
    A piece that fits is one window of its own length; the windows of a longer piece are all T+1 long."""
    n_rows = np.asarray(n_rows, np.int64)
    counts = n_windows(n_rows, max_notes)
    return np.where(np.repeat(n_rows, counts) <= max_notes + 1, np.repeat(n_rows, counts), max_notes + 1)


def cut_window(tokens: np.ndarray, start: int, max_notes: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows [start, start+T+1) of a [N, K] piece, zero-padded: (notes [T+1, K] int64, mask [T+1] bool)."""
    length = max_notes + 1
    piece = tokens[start:start + length]
    notes = np.zeros((length, tokens.shape[1]), np.int64)
    notes[: len(piece)] = piece
    mask = np.zeros(length, bool)
    mask[: len(piece)] = True
    return notes, mask


def pack_rows(lengths: np.ndarray, capacity: int, pack: bool = True, open_rows: int = OPEN_ROWS) -> list[np.ndarray]:
    """Which windows go in which batch row: window indices per row, rows in the order they were opened.

    Without `pack` every window is its own row. With it, windows are taken in order and each goes to the
    first of the last `open_rows` rows with room for it (first fit), else opens a row; a row that falls out
    of that window of open rows is closed. Deterministic, and a row's windows come from nearby places of
    the plan (so a stream reads only the row groups near its share).
    """
    lengths = np.asarray(lengths, np.int64)
    if not pack:
        return [np.array([i]) for i in range(len(lengths))]
    if len(lengths) and lengths.max() > capacity:
        raise ValueError(f"a window of {int(lengths.max())} rows does not fit a row of {capacity}")
    rows: list[list[int]] = []
    room = np.zeros(0, np.int64)  # free rows of the open ones (the last len(room) rows)
    for i, n in enumerate(lengths.tolist()):
        fits = np.flatnonzero(room >= n)
        if len(fits):
            j = int(fits[0])
            room[j] -= n
            rows[len(rows) - len(room) + j].append(i)
        else:
            rows.append([i])
            room = np.append(room, capacity - n)[-open_rows:]
    return [np.asarray(r, np.int64) for r in rows]


def assemble_row(parts: list[np.ndarray], length: int, K: int) -> tuple[np.ndarray, np.ndarray]:
    """Windows [n_i, K] laid end to end in one row: (notes [length, K] int64 zero-padded, segments [length]
    int64: 1 for the first window's rows, 2 for the second's, ..., 0 for padding)."""
    notes = np.zeros((length, K), np.int64)
    segments = np.zeros(length, np.int64)
    at = 0
    for s, part in enumerate(parts, start=1):
        notes[at: at + len(part)] = part
        segments[at: at + len(part)] = s
        at += len(part)
    if at > length:
        raise ValueError(f"windows of {at} rows do not fit a row of {length}")
    return notes, segments


def collate_windows(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Row dicts -> a batch: notes [B, T+1, K], mask [B, T+1] (True = a real row), segments [B, T+1]
    (which window of its row each row belongs to, 0 = padding), caption (of the row's first window),
    window (each row's window tags, joined by "+"), worker, epoch, split."""
    notes = torch.from_numpy(np.stack([it["notes"] for it in items]))
    if "segments" in items[0]:
        segments = torch.from_numpy(np.stack([it["segments"] for it in items]))
    else:
        segments = torch.from_numpy(np.stack([it["mask"] for it in items])).long()
    return {
        "notes": notes,  # [B, T+1, K]
        "mask": segments > 0,  # [B, T+1]
        "segments": segments,  # [B, T+1]
        "caption": [it["caption"] for it in items],
        "window": [it["window"] for it in items],
        "worker": items[0]["worker"],
        "epoch": items[0]["epoch"],
        "split": items[0]["split"],
    }


def fill(batch: dict[str, Any]) -> float:
    """Share of a batch's rows that are real rows (not padding)."""
    return float(batch["mask"].float().mean())
