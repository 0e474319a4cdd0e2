"""The window streams behind MusicDataModule: training rows of one (rank, worker) (`TrainWindows`, planned
from the shards' metadata, packed, shuffled, transposed, some reordered for infilling and accompaniment)
and the deterministic evaluation rows of a split (`EvalWindows`). See `amadeus.datamodule`."""
from __future__ import annotations

from typing import Any, Iterator, NamedTuple

import numpy as np
from torch.utils.data import Dataset, IterableDataset, get_worker_info

from amadeus.captions import transpose_caption
from amadeus.infill import accompaniment_window, fim_window
from amadeus.tokenizer import DRUM_INSTRUMENT, NoteTokenizer
from amadeus.windows import assemble_row, eval_starts, n_windows, pack_rows, window_lengths, window_starts

COLUMNS = ["id", "tokens", "n_rows", "caption"]


def _filters(split: str, stage: str) -> list[tuple]:
    f = [("split", "==", split)]
    if stage == "finetune":
        f.append(("caption", "!=", ""))
    return f


def _stream_pieces(files: list[str], split: str, stage: str, storage_options: dict | None = None):
    """A Hugging Face streaming dataset of the pieces of one split (columns id, tokens, n_rows, caption)."""
    from datasets import load_dataset
    from datasets.utils.logging import disable_progress_bar

    disable_progress_bar()
    ds = load_dataset("parquet", data_files={split: files}, split=split, streaming=True,
                      filters=_filters(split, stage), columns=COLUMNS, storage_options=storage_options)
    return ds.with_format("numpy")


def _open_parquet(file: str, storage_options: dict | None):
    import fsspec
    import pyarrow.parquet as pq

    fs, path = fsspec.core.url_to_fs(file, **(storage_options or {}))
    return pq.ParquetFile(fs.open(path, "rb"))


def _keep(table, stage: str) -> np.ndarray:
    """Rows of a row group that are training pieces of this stage."""
    keep = np.asarray(table.column("split").to_pylist()) == "train"
    if stage == "finetune":
        keep &= np.asarray([bool(c) for c in table.column("caption").to_pylist()], bool)
    return keep


class _Plan(NamedTuple):
    """An epoch's plan: its windows in order (row group, piece within the group, window of the piece,
    rows) and the batch rows they are packed into (window indices per row)."""

    group: np.ndarray  # [W] index into TrainWindows.groups()
    piece: np.ndarray  # [W] the piece's place among the group's training pieces
    window: np.ndarray  # [W] which window of the piece
    rows: list[np.ndarray]  # window indices of each batch row


