"""MusicDataModule: tokenized Parquet shards -> batches of note windows, streamed and DDP-sharded.

Training streams the `train` split row group by row group (local folders or any fsspec URL, read with
pyarrow). An epoch's plan orders the row groups by a seeded shuffle, cuts every piece into windows
(`amadeus.windows`: one when it fits, else ceil(N / T) of T+1 rows) and packs the windows into batch
rows (several pieces per row, each with its SOS / EOS, so that rows hold music instead of padding; or
one per row). The plan's rows are split into equal consecutive shares, one per (rank, DataLoader
worker), so every stream serves each of its rows exactly once per epoch and reads only the row groups
its share touches (`TrainWindows`). Each stream shuffles its rows in a buffer and transposes every
window by a random number of semitones (never drums; the caption's key and chords move with the
notes). Memory does not grow with the corpus: the row groups being read and the buffer are held.

An epoch is a fixed number of full batches, the same on every rank and worker (the plan's last rows
wait for another epoch; the shuffled order changes which), so DDP ranks never wait for each other at
the end of an epoch. The stream of each (rank, worker) is a pure function of (seed, epoch, rank,
worker), so `state_dict()` records how many rows each worker has served in the current epoch (and the
settings the streams were planned with: a resume with others is refused, `STREAM_SETTINGS`), and a
resumed run regenerates its streams and skips exactly those rows.

Validation and test use the `validation` / `test` splits: the first `val_windows` windows, cut
consecutively from each piece in shard order (no shuffle, no transposition), packed like the training
rows, held in memory.

Batches (docs/interfaces.md "Batches"): notes LongTensor [B, T+1, K], mask BoolTensor [B, T+1]
(False = padding row, all zeros), segments LongTensor [B, T+1] (the window of its row each row belongs
to, 1..n; 0 = padding), caption list[str]; plus bookkeeping: window list[str] (each row's
"<piece id>:<first row>" tags joined by "+"), worker int, epoch int, split str.
"""
from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator

import lightning as L
import numpy as np
from torch.utils.data import DataLoader

from amadeus.errors import RunSetupError
from amadeus.shards import load_manifest, read_shard
from amadeus.streams import EvalWindows, TrainWindows  # noqa: F401 (EvalWindows: part of this module's API)
from amadeus.tokenizer import NoteTokenizer, TokenizerConfig
from amadeus.windows import collate_windows, n_windows

STAGES = ("pretrain", "finetune")
# what fixes the training stream besides the epoch; a resume compares them (MusicDataModule.load_state_dict)
STREAM_SETTINGS = ("stage", "max_notes", "pack", "transpose", "shuffle_buffer", "seed", "train_files",
                   "num_workers", "batch_size", "world_size")
_MISSING = object()


def _round_robin(batches: Iterator[dict[str, Any]], workers: int, start: int) -> Iterator[dict[str, Any]]:
    """The batches of `workers` DataLoader workers (which take turns from worker 0) in turns from worker
    `start`: where an interrupted epoch stood, so that a resumed run sees the batches in the order the
    uninterrupted run saw them. Holds at most one batch per worker."""
    if start == 0 or workers == 1:
        yield from batches
        return
    held: dict[int, list[dict[str, Any]]] = {w: [] for w in range(workers)}
    turn = start
    for batch in batches:
        held[int(batch["worker"])].append(batch)
        while held[turn]:
            yield held[turn].pop(0)
            turn = (turn + 1) % workers
    for w in [*range(turn, workers), *range(turn)]:  # a stream that ended early: the rest in turn order
        yield from held[w]


