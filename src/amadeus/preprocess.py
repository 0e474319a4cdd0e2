"""MIDI files -> tokenized Parquet shards + manifest.json, in parallel worker processes, resumable.

SRC is a folder (searched recursively for .mid/.midi/.kar/.abc, any case), a glob, a .tar/.tar.gz/.tgz
archive, or a list file (one path per line). The sorted file list is cut into shards of `shard_size`
files; shard s is OUT/shards/part-{s:05d}.parquet (one row per piece, columns in docs/interfaces.md
"Shards") plus a small part-{s:05d}.json that commits it. A shard whose files, tokenizer and options
are unchanged is not redone, so an interrupted run picks up where it stopped.

Files are encoded by a small pool of long-lived worker processes (spawn context) fed one file at a
time. Bad files (empty, truncated, not MIDI, no notes) are skipped with a reason; a file that kills
its worker (a segfault in a parser) or runs past the timeout costs only that file: the parent sees
the death, records the file as skipped and starts a new worker. Splits come from the content hash,
so duplicate files always land in the same split.
"""
from __future__ import annotations

import argparse
import glob as globlib
import hashlib
import json
import math
import multiprocessing as mp
import os
import random
import signal
import struct
import sys
import tarfile
import time
import traceback
from contextlib import contextmanager
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np
from filelock import FileLock

from amadeus.tokenizer import MIDI_SUFFIXES, NoteTokenizer

SPLITS = ("train", "validation", "test")
SHARD_FORMAT = 1  # bump when the row layout changes: finished shards are then redone
ROW_GROUP_SIZE = 64  # pieces per Parquet row group (the streaming unit of the DataModule)
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz")
LOSS_KEYS = ("off_grid_onset", "off_grid_duration", "zero_duration", "duration_snapped",
             "time_signature_moved", "time_signature_replaced", "tempo_change_off_onset", "tempo_out_of_range")


class SkipFile(Exception):
    """A file that cannot become a training piece; the message is the reason stored in the manifest."""


# ----------------------------------------------------------------------------------------------
# worker pool: long-lived processes, one task at a time, crash- and timeout-proof


def _signal_name(num: int) -> str:
    try:
        return signal.Signals(num).name
    except ValueError:
        return f"signal {num}"


READY, INIT_ERROR = "__ready__", "__init_error__"  # the first message of a worker