class TrainWindows(IterableDataset):
    """Training rows of one (rank, DataLoader worker): its share of an epoch's rows, each once.

    The epoch's plan: the row groups of the train shards in an order shuffled by (seed, epoch), their
    training pieces in shard order, each piece's windows (`amadeus.windows`; starts drawn from (seed,
    epoch, piece)) in order: W windows, packed into R batch rows (`pack_rows`: one window per row without
    `pack`). Of the S = world_size x workers streams, stream s serves rows [s * C, (s + 1) * C) of the
    plan, C = min(limit, R // S): every stream the same number, each of its rows exactly once, reading only
    the row groups its rows touch. The R - S * C rows past the last stream wait for another epoch (the
    shuffled order changes which). Within a stream, rows pass a shuffle buffer and every window is
    transposed by a generator of (seed, epoch, rank, worker), so the stream is a pure function of those
    numbers: `skip[worker]` rows are dropped from its start (resumption). With `limit` > R // S the stream
    runs on into its share of epoch e + 1, e + 2, ... until it has served `limit` rows; without `limit`,
    one epoch. `worker` / `num_workers` override the DataLoader's worker info (tests simulate workers
    in-process).
    """

    def __init__(self, files: list[str], tokenizer: NoteTokenizer, max_notes: int, stage: str = "pretrain",
                 seed: int = 0, epoch: int = 0, shuffle_buffer: int = 256, transpose: tuple[int, int] | None = None,
                 rank: int = 0, world_size: int = 1, skip: dict[int, int] | None = None,
                 limit: int | None = None, storage_options: dict | None = None,
                 worker: int | None = None, num_workers: int | None = None,
                 groups: list[tuple[int, int, np.ndarray]] | None = None, pack: bool = False,
                 fim_rate: float = 0.0, accompaniment_rate: float = 0.0) -> None:
        super().__init__()
        self.files, self.tokenizer, self.max_notes, self.stage = files, tokenizer, max_notes, stage
        self.seed, self.epoch, self.shuffle_buffer, self.transpose = seed, epoch, shuffle_buffer, transpose
        self.rank, self.world_size, self.skip, self.limit = rank, world_size, dict(skip or {}), limit
        self.storage_options, self.worker, self.num_workers = storage_options, worker, num_workers
        self.pack, self.fim_rate, self.accompaniment_rate = pack, fim_rate, accompaniment_rate
        self._groups = groups  # None: read on first use (MusicDataModule reads them once, for every worker)

    def groups(self) -> list[tuple[int, int, np.ndarray]]:
        """(file index, row group, rows of each training piece in it), read once."""
        if self._groups is None:
            columns = ["split", "n_rows"] + (["caption"] if self.stage == "finetune" else [])
            found = []
            for f, file in enumerate(self.files):
                pf = _open_parquet(file, self.storage_options)
                for g in range(pf.num_row_groups):
                    t = pf.read_row_group(g, columns=columns)
                    found.append((f, g, t.column("n_rows").to_numpy()[_keep(t, self.stage)].astype(np.int64)))
            self._groups = found
        return self._groups

    def plan(self, epoch: int) -> _Plan:
        """The windows of `epoch` in plan order and the rows they are packed into (from metadata only)."""
        groups = self.groups()
        order = np.random.default_rng([self.seed, epoch]).permutation(len(groups))
        parts = [(g, n_windows(groups[g][2], self.max_notes)) for g in order.tolist()]
        counts = np.concatenate([c for _, c in parts]) if parts else np.zeros(0, np.int64)
        group = np.concatenate([np.repeat(g, c.sum()) for g, c in parts]) if parts else np.zeros(0, np.int64)
        piece = np.concatenate([np.repeat(np.arange(len(c)), c) for _, c in parts]) if parts else group
        first = np.repeat(np.cumsum(counts) - counts, counts)
        window = np.arange(len(group)) - first
        n_rows = np.concatenate([groups[g][2] for g, _ in parts]) if parts else group
        lengths = window_lengths(n_rows, self.max_notes)
        return _Plan(group, piece, window, pack_rows(lengths, self.max_notes + 1, self.pack))

    def _stream(self) -> tuple[int, int]:
        """(this stream's index s, number of streams S)."""
        info = get_worker_info()
        worker = self.worker if self.worker is not None else (info.id if info is not None else 0)
        workers = self.num_workers if self.num_workers is not None else (info.num_workers if info is not None else 1)
        return self.rank * workers + worker, self.world_size * workers

    def share(self, epoch: int) -> Iterator[list[tuple[str, str, np.ndarray, int]]]:
        """This stream's rows of `epoch`, as they complete: each a list of windows (piece id, caption,
        tokens [N, K], start)."""
        s, S = self._stream()
        plan = self.plan(epoch)
        size = len(plan.rows) // S if self.limit is None else min(self.limit, len(plan.rows) // S)
        if size == 0:
            return
        mine = plan.rows[s * size:(s + 1) * size]
        row_of = {int(w): r for r, ws in enumerate(mine) for w in ws}  # window -> row of this share
        got: dict[int, list] = {}
        wanted = np.fromiter(row_of, np.int64, len(row_of))
        groups = self.groups()
        for g in np.unique(plan.group[wanted]).tolist() if len(wanted) else []:
            needed = wanted[plan.group[wanted] == g]
            f, rg, _ = groups[g]
            for w, item in zip(needed.tolist(), self._windows(f, rg, plan.piece[needed], plan.window[needed], epoch)):
                r = row_of[w]
                got.setdefault(r, []).append((w, item))
                if len(got[r]) == len(mine[r]):
                    yield [item for _, item in sorted(got.pop(r), key=lambda x: x[0])]

    def _windows(self, f: int, g: int, pieces: np.ndarray, windows: np.ndarray,
                 epoch: int) -> Iterator[tuple[str, str, np.ndarray, int]]:
        """The windows (piece, window number) of row group g of file f, read once."""
        t = _open_parquet(self.files[f], self.storage_options).read_row_group(g, columns=COLUMNS + ["split"])
        rows = np.flatnonzero(_keep(t, self.stage))
        K = self.tokenizer.K
        for j, w in zip(pieces.tolist(), windows.tolist()):
            row = int(rows[j])
            n = int(t.column("n_rows")[row].as_py())
            tokens = np.asarray(t.column("tokens")[row].values, dtype=np.int64).reshape(n, K)
            start = window_starts(n, self.max_notes, np.random.default_rng([self.seed, epoch, f, g, row]))[w]
            yield str(t.column("id")[row].as_py()), str(t.column("caption")[row].as_py()), tokens, int(start)

    def _reorder(self, part: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """A window, or with the chances `fim_rate` / `accompaniment_rate` the same window reordered to write
        a span from both sides or some parts around the others (`amadeus.infill`), of the same length."""
        if not (self.fim_rate or self.accompaniment_rate):
            return part
        draw, layout = rng.random(), (self.tokenizer.default_ts, len(self.tokenizer.config.time_signatures))
        if draw < self.fim_rate:
            return _or(fim_window(part, rng, *layout), part)
        if draw < self.fim_rate + self.accompaniment_rate:
            return _or(accompaniment_window(part, rng, *layout, DRUM_INSTRUMENT), part)
        return part

    def _row(self, windows: list[tuple[str, str, np.ndarray, int]], rng: np.random.Generator) -> dict[str, Any]:
        """One batch row from its windows, each transposed by its own draw (never drums; the caption's
        key and chords move with the notes)."""
        parts, captions, tags = [], [], []
        for piece, caption, tokens, start in windows:
            part = self._reorder(tokens[start:start + self.max_notes + 1], rng)
            if self.transpose is not None:
                shift = int(rng.integers(self.transpose[0], self.transpose[1] + 1))
                moved = self.tokenizer.transpose(part, shift) if shift else None
                if moved is not None:
                    part, caption = moved, transpose_caption(caption, shift)
            parts.append(part)
            captions.append(caption)
            tags.append(f"{piece}:{start}")
        notes, segments = assemble_row(parts, self.max_notes + 1, self.tokenizer.K)
        return {"notes": notes, "mask": segments > 0, "segments": segments, "caption": captions[0],
                "window": "+".join(tags), "split": "train"}

    def _pass(self, epoch: int, worker: int) -> Iterator[dict[str, Any]]:
        rng = np.random.default_rng([self.seed, epoch, self.rank, worker])
        buffer: list[dict[str, Any]] = []
        size = max(1, self.shuffle_buffer)
        for windows in self.share(epoch):
            buffer.append(self._row(windows, rng))
            if len(buffer) >= size:
                i = int(rng.integers(len(buffer)))
                buffer[i], buffer[-1] = buffer[-1], buffer[i]
                yield buffer.pop()
        rng.shuffle(buffer)
        yield from buffer

    def __iter__(self) -> Iterator[dict[str, Any]]:
        s, S = self._stream()
        worker = s - self.rank * (S // self.world_size)
        skip, limit = self.skip.get(worker, 0), self.limit
        index, epoch = 0, self.epoch
        while limit is None or index < limit:
            produced = 0
            for item in self._pass(epoch, worker):
                produced += 1
                if index >= skip:
                    item["worker"], item["epoch"] = worker, self.epoch
                    yield item
                index += 1
                if limit is not None and index >= limit:
                    return
            if limit is None or produced == 0:  # produced == 0: fewer rows than streams
                return
            epoch += 1


class EvalWindows(Dataset):
    """The first `limit` deterministic windows of a split, cut consecutively from each piece (no shuffle,
    no transposition), one per row or packed (`pack`) like the training rows."""

    def __init__(self, files: list[str], split: str, stage: str, tokenizer: NoteTokenizer, max_notes: int,
                 limit: int, storage_options: dict | None = None, pack: bool = False) -> None:
        self.items: list[dict[str, Any]] = []
        windows: list[tuple[np.ndarray, str, str]] = []  # (rows, caption, tag)
        K = tokenizer.K
        for piece in _stream_pieces(files, split, stage, storage_options) if limit > 0 and files else ():
            tokens = np.asarray(piece["tokens"], dtype=np.int64).reshape(-1, K)
            for start in eval_starts(len(tokens), max_notes).tolist():
                windows.append((tokens[start:start + max_notes + 1], str(piece["caption"]), f"{piece['id']}:{start}"))
                if len(windows) >= limit:
                    break
            if len(windows) >= limit:
                break
        for row in pack_rows(np.array([len(w[0]) for w in windows], np.int64), max_notes + 1, pack):
            notes, segments = assemble_row([windows[w][0] for w in row], max_notes + 1, K)
            self.items.append({"notes": notes, "mask": segments > 0, "segments": segments,
                               "caption": windows[row[0]][1], "window": "+".join(windows[w][2] for w in row),
                               "split": split, "worker": 0, "epoch": 0})

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.items[i]


def _or(reordered: np.ndarray | None, part: np.ndarray) -> np.ndarray:
    return part if reordered is None else reordered