class _EpochLoader(DataLoader):
    """The training DataLoader: `n_batches` per epoch (every worker serves its equal share).

    `state_dict` / `load_state_dict` make Lightning treat it as resumable; the state itself lives
    in (and is restored through) MusicDataModule.
    """

    def __init__(self, dm: MusicDataModule, dataset: TrainWindows, n_batches: int, **kwargs: Any) -> None:
        super().__init__(dataset, **kwargs)
        self._dm, self._n = dm, n_batches

    def __len__(self) -> int:
        return self._n

    def __iter__(self) -> Iterator[dict[str, Any]]:
        dm = self._dm
        epoch = dm._current_epoch()
        if dm._epoch != epoch:
            dm._epoch, dm._served = epoch, {}
        self.dataset.epoch = epoch
        self.dataset.skip = dict(dm._served)
        workers = max(1, self.num_workers)
        served = sum(-(-n // self.batch_size) for n in dm._served.values())  # batches, all workers
        for batch in _round_robin(super().__iter__(), workers, served % workers):
            if not dm._trainer_attached():
                dm._count(batch)
            yield batch

    def state_dict(self) -> dict[str, Any]:
        return {"restored_by": "MusicDataModule.load_state_dict"}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


# ----------------------------------------------------------------------------------------------
# the DataModule


class MusicDataModule(L.LightningDataModule):
    """Batches of note windows from tokenized shards (amadeus.shards), streamed.

    Args:
        data_dir: shard folder(s) with a manifest.json (local paths or fsspec URLs); None = an
            embedded corpus (`corpus`), built and cached on first use (amadeus.corpus).
        stage: "pretrain" (every piece) or "finetune" (only pieces with a non-empty caption).
        max_notes: window length T; batches carry T+1 rows (model input rows[:-1], target rows[1:]).
        batch_size: batch rows per batch (per rank).
        pack: lay several windows end to end in one batch row (each keeps its SOS / EOS; `segments` keeps
            attention, positions and MLSDES within a piece: `amadeus.windows`), so that rows hold music,
            not padding; False: one window per row, zero-padded. Validation and test pack the same way. A
            text model reads one caption per row: text fine-tuning runs with pack False.
        num_workers: DataLoader worker processes for training (0 = in the main process).
        shuffle_buffer: pieces held by the streaming shuffle (and windows by the window shuffle).
        transpose: (low, high) semitones, both included, drawn per training window; None = off.
            Drums never move; a shift that would push a pitch out of 0..127 is skipped.
        seed: seed of shuffles, crops and transpositions.
        val_windows: number of (deterministic) windows used for validation and for test.
        tokenizer_hash: expected tokenizer hash; a manifest with another one is an error.
        corpus: the embedded corpus read when data_dir is None (a data_dir wins, so that a config
            naming a corpus still takes --data.data_dir): a name of `amadeus.corpus.CORPORA`, "bach" (the
            default), "folk" or "music21".
        fim_rate, accompaniment_rate: the share of training windows reordered to write a span of bars from
            both sides (fill-in-the-middle) or some parts around the others (`amadeus.infill`); validation
            and test stay left to right.
        replan: resuming with other stream settings than the checkpoint's (`STREAM_SETTINGS`) is an error,
            because the interrupted epoch would serve some windows twice and others never; True restarts
            that epoch's stream under the new settings (and says so).
    """

    def __init__(self, data_dir: str | list[str] | None = None, stage: str = "pretrain", max_notes: int = 256,
                 batch_size: int = 16, num_workers: int = 2, shuffle_buffer: int = 256,
                 transpose: tuple[int, int] | None = (-5, 6), seed: int = 0, val_windows: int = 256,
                 tokenizer_hash: str | None = None, corpus: str | None = None, pack: bool = True,
                 fim_rate: float = 0.0, accompaniment_rate: float = 0.0, replan: bool = False) -> None:
        super().__init__()
        from amadeus.corpus import CORPORA

        if corpus is not None and corpus not in CORPORA:
            raise ValueError(f"corpus must be one of {', '.join(CORPORA)}, got {corpus!r}")
        if stage not in STAGES:
            raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
        if max_notes < 1 or batch_size < 1 or num_workers < 0 or val_windows < 0:
            raise ValueError("need max_notes >= 1, batch_size >= 1, num_workers >= 0, val_windows >= 0")
        if transpose is not None:
            transpose = (int(transpose[0]), int(transpose[1]))
            if transpose[0] > transpose[1]:
                raise ValueError(f"transpose range {transpose} is empty (low > high)")
        self.data_dir, self.corpus = data_dir, corpus
        self.stage, self.max_notes, self.batch_size, self.num_workers = stage, max_notes, batch_size, num_workers
        self.shuffle_buffer, self.transpose, self.seed = shuffle_buffer, transpose, seed
        self.val_windows, self.tokenizer_hash = val_windows, tokenizer_hash
        if not (0 <= fim_rate and 0 <= accompaniment_rate and fim_rate + accompaniment_rate <= 1):
            raise ValueError(f"need fim_rate, accompaniment_rate >= 0 summing to at most 1, got {fim_rate}, "
                             f"{accompaniment_rate}")
        self.pack, self.replan = pack, replan
        self.fim_rate, self.accompaniment_rate = fim_rate, accompaniment_rate
        self._manifests: list[tuple[str, dict[str, Any]]] | None = None
        self._tokenizer: NoteTokenizer | None = None
        self._train_windows: int | None = None
        self._train_groups: list[tuple[int, int, np.ndarray]] | None = None
        self._eval: dict[str, EvalWindows] = {}
        self._epoch = 0  # epoch of the training stream in progress
        self._served: dict[int, int] = {}  # windows served per worker in that epoch
        self._iterations = 0  # loader passes, the epoch counter when no Trainer drives us

    # -- sources -------------------------------------------------------------------------------

    def _dirs(self) -> list[str]:
        if self.data_dir is None:
            shards, ensure = self._embedded()
            if not (shards / "manifest.json").is_file():  # first use outside Lightning's prepare_data
                shards = ensure()
            return [str(shards)]
        dirs = [self.data_dir] if isinstance(self.data_dir, (str, os.PathLike)) else list(self.data_dir)
        if not dirs:
            raise ValueError("data_dir is an empty list")
        return [str(d).rstrip("/") for d in dirs]

    def prepare_data(self) -> None:
        """Build the embedded corpus once (Lightning calls this on one process per node)."""
        if self.data_dir is None:
            self._embedded()[1]()

    def _embedded(self) -> tuple[Path, Callable[[], Path]]:
        """(default shard folder, function that builds it when missing) of the embedded corpus."""
        from amadeus.corpus import CORPORA

        corpus = CORPORA[self.corpus or "bach"]
        return corpus.shards_dir(), corpus.ensure_shards

    @property
    def manifests(self) -> list[tuple[str, dict[str, Any]]]:
        """(folder, manifest) of every data_dir, checked against each other and tokenizer_hash."""
        if self._manifests is None:
            found = [(d, load_manifest(d)) for d in self._dirs()]
            hashes = {m["tokenizer_hash"] for _, m in found}
            if len(hashes) > 1:
                listing = ", ".join(f"{d}: {m['tokenizer_hash']}" for d, m in found)
                raise ValueError(f"shard folders were tokenized with different tokenizers ({listing})")
            have = hashes.pop()
            if self.tokenizer_hash is not None and self.tokenizer_hash != have:
                raise ValueError(f"tokenizer hash mismatch: expected {self.tokenizer_hash} (tokenizer_hash), "
                                 f"but the shards in {found[0][0]} have {have}")
            self._manifests = found
        return self._manifests

    @property
    def tokenizer(self) -> NoteTokenizer:
        """The NoteTokenizer the shards were made with (vocab sizes for the model)."""
        if self._tokenizer is None:
            d, manifest = self.manifests[0]
            cfg = manifest["tokenizer"]
            tok = NoteTokenizer.from_dict(cfg) if "config" in cfg else NoteTokenizer(TokenizerConfig.from_dict(cfg))
            if tok.config_hash != manifest["tokenizer_hash"]:
                raise ValueError(f"{d}/manifest.json: tokenizer config hashes to {tok.config_hash}, "
                                 f"manifest says {manifest['tokenizer_hash']} (made by another amadeus version?)")
            self._tokenizer = tok
        return self._tokenizer

    def files(self, split: str, required: bool = True) -> list[str]:
        """Shard files holding pieces of `split` (an error when there are none and they are required)."""
        files = [f"{d}/{s['file']}" for d, m in self.manifests for s in m["shards"]
                 if s.get("splits", {}).get(split, 1) > 0]
        if not files and required:
            raise ValueError(f"no pieces in the {split!r} split of {[d for d, _ in self.manifests]}")
        return files

    def count_train_windows(self) -> int:
        """Training windows per epoch (sum of ceil(N / T) over train pieces), from the n_rows column."""
        if self._train_windows is None:
            total = 0
            for f in self.files("train"):
                t = read_shard(f, ["n_rows"], split="train", captioned=self.stage == "finetune")
                total += int(n_windows(t["n_rows"].to_numpy(), self.max_notes).sum())
            self._train_windows = total
        return self._train_windows

    def count_train_rows(self, epochs: int = 4) -> int:
        """Batch rows per epoch: the windows, or with `pack` the fewest rows the plans of the first `epochs`
        epochs pack them into (packing varies a little with each epoch's order; see `train_dataloader`)."""
        if not self.pack:
            return self.count_train_windows()
        stream = self.train_windows(rank=0, world_size=1)
        return min(len(stream.plan(e).rows) for e in range(epochs))

    def _train_fingerprint(self) -> str:
        """The training data a stream is planned from: every train shard's name and split counts."""
        items = sorted((s["file"], s.get("splits", {})) for _, m in self.manifests for s in m["shards"]
                       if s.get("splits", {}).get("train", 1) > 0)
        return hashlib.sha1(json.dumps(items, sort_keys=True).encode()).hexdigest()[:16]

    # -- distribution --------------------------------------------------------------------------

    def _trainer_attached(self) -> bool:
        return getattr(self, "trainer", None) is not None

    def _rank_world(self) -> tuple[int, int]:
        if self._trainer_attached():
            return int(self.trainer.global_rank), int(self.trainer.world_size)
        return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))

    def _current_epoch(self) -> int:
        if self._trainer_attached():
            return int(self.trainer.current_epoch)
        epoch = self._iterations
        self._iterations += 1
        return epoch

    # -- loaders -------------------------------------------------------------------------------

    def setup(self, stage: str | None = None) -> None:
        _ = self.tokenizer  # reads and checks the manifests early, with clear errors

    def train_windows(self, rank: int | None = None, world_size: int | None = None, epoch: int = 0,
                      limit: int | None = None, skip: dict[int, int] | None = None) -> TrainWindows:
        """The training row stream of one rank (one pass, or `limit` rows per worker)."""
        r, w = self._rank_world()
        windows = TrainWindows(self.files("train"), self.tokenizer, self.max_notes, stage=self.stage, seed=self.seed,
                               epoch=epoch, shuffle_buffer=self.shuffle_buffer, transpose=self.transpose,
                               rank=r if rank is None else rank, world_size=w if world_size is None else world_size,
                               skip=skip, limit=limit, groups=self._train_groups, pack=self.pack,
                               fim_rate=self.fim_rate, accompaniment_rate=self.accompaniment_rate)
        self._train_groups = windows.groups()  # the plan's metadata, read once and shipped to every worker
        return windows

    def train_dataloader(self) -> DataLoader:
        """An epoch: the same number of full batches on every rank and worker, each row served once. With
        `pack` it is planned on the fewest rows the first epochs pack into, less 1 %, so that every later
        epoch has rows enough; an epoch that had not would take its last rows from the next epoch's plan."""
        rank, world = self._rank_world()
        streams = max(1, self.num_workers)
        rows = self.count_train_rows()
        per_stream = int(rows * (0.99 if self.pack else 1.0)) // (world * streams * self.batch_size)  # batches
        if per_stream < 1:
            raise RunSetupError(f"{rows} training rows ({self.count_train_windows()} windows) cannot fill one "
                                f"batch on each of {world} ranks x {streams} workers x {self.batch_size} rows per "
                                f"batch (at least {world * streams * self.batch_size} rows): use fewer ranks, "
                                f"workers or a smaller data.batch_size, or more data")
        dataset = self.train_windows(rank, world, limit=per_stream * self.batch_size)
        return _EpochLoader(self, dataset, per_stream * streams, batch_size=self.batch_size,
                            num_workers=self.num_workers, collate_fn=collate_windows, persistent_workers=False)

    def _eval_loader(self, split: str) -> DataLoader:
        if split not in self._eval:
            self._eval[split] = EvalWindows(self.files(split, required=False), split, self.stage, self.tokenizer,
                                            self.max_notes, self.val_windows, pack=self.pack)
            if len(self._eval[split]) == 0:
                warnings.warn(f"the {split} split has no windows; {split} runs nothing", stacklevel=2)
        return DataLoader(self._eval[split], batch_size=self.batch_size, shuffle=False, num_workers=0,
                          collate_fn=collate_windows)

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader("validation")

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("test")

    # -- resumption ----------------------------------------------------------------------------

    def _count(self, batch: dict[str, Any]) -> None:
        if batch.get("split") == "train" and batch.get("epoch") == self._epoch:
            w = int(batch["worker"])
            self._served[w] = self._served.get(w, 0) + len(batch["caption"])

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        if isinstance(batch, dict) and self._trainer_attached() and self.trainer.training:
            self._count(batch)
        return batch

    def state_dict(self) -> dict[str, Any]:
        """Where the training stream stands: epoch and rows served per worker (valid on every rank), and
        the settings the stream was planned with (`STREAM_SETTINGS`)."""
        return {"epoch": self._epoch, "served": {str(k): v for k, v in self._served.items()},
                **self._stream_settings()}

    def _stream_settings(self) -> dict[str, Any]:
        """What fixes the per-worker streams besides the epoch: a resumed run must match them."""
        values = {"stage": self.stage, "max_notes": self.max_notes, "pack": self.pack,
                  "transpose": list(self.transpose) if self.transpose is not None else None,
                  "shuffle_buffer": self.shuffle_buffer, "seed": self.seed, "train_files": self._train_fingerprint(),
                  "num_workers": self.num_workers, "batch_size": self.batch_size, "world_size": self._rank_world()[1]}
        return {k: values[k] for k in STREAM_SETTINGS}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue the training stream where state_dict() left it. A stream setting that changed (or that
        a checkpoint of an older version did not record) is a RunSetupError naming it, unless `replan`:
        then the interrupted epoch's stream restarts from its beginning, with a warning that says so."""
        now = self._stream_settings()
        changed = [f"data.{k} ({'not recorded' if k not in state else repr(state[k])} -> {now[k]!r})"
                   for k in STREAM_SETTINGS if state.get(k, _MISSING) != now[k]]
        self._epoch = int(state.get("epoch", 0))
        self._iterations = self._epoch  # without a Trainer, the next pass continues this epoch
        self._served = {int(k): int(v) for k, v in state.get("served", {}).items()}
        if not changed:
            return
        if not self.replan:
            raise RunSetupError(f"resume: the training stream's settings differ from the checkpoint's: "
                                f"{', '.join(changed)}; epoch {self._epoch} would serve some windows twice and "
                                "others never. Resume with the checkpoint's settings, or pass --data.replan true "
                                "to restart that epoch's stream under the new ones")
        warnings.warn(f"resume with changed data settings ({', '.join(changed)}): data.replan restarts epoch "
                      f"{self._epoch}'s stream from its beginning (windows served before the interruption are "
                      "served again)", stacklevel=2)
        self._served = {}