def _worker_main(conn: Connection, fn: Callable[[Any], Any], initializer: Callable | None, initargs: tuple) -> None:
    """Loop of a worker process: announce READY, then receive (key, arg), send (key, ok, result-or-reason)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's business
    try:
        if initializer is not None:
            initializer(*initargs)
    except BaseException as e:  # noqa: BLE001 - reported to the parent, which stops the run
        conn.send((INIT_ERROR, False, f"{type(e).__name__}: {e}\n{traceback.format_exc()}"))
        return
    conn.send((READY, True, None))
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        if msg is None:
            return
        key, arg = msg
        try:
            out = (key, True, fn(arg))
        except SkipFile as e:
            out = (key, False, str(e))
        except Exception as e:  # noqa: BLE001 - any failure costs only this task
            out = (key, False, f"{type(e).__name__}: {e}")
        try:
            conn.send(out)
        except Exception as e:  # noqa: BLE001 - e.g. an unpicklable result
            conn.send((key, False, f"result not transferable: {type(e).__name__}: {e}"))


ONE_THREAD_ENV = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


@contextmanager
def _one_thread_env() -> Iterator[None]:
    """Environment for a worker process: one BLAS thread (workers are one per core, and BLAS threads
    only slow down the tiny matrix products of the tokenizer), unless the user set otherwise."""
    saved = {k: os.environ.get(k) for k in ONE_THREAD_ENV}
    for k, v in ONE_THREAD_ENV.items():
        os.environ.setdefault(k, v)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


class _Worker:
    """One worker process, its pipe, and the task it holds."""

    def __init__(self, ctx, fn, initializer, initargs) -> None:
        self.conn, child = ctx.Pipe(duplex=True)
        self.proc = ctx.Process(target=_worker_main, args=(child, fn, initializer, initargs), daemon=True)
        with _one_thread_env():  # a spawned child takes the environment as it is now
            self.proc.start()
        child.close()  # so that a dead worker reads as EOF here
        self.ready = False  # set by its READY message: startup never counts against a task's timeout
        self.task: tuple[Any, float] | None = None  # (key, start time)

    def stop(self, kill: bool = False) -> None:
        if kill:
            self.proc.kill()
        else:
            try:
                self.conn.send(None)
            except (OSError, ValueError):
                pass
        self.proc.join(timeout=5)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join()
        self.conn.close()

    def death_reason(self) -> str:
        self.proc.join(timeout=5)
        code = self.proc.exitcode
        if code is None:
            return "worker stopped answering"
        if code < 0:
            return f"worker crashed (signal {-code}, {_signal_name(-code)})"
        return f"worker exited with code {code}"


class WorkerPool:
    """A few long-lived worker processes, each fed one task at a time through its own pipe.

    The parent knows which task every worker holds, so a worker that dies (segfault, os._exit,
    out-of-memory kill) or exceeds `timeout` seconds costs exactly that task: it is reported as
    failed with the reason ("worker crashed (signal 11, SIGSEGV)", "timed out after 60 s") and a
    fresh worker takes its place. `fn`, `initializer` and the tasks must be picklable (module-level
    functions), since workers are started with the 'spawn' method.
    """

    MAX_START_FAILURES = 3  # workers dying before READY, in a row: give up rather than loop

    def __init__(self, fn: Callable[[Any], Any], workers: int, initializer: Callable | None = None,
                 initargs: tuple = (), timeout: float | None = None, context: str = "spawn") -> None:
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.fn, self.initializer, self.initargs, self.timeout = fn, initializer, initargs, timeout
        self.ctx = mp.get_context(context)
        self.n = workers
        self.restarts = 0
        self._start_failures = 0
        self._workers: list[_Worker] = []

    def __enter__(self) -> WorkerPool:
        self._workers = [self._spawn() for _ in range(self.n)]
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _spawn(self) -> _Worker:
        return _Worker(self.ctx, self.fn, self.initializer, self.initargs)

    def close(self) -> None:
        for w in self._workers:
            w.stop(kill=w.task is not None or not w.ready)
        self._workers = []

    def _replace(self, i: int, kill: bool) -> None:
        self._workers[i].stop(kill=kill)
        self._workers[i] = self._spawn()
        self.restarts += 1

    def imap_unordered(self, tasks: Iterable[tuple[Any, Any]]) -> Iterator[tuple[Any, bool, Any]]:
        """Run (key, arg) tasks; yield (key, True, result) or (key, False, reason) as they finish."""
        if not self._workers:
            self.__enter__()
        pending = iter(tasks)
        exhausted = False
        while True:
            for w in self._workers:  # feed idle, ready workers
                if exhausted or not w.ready or w.task is not None:
                    continue
                try:
                    key, arg = next(pending)
                except StopIteration:
                    exhausted = True
                    break
                try:
                    w.conn.send((key, arg))
                    w.task = (key, time.monotonic())
                except (OSError, ValueError):  # died since its last message; the wait below sees it
                    w.task = (key, -math.inf)
            if exhausted and all(w.task is None for w in self._workers):
                return
            wait_s = 1.0
            if self.timeout is not None:
                starts = [w.task[1] for w in self._workers if w.task is not None]
                if starts:
                    wait_s = max(0.0, min(wait_s, min(starts) + self.timeout - time.monotonic()))
            watched = [w for w in self._workers if w.task is not None or not w.ready]
            ready = set(wait([w.conn for w in watched] + [w.proc.sentinel for w in watched], timeout=wait_s))
            for i, w in enumerate(self._workers):
                if w not in watched:
                    continue
                if w.conn in ready:
                    try:
                        rkey, ok, result = w.conn.recv()
                    except (EOFError, OSError):  # died: the sentinel branch below tells why
                        ready.add(w.proc.sentinel)
                    else:
                        if rkey == INIT_ERROR:
                            self.close()
                            raise RuntimeError(f"worker failed to start: {result}")
                        if rkey == READY:
                            w.ready, self._start_failures = True, 0
                        else:
                            w.task = None
                            yield rkey, ok, result
                        continue
                if w.proc.sentinel in ready or not w.proc.is_alive():
                    reason = w.death_reason()
                    key = w.task[0] if w.task is not None else None
                    if not w.ready:
                        self._start_failures += 1
                        if self._start_failures >= self.MAX_START_FAILURES:
                            self.close()
                            raise RuntimeError(f"workers keep dying while starting ({reason})")
                    self._replace(i, kill=False)
                    if key is not None:
                        yield key, False, reason
                elif w.task is not None and self.timeout is not None \
                        and time.monotonic() - w.task[1] > self.timeout:
                    key = w.task[0]
                    self._replace(i, kill=True)
                    yield key, False, f"timed out after {self.timeout:g} s"


def default_workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


# ----------------------------------------------------------------------------------------------
# inputs


@dataclass(frozen=True)
class Entry:
    """One input file: its name (relative to SRC when possible) and where to read it."""

    name: str
    path: str | None = None  # a file on disk
    member: str | None = None  # a member of the tar archive `path`


def _is_midi_name(name: str) -> bool:
    return name.lower().endswith(MIDI_SUFFIXES)


def _is_tar(path: Path) -> bool:
    return path.is_file() and path.name.lower().endswith(TAR_SUFFIXES)


def list_inputs(src: str | os.PathLike | Sequence[str | os.PathLike]) -> list[Entry]:
    """The input files of SRC in their processing order (sorted; a tar keeps its archive order).

    Raises FileNotFoundError naming SRC when it is neither a folder, an archive, a list file nor a
    glob with matches.
    """
    if isinstance(src, (list, tuple)):
        return sorted({str(p): Entry(str(p), str(p)) for p in src}.values(), key=lambda e: e.name)
    text = str(src)
    path = Path(text).expanduser()
    if path.is_dir():
        files = (p for p in path.rglob("*") if p.is_file() and _is_midi_name(p.name))
        return sorted((Entry(p.relative_to(path).as_posix(), str(p)) for p in files), key=lambda e: e.name)
    if _is_tar(path):
        try:
            with tarfile.open(path) as tar:  # archive order; a name stored twice counts once
                members = {m.name: None for m in tar if m.isfile() and _is_midi_name(m.name)}
            return [Entry(name, str(path), name) for name in members]
        except (tarfile.TarError, OSError, EOFError) as e:
            raise FileNotFoundError(f"{path}: cannot read the archive ({e})") from None
    if path.is_file() and _is_midi_name(path.name):
        return [Entry(path.name, str(path))]
    if path.is_file():  # a list file
        base = path.parent
        names = [ln.strip() for ln in path.read_text(errors="replace").splitlines()]
        names = [n for n in names if n and not n.startswith("#")]
        entries = {n: Entry(n, str(Path(n) if Path(n).is_absolute() else base / n)) for n in names}
        return [entries[n] for n in sorted(entries)]
    if any(ch in text for ch in "*?["):
        root = Path(text.split("*")[0].split("?")[0].split("[")[0])
        root = root if text.endswith(os.sep) or root.is_dir() else root.parent
        files = sorted(p for p in globlib.glob(os.path.expanduser(text), recursive=True) if os.path.isfile(p))
        if files:
            return [Entry(_relative(p, root), p) for p in files]
        raise FileNotFoundError(f"{src}: the glob matches no files")
    raise FileNotFoundError(f"{src}: no such folder, archive, list file or glob")


def _relative(p: str, root: Path) -> str:
    try:
        return Path(p).resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return p


def _read_payloads(entries: list[Entry]) -> Iterator[tuple[Entry, bytes | None]]:
    """Bytes of tar members (read here, in archive order, one pass); None for files on disk."""
    tars: dict[str, set[str]] = {}
    for e in entries:
        if e.member is not None:
            tars.setdefault(e.path, set()).add(e.member)
    if not tars:
        for e in entries:
            yield e, None
        return
    (tar_path, wanted), = tars.items()
    by_member = {e.member: e for e in entries}
    with tarfile.open(tar_path, mode="r|*") as tar:  # streaming: no seeks in a .tar.gz
        for m in tar:
            if m.name in wanted and m.name in by_member:
                f = tar.extractfile(m)
                yield by_member.pop(m.name), (f.read() if f is not None else b"")
    for e in by_member.values():  # listed but not seen again (archive changed underneath)
        yield e, b""


# ----------------------------------------------------------------------------------------------
# captions from a MidiCaps file


class CaptionIndex:
    """Captions by location, found for a file by its relative path or by the longest trailing part of
    its path that names exactly one location (so SRC may sit above or below the captions' root, and a
    unique file name is enough)."""

    def __init__(self, captions: dict[str, str]) -> None:
        self.by_location = {self._norm(k): v for k, v in captions.items()}
        owners: dict[str, set[str]] = {}
        for loc in self.by_location:
            parts = loc.split("/")
            for i in range(len(parts)):
                owners.setdefault("/".join(parts[i:]), set()).add(loc)
        self.by_suffix = {k: self.by_location[next(iter(v))] for k, v in owners.items() if len(v) == 1}

    @staticmethod
    def _norm(location: str) -> str:
        loc = location.replace("\\", "/")
        while loc.startswith("./"):
            loc = loc[2:]
        return loc.lstrip("/")

    def __len__(self) -> int:
        return len(self.by_location)

    def lookup(self, name: str) -> str | None:
        key = self._norm(name)
        if key in self.by_location:
            return self.by_location[key]
        parts = key.split("/")
        for i in range(len(parts)):  # longest trailing part first
            hit = self.by_suffix.get("/".join(parts[i:]))
            if hit is not None:
                return hit
        return None


def read_captions(path: str | os.PathLike) -> dict[str, str]:
    """{location: caption} from a MidiCaps JSON / JSONL file (via amadeus.captions.load_captions)."""
    from amadeus.captions import load_captions

    loaded = load_captions(path)
    out = {}
    for k, v in loaded.items():
        out[str(k)] = v if isinstance(v, str) else str(v.get("caption", "")) if isinstance(v, dict) else str(v)
    return out


# ----------------------------------------------------------------------------------------------
# one file -> one row (runs in the workers)


_STATE: dict[str, Any] = {}


def _init_encoder(tokenizer: NoteTokenizer, auto_captions: bool, val_fraction: float, test_fraction: float) -> None:
    _STATE.update(tokenizer=tokenizer, auto_captions=auto_captions, val=val_fraction, test=test_fraction)
    import amadeus.features  # noqa: F401 - import once here, not on the first file
    if auto_captions:
        import amadeus.captions  # noqa: F401


def split_of(piece_id: str, val_fraction: float, test_fraction: float) -> str:
    """train / validation / test from the content hash (16 hex digits -> a number in [0, 1))."""
    u = int(piece_id, 16) / 16 ** len(piece_id)
    if u < val_fraction:
        return "validation"
    if u < val_fraction + test_fraction:
        return "test"
    return "train"


def check_midi_bytes(data: bytes) -> None:
    """Cheap structural check of a Standard MIDI File: header, chunk lengths, track count."""
    if not data:
        raise SkipFile("empty file")
    if data[:4] != b"MThd":
        raise SkipFile("not a MIDI file (no MThd header)")
    if len(data) < 14:
        raise SkipFile(f"truncated MIDI header ({len(data)} bytes)")
    hlen, _fmt, ntracks, _div = struct.unpack(">IHHH", data[4:14])
    if hlen < 6 or 8 + hlen > len(data):
        raise SkipFile(f"not a MIDI file (malformed header: length {hlen})")
    pos, found = 8 + hlen, 0
    while pos + 8 <= len(data) and found < ntracks:
        cid, clen = data[pos:pos + 4], struct.unpack(">I", data[pos + 4:pos + 8])[0]
        if pos + 8 + clen > len(data):
            raise SkipFile(f"truncated MIDI: chunk {cid!r} at byte {pos} announces {clen} bytes, "
                           f"{len(data) - pos - 8} remain")
        found += cid == b"MTrk"
        pos += 8 + clen
    if found < ntracks:
        raise SkipFile(f"truncated MIDI: header announces {ntracks} tracks, file holds {found}")


def _load(name: str, data: bytes):
    import symusic

    if name.lower().endswith(".abc"):
        try:
            return symusic.Score.from_abc(data.decode("utf-8", errors="replace"))
        except Exception as e:  # noqa: BLE001
            raise SkipFile(f"unreadable ABC ({e})") from None
    check_midi_bytes(data)
    try:
        return symusic.Score.from_midi(data)
    except Exception as e:  # noqa: BLE001 - symusic raises RuntimeError with terse messages
        raise SkipFile(f"unreadable MIDI ({e})") from None


def encode_file(task: tuple) -> dict[str, Any]:
    """(name, path, bytes or None, caption or None[, split or None]) -> one shard row (tokens flattened
    as int16); the split comes from the content hash unless the task names one."""
    from amadeus.features import extract_features

    name, path, data, caption = task[:4]
    forced_split = task[4] if len(task) > 4 else None
    tokenizer: NoteTokenizer = _STATE["tokenizer"]
    if data is None:
        try:
            data = Path(path).read_bytes()
        except OSError as e:
            raise SkipFile(f"cannot read ({e.strerror or e})") from None
    score = _load(name, data)
    if score.note_num() == 0:
        raise SkipFile("no notes")
    try:
        tokens, stats = tokenizer.encode_with_stats(score)
    except ValueError as e:
        raise SkipFile(f"cannot tokenize ({e})") from None
    n_notes = int(stats.notes)
    if n_notes == 0:
        raise SkipFile("no notes")
    piece_id = hashlib.sha1(data).hexdigest()[:16]
    features = extract_features(score)
    if caption is None:
        caption = ""
        if _STATE["auto_captions"]:
            from amadeus.captions import make_caption

            caption = make_caption(features, rng=random.Random(int(piece_id, 16)))
    return {
        "id": piece_id,
        "source": name,
        "tokens": np.ascontiguousarray(tokens, dtype=np.int16).reshape(-1),
        "n_rows": int(tokens.shape[0]),
        "n_notes": n_notes,
        "caption": caption,
        "features": json.dumps(features, sort_keys=True, default=_json_default),
        "split": forced_split or split_of(piece_id, _STATE["val"], _STATE["test"]),
        "tokenizer_hash": tokenizer.config_hash,
        "stats": stats.as_dict(),
    }


def _json_default(x: Any) -> Any:
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, (set, tuple)):
        return list(x)
    return str(x)


# ----------------------------------------------------------------------------------------------
# shards


def _schema():
    import pyarrow as pa

    return pa.schema([
        ("id", pa.string()), ("source", pa.string()), ("tokens", pa.list_(pa.int16())),
        ("n_rows", pa.int32()), ("n_notes", pa.int32()), ("caption", pa.string()),
        ("features", pa.string()), ("split", pa.string()), ("tokenizer_hash", pa.string()),
    ])


def write_shard(path: Path, rows: list[dict[str, Any]]) -> None:
    """Rows -> Parquet, sorted by (split, source), row groups never crossing a split; tmp + rename."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = sorted(rows, key=lambda r: (SPLITS.index(r["split"]), r["source"]))
    schema = _schema()
    lengths = np.array([len(r["tokens"]) for r in rows], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    values = np.concatenate([r["tokens"] for r in rows]) if rows else np.zeros(0, np.int16)
    cols = {name: pa.array([r[name] for r in rows], type=schema.field(name).type)
            for name in schema.names if name != "tokens"}
    cols["tokens"] = pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), pa.array(values, pa.int16()))
    table = pa.table({n: cols[n] for n in schema.names}, schema=schema)
    tmp = path.with_name(path.name + ".tmp")
    with pq.ParquetWriter(tmp, schema, compression="zstd") as writer:
        start = 0
        for split in SPLITS:
            n = sum(r["split"] == split for r in rows)
            for a in range(start, start + n, ROW_GROUP_SIZE):
                chunk = table.slice(a, min(ROW_GROUP_SIZE, start + n - a))
                writer.write_table(chunk, row_group_size=chunk.num_rows)
            start += n
        if not rows:
            writer.write_table(table)
    os.replace(tmp, path)


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)


def _shard_key(entries: list[Entry], options: dict[str, Any]) -> str:
    h = hashlib.sha1(json.dumps(options, sort_keys=True).encode())
    for e in entries:
        h.update(e.name.encode() + b"\0")
    return h.hexdigest()


def _finished(meta_path: Path, parquet_path: Path, key: str) -> dict[str, Any] | None:
    if not (meta_path.is_file() and parquet_path.is_file()):
        return None
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return meta if meta.get("key") == key else None


def _finish_shard(shard_dir: Path, s: int, key: str, files: int, rows: list[dict[str, Any]],
                  skipped: list[dict[str, str]]) -> dict[str, Any]:
    """Write shard s (Parquet, then its JSON, which marks it finished) and return its metadata."""
    lost = {k: sum(int(r["stats"].get(k, 0)) for r in rows) for k in LOSS_KEYS}
    write_shard(shard_dir / f"part-{s:05d}.parquet", rows)
    meta = {"key": key, "file": f"shards/part-{s:05d}.parquet", "files": files, "pieces": len(rows),
            "notes": sum(r["n_notes"] for r in rows), "rows": sum(r["n_rows"] for r in rows), "lost": lost,
            "captioned": sum(bool(r["caption"]) for r in rows),
            "splits": {sp: sum(r["split"] == sp for r in rows) for sp in SPLITS},
            "skipped": sorted(skipped, key=lambda x: x["path"])}
    _write_json(shard_dir / f"part-{s:05d}.json", meta)
    return meta


# ----------------------------------------------------------------------------------------------
# the run


@dataclass
class PreprocessReport:
    """What a preprocess run did (also summarised in OUT/manifest.json)."""

    out: Path
    files: int = 0
    pieces: int = 0
    notes: int = 0
    skipped: list[dict[str, str]] = field(default_factory=list)
    splits: dict[str, int] = field(default_factory=dict)
    lost: dict[str, int] = field(default_factory=dict)
    shards: int = 0
    shards_reused: int = 0
    worker_restarts: int = 0
    processed: int = 0  # files encoded in this run (not counting reused shards)
    seconds: float = 0.0

    @property
    def files_per_s(self) -> float:
        return self.processed / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> str:
        sp = ", ".join(f"{k} {v}" for k, v in self.splits.items())
        lost = ", ".join(f"{k} {v}" for k, v in self.lost.items() if v) or "none"
        return (f"{self.pieces} pieces ({sp}), {self.notes} notes from {self.files} files; "
                f"{len(self.skipped)} skipped; {self.shards} shards ({self.shards_reused} reused); "
                f"grid changes: {lost}; {self.processed} files in {self.seconds:.1f} s "
                f"({self.files_per_s:.0f} files/s) -> {self.out}")


def preprocess(src: str | os.PathLike | Sequence[str | os.PathLike], out: str | os.PathLike,
               captions: str | os.PathLike | dict[str, str] | None = None, workers: int | None = None,
               tokenizer: NoteTokenizer | None = None, shard_size: int = 1000, val_fraction: float = 0.05,
               test_fraction: float = 0.05, auto_captions: bool = True, timeout: float | None = 120.0,
               progress: bool = True, splits: Mapping[str, str] | None = None) -> PreprocessReport:
    """Tokenize every MIDI file of SRC into OUT/shards/*.parquet and write OUT/manifest.json.

    captions: a MidiCaps JSON/JSONL file (or a {location: caption} dict); files it does not cover get
        an automatic caption from their features when auto_captions is on, else "".
    workers: worker processes (default: the usable CPU cores); 0 encodes in this process (no crash
        isolation; for profiling).
    timeout: seconds one file may take before its worker is killed and the file skipped.
    splits: {location: "train" | "validation" | "test"} (matched like captions) overriding the content
        hash, so that a corpus can keep related files (the same tune twice) in one split and give
        every style its test share.
    """
    t0 = time.perf_counter()
    tokenizer = tokenizer or NoteTokenizer()
    if not (val_fraction >= 0 and test_fraction >= 0 and val_fraction + test_fraction < 1):
        raise ValueError("need val_fraction, test_fraction >= 0 with a sum below 1")
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    entries = list_inputs(src)
    if not entries:
        raise FileNotFoundError(f"{src}: no MIDI files found")
    if isinstance(captions, dict):
        caption_map, caption_tag = dict(captions), hashlib.sha1(json.dumps(captions, sort_keys=True).encode()).hexdigest()
    elif captions is not None:
        cpath = Path(captions)
        if not cpath.is_file():
            raise FileNotFoundError(f"{captions}: no such captions file")
        caption_map, caption_tag = read_captions(cpath), hashlib.sha1(cpath.read_bytes()).hexdigest()
    else:
        caption_map, caption_tag = {}, None
    index = CaptionIndex(caption_map)
    bad = sorted({v for v in (splits or {}).values()} - set(SPLITS))
    if bad:
        raise ValueError(f"splits: unknown split name(s) {bad}; use {', '.join(SPLITS)}")
    split_index = CaptionIndex(dict(splits)) if splits else None
    split_tag = hashlib.sha1(json.dumps(splits, sort_keys=True).encode()).hexdigest() if splits else None
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with FileLock(out / ".lock"):  # one writer per OUT: a concurrent run waits, then reuses the shards
        shard_dir = out / "shards"
        shard_dir.mkdir(parents=True, exist_ok=True)
        options = {"format": SHARD_FORMAT, "tokenizer_hash": tokenizer.config_hash, "captions": caption_tag,
                   "auto_captions": auto_captions, "val": val_fraction, "test": test_fraction}
        if split_tag is not None:  # only when given: shards of earlier runs keep their keys
            options["splits"] = split_tag

        n_shards = (len(entries) + shard_size - 1) // shard_size
        shard_entries = [entries[s * shard_size:(s + 1) * shard_size] for s in range(n_shards)]
        keys = [_shard_key(es, options) for es in shard_entries]
        metas: dict[int, dict[str, Any]] = {}
        todo: list[int] = []
        for s in range(n_shards):
            meta = _finished(shard_dir / f"part-{s:05d}.json", shard_dir / f"part-{s:05d}.parquet", keys[s])
            if meta is None:
                todo.append(s)
            else:
                metas[s] = meta
        for stale in shard_dir.glob("part-*"):  # leftovers of a larger earlier run or of a crash
            number = stale.name.split(".")[0][len("part-"):]
            if stale.suffix == ".tmp" or (number.isdigit() and int(number) >= n_shards):
                stale.unlink()

        report = PreprocessReport(out=out, files=len(entries), shards=n_shards, shards_reused=len(metas))
        rows: dict[int, list[dict[str, Any]]] = {s: [] for s in todo}
        skips: dict[int, list[dict[str, str]]] = {s: [] for s in todo}
        remaining = {s: len(shard_entries[s]) for s in todo}
        where = {e: (s, i) for s in todo for i, e in enumerate(shard_entries[s])}

        def payloads() -> Iterator[tuple[tuple[int, int, str], tuple]]:
            for e, data in _read_payloads([e for s in todo for e in shard_entries[s]]):
                caption = index.lookup(e.name) if len(index) else None
                yield (*where[e], e.name), (e.name, e.path, data, caption,
                                            split_index.lookup(e.name) if split_index is not None else None)

        workers = default_workers() if workers is None else workers
        todo_files = len(where)
        init_args = (tokenizer, auto_captions, val_fraction, test_fraction)
        with _progress(todo_files, progress) as bar:
            if todo_files:
                results = (_run_inline(payloads(), init_args) if workers == 0 else
                           _run_pool(payloads(), init_args, min(workers, todo_files), timeout, report))
                for (s, _i, name), ok, result in results:
                    if ok:
                        rows[s].append(result)
                    else:
                        skips[s].append({"path": name, "reason": result})
                    report.processed += 1
                    bar.update(1)
                    remaining[s] -= 1
                    if remaining[s] == 0:  # the shard's last file: write it (then it counts as finished)
                        metas[s] = _finish_shard(shard_dir, s, keys[s], len(shard_entries[s]), rows.pop(s), skips.pop(s))

        manifest = write_manifest(out, tokenizer, [metas[s] for s in range(n_shards)], src=str(src),
                                  options=options, files=len(entries))
        report.pieces = manifest["counts"]["pieces"]
        report.notes = manifest["counts"]["notes"]
        report.splits = manifest["counts"]["splits"]
        report.skipped = manifest["skipped"]
        report.lost = manifest["lost"]
        report.seconds = time.perf_counter() - t0
        return report


def _run_inline(payloads: Iterable, init_args: tuple) -> Iterator[tuple[Any, bool, Any]]:
    _init_encoder(*init_args)
    for key, arg in payloads:
        try:
            yield key, True, encode_file(arg)
        except SkipFile as e:
            yield key, False, str(e)
        except Exception as e:  # noqa: BLE001
            yield key, False, f"{type(e).__name__}: {e}"


def _run_pool(payloads: Iterable, init_args: tuple, workers: int, timeout: float | None,
              report: PreprocessReport) -> Iterator[tuple[Any, bool, Any]]:
    with WorkerPool(encode_file, workers, initializer=_init_encoder, initargs=init_args, timeout=timeout) as pool:
        yield from pool.imap_unordered(payloads)
        report.worker_restarts = pool.restarts


def _progress(total: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="file", desc="preprocess", disable=not enabled or total == 0,
                dynamic_ncols=True, mininterval=0.5)


def write_manifest(out: Path, tokenizer: NoteTokenizer, metas: list[dict[str, Any]], src: str,
                   options: dict[str, Any], files: int) -> dict[str, Any]:
    """OUT/manifest.json from the per-shard metadata (docs/interfaces.md "Shards")."""
    from amadeus import __version__

    lost = {k: sum(m["lost"].get(k, 0) for m in metas) for k in LOSS_KEYS}
    splits = {sp: sum(m["splits"][sp] for m in metas) for sp in SPLITS}
    skipped = [x for m in metas for x in m["skipped"]]
    counts = {"files": files, "pieces": sum(m["pieces"] for m in metas), "skipped": len(skipped),
              "notes": sum(m["notes"] for m in metas), "rows": sum(m["rows"] for m in metas),
              "captioned": sum(m["captioned"] for m in metas), "splits": splits}
    manifest = {
        "format": SHARD_FORMAT,
        "amadeus_version": __version__,
        "source": src,
        "tokenizer": tokenizer.config.to_dict(),
        "tokenizer_hash": tokenizer.config_hash,
        "options": options,
        "counts": counts,
        "lost": lost,
        "skipped": skipped,
        "shards": [{"file": m["file"], "pieces": m["pieces"], "notes": m["notes"], "rows": m["rows"],
                    "splits": m["splits"]} for m in metas if m["pieces"] > 0],
    }
    _write_json(out / "manifest.json", manifest)
    return manifest


def load_manifest(out: str | os.PathLike) -> dict[str, Any]:
    """Read OUT/manifest.json (OUT a folder or any fsspec URL); a clear error when it is missing or not
    a manifest."""
    import fsspec

    path = f"{str(out).rstrip('/')}/manifest.json"
    try:
        with fsspec.open(path, "r") as f:
            manifest = json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no manifest (run `amadeus preprocess SRC {out}` first)") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not JSON ({e})") from None
    if "tokenizer_hash" not in manifest or "shards" not in manifest:
        raise ValueError(f"{path}: not an amadeus shard manifest")
    return manifest


# ----------------------------------------------------------------------------------------------
# command line (`amadeus preprocess`)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("src", help="MIDI folder (recursive), glob, .tar/.tar.gz/.tgz, or a list file")
    parser.add_argument("out", help="output folder: manifest.json and shards/part-XXXXX.parquet")
    parser.add_argument("--captions", help="MidiCaps JSON/JSONL file; matched by location, path or file name")
    parser.add_argument("--no-auto-captions", dest="auto_captions", action="store_false",
                        help="leave pieces without a caption empty instead of captioning their features")
    parser.add_argument("--workers", type=int, default=None, help="worker processes (default: CPU cores)")
    parser.add_argument("--shard-size", type=int, default=1000, help="files per shard (default 1000)")
    parser.add_argument("--val-fraction", type=float, default=0.05)
    parser.add_argument("--test-fraction", type=float, default=0.05)
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per file before it is skipped")
    parser.add_argument("--tokenizer", help="tokenizer JSON (NoteTokenizer.save); default config otherwise")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    """0 when the run completed (skipped files are counted in the summary), 2 for bad arguments."""
    try:
        tokenizer = NoteTokenizer.load(args.tokenizer) if args.tokenizer else None
        report = preprocess(args.src, args.out, captions=args.captions, workers=args.workers,
                            tokenizer=tokenizer, shard_size=args.shard_size, val_fraction=args.val_fraction,
                            test_fraction=args.test_fraction, auto_captions=args.auto_captions,
                            timeout=args.timeout, progress=not args.quiet)
    except (FileNotFoundError, ValueError) as e:
        print(f"amadeus preprocess: {e}", file=sys.stderr)
        return 2
    print(report.summary())
    for item in report.skipped[:20]:
        print(f"  skipped {item['path']}: {item['reason']}")
    if len(report.skipped) > 20:
        print(f"  ... and {len(report.skipped) - 20} more (see {Path(args.out) / 'manifest.json'})")
    return 0
