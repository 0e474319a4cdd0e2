"""MIDI files -> tokenized Parquet shards + manifest.json, in parallel worker processes, resumable.

SRC is a folder (searched recursively for .mid/.midi/.kar/.abc, any case), a glob, a .tar/.tar.gz/.tgz
archive, or a list file (one path per line). The sorted file list is cut into shards of `shard_size`
files; shard s is OUT/shards/part-{s:05d}.parquet (one row per piece, columns in docs/interfaces.md
"Shards") plus a small part-{s:05d}.json that commits it. A shard whose files, tokenizer and options
are unchanged is not redone, so an interrupted run picks up where it stopped.

Files are encoded by a small pool of long-lived worker processes (amadeus.workers) fed one file at a
time; the shards and the manifest are written by amadeus.shards, captions found by amadeus.captions. Bad files (empty, truncated, not MIDI, no notes) are skipped with a reason; a file that kills
its worker (a segfault in a parser) or runs past the timeout costs only that file: the parent sees
the death, records the file as skipped and starts a new worker. Splits come from the piece's melody
(amadeus.corpus.splits: the first top-line intervals, transposition-free), so duplicate files, the same
tune in another key or file, and the same piece in an embedded corpus always land in the same split.
"""
from __future__ import annotations

import glob as globlib
import hashlib
import json
import os
import random
import struct
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np
from filelock import FileLock

from amadeus.captions import DEFAULT_TEXT_ENCODER, Captions, load_captions
from amadeus.corpus.splits import SPLIT_VERSION, melody_key, split_for_key
from amadeus.shards import SHARD_FORMAT, SPLITS, finish_shard, finished_shard, json_default, remove_stale, write_manifest
from amadeus.tokenizer import MIDI_SUFFIXES, NoteTokenizer
from amadeus.workers import SkipFile, WorkerPool, default_workers

TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz")


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
# ----------------------------------------------------------------------------------------------
# one file -> one row (runs in the workers)


_STATE: dict[str, Any] = {}


def _init_encoder(tokenizer: NoteTokenizer, auto_captions: bool, val_fraction: float, test_fraction: float) -> None:
    _STATE.update(tokenizer=tokenizer, auto_captions=auto_captions, val=val_fraction, test=test_fraction)
    import amadeus.features  # noqa: F401 - import once here, not on the first file
    if auto_captions:
        import amadeus.captions  # noqa: F401


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


def encode_file(task: tuple[str, str | None, bytes | None, str | None, str | None]) -> dict[str, Any]:
    """(name, path, bytes or None, caption or None, split or None) -> one shard row (tokens flattened
    as int16); the split comes from the melody (amadeus.corpus.splits) unless the task names one."""
    from amadeus.features import extract_features

    name, path, data, caption, forced_split = task
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
        "features": json.dumps(features, sort_keys=True, default=json_default),
        "split": forced_split or split_for_key(melody_key(score), _STATE["val"], _STATE["test"]),
        "tokenizer_hash": tokenizer.config_hash,
        "stats": stats.as_dict(),
    }


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
    caption_tokens: dict[str, Any] | None = None  # when asked: captions over a text encoder's limit

    @property
    def files_per_s(self) -> float:
        return self.processed / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> str:
        sp = ", ".join(f"{k} {v}" for k, v in self.splits.items())
        lost = ", ".join(f"{k} {v}" for k, v in self.lost.items() if v) or "none"
        return (f"{self.pieces} pieces ({sp}), {self.notes} notes from {self.files} files; "
                f"{len(self.skipped)} skipped; {self.shards} shards ({self.shards_reused} reused); "
                f"grid changes: {lost}; {self.processed} files in {self.seconds:.1f} s "
                f"({self.files_per_s:.0f} files/s) -> {self.out}" + self._caption_summary())

    def _caption_summary(self) -> str:
        c = self.caption_tokens
        if not c:
            return ""
        return (f"\ncaptions: {c['over']} of {c['captions']} exceed {c['limit']} {c['encoder']} tokens (median "
                f"{c['median']:g}, max {c['max']}); they are cut at training unless text_max_length is raised")


def preprocess(src: str | os.PathLike | Sequence[str | os.PathLike], out: str | os.PathLike,
               captions: str | os.PathLike | dict[str, str] | None = None, workers: int | None = None,
               tokenizer: NoteTokenizer | None = None, shard_size: int = 1000, val_fraction: float = 0.05,
               test_fraction: float = 0.05, auto_captions: bool = True, timeout: float | None = 120.0,
               progress: bool = True, splits: Mapping[str, str] | None = None, text_max_length: int | None = None,
               text_encoder: str = DEFAULT_TEXT_ENCODER) -> PreprocessReport:
    """Tokenize every MIDI file of SRC into OUT/shards/*.parquet and write OUT/manifest.json.

    captions: a MidiCaps JSON/JSONL file (or a {location: caption} dict); files it does not cover get
        an automatic caption from their features when auto_captions is on, else "".
    workers: worker processes (default: the usable CPU cores); 0 encodes in this process (no crash
        isolation; for profiling).
    timeout: seconds one file may take before its worker is killed and the file skipped.
    splits: {location: "train" | "validation" | "test"} (matched like captions) overriding the split by
        melody (an embedded corpus passes the splits it recorded in its captions.jsonl).
    text_max_length: when given, count (after the shards are written, in this process) the captions
        longer than this many tokens of `text_encoder`'s tokenizer: report.caption_tokens.
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
    caption_index, caption_tag = _caption_source(captions)
    split_index, split_tag = _split_source(splits)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with FileLock(out / ".lock"):  # one writer per OUT: a concurrent run waits, then reuses the shards
        shard_dir = out / "shards"
        shard_dir.mkdir(parents=True, exist_ok=True)
        options = {"format": SHARD_FORMAT, "tokenizer_hash": tokenizer.config_hash, "captions": caption_tag,
                   "auto_captions": auto_captions, "val": val_fraction, "test": test_fraction,
                   "split_version": SPLIT_VERSION}
        if split_tag is not None:  # only when given: shards of earlier runs keep their keys
            options["splits"] = split_tag
        n_shards = (len(entries) + shard_size - 1) // shard_size
        shard_entries = [entries[s * shard_size:(s + 1) * shard_size] for s in range(n_shards)]
        keys = [_shard_key(es, options) for es in shard_entries]
        metas = {s: meta for s in range(n_shards) if (meta := finished_shard(shard_dir, s, keys[s])) is not None}
        remove_stale(shard_dir, n_shards)

        report = PreprocessReport(out=out, files=len(entries), shards=n_shards, shards_reused=len(metas))
        todo = {s: shard_entries[s] for s in range(n_shards) if s not in metas}
        init_args = (tokenizer, auto_captions, val_fraction, test_fraction)
        workers = default_workers() if workers is None else workers
        lookups = (caption_index, split_index)
        for s, rows, skips in _encode_shards(todo, lookups, init_args, workers, timeout, progress, report):
            metas[s] = finish_shard(shard_dir, s, keys[s], len(shard_entries[s]), rows, skips)

        manifest = write_manifest(out, tokenizer, [metas[s] for s in range(n_shards)], src=str(src),
                                  options=options, files=len(entries))
        report.pieces = manifest["counts"]["pieces"]
        report.notes = manifest["counts"]["notes"]
        report.splits = manifest["counts"]["splits"]
        report.skipped = manifest["skipped"]
        report.lost = manifest["lost"]
        if text_max_length is not None:
            report.caption_tokens = caption_token_report(out, text_max_length, text_encoder)
        report.seconds = time.perf_counter() - t0
        return report


def caption_token_report(out: str | os.PathLike, limit: int, text_encoder: str = DEFAULT_TEXT_ENCODER) -> dict[str, Any]:
    """How many non-empty captions of the shards in OUT exceed `limit` tokens of the text encoder's
    tokenizer: {"encoder", "limit", "captions", "over", "median", "max"}."""
    from amadeus.model.text import caption_token_counts
    from amadeus.shards import load_manifest, read_shard

    manifest = load_manifest(out)
    captions = [c for s in manifest["shards"]
                for c in read_shard(f"{out}/{s['file']}", ["caption"], captioned=True).column("caption").to_pylist()]
    counts = np.asarray(caption_token_counts(captions, text_encoder), dtype=np.int64)
    return {"encoder": str(text_encoder), "limit": int(limit), "captions": len(counts),
            "over": int((counts > limit).sum()), "median": float(np.median(counts)) if len(counts) else 0.0,
            "max": int(counts.max()) if len(counts) else 0}


def _caption_source(captions: str | os.PathLike | dict[str, str] | None) -> tuple[Captions | None, str | None]:
    """The caption lookup (None without captions) and a hash of its source (part of every shard's key)."""
    if captions is None:
        return None, None
    if isinstance(captions, dict):
        return Captions(captions), hashlib.sha1(json.dumps(captions, sort_keys=True).encode()).hexdigest()
    cpath = Path(captions)
    if not cpath.is_file():
        raise FileNotFoundError(f"{captions}: no such captions file")
    return load_captions(cpath), hashlib.sha1(cpath.read_bytes()).hexdigest()


def _split_source(splits: Mapping[str, str] | None) -> tuple[Captions | None, str | None]:
    """The {location: split} lookup (matched like captions; None without) and a hash of it."""
    if not splits:
        return None, None
    bad = sorted(set(splits.values()) - set(SPLITS))
    if bad:
        raise ValueError(f"splits: unknown split name(s) {bad}; use {', '.join(SPLITS)}")
    return Captions(dict(splits)), hashlib.sha1(json.dumps(dict(splits), sort_keys=True).encode()).hexdigest()


def _shard_key(entries: list[Entry], options: dict[str, Any]) -> str:
    """What a finished shard must match to be reused: its files (names, in order) and the options."""
    h = hashlib.sha1(json.dumps(options, sort_keys=True).encode())
    for e in entries:
        h.update(e.name.encode() + b"\0")
    return h.hexdigest()


def _encode_shards(todo: dict[int, list[Entry]], lookups: tuple[Captions | None, Captions | None], init_args: tuple,
                   workers: int,
                   timeout: float | None, progress: bool, report: PreprocessReport,
                   ) -> Iterator[tuple[int, list[dict[str, Any]], list[dict[str, str]]]]:
    """Encode the files of the shards in `todo`; yield (shard, rows, skipped) as soon as a shard's last
    file is done (so it is written, and counts as finished, before the run ends). `lookups`: the
    caption and the split of a file by its location (None: no captions given / split by content)."""
    captions, splits = lookups
    rows: dict[int, list[dict[str, Any]]] = {s: [] for s in todo}
    skips: dict[int, list[dict[str, str]]] = {s: [] for s in todo}
    remaining = {s: len(es) for s, es in todo.items()}
    where = {e: (s, i) for s, es in todo.items() for i, e in enumerate(es)}

    def payloads() -> Iterator[tuple[tuple[int, int, str], tuple]]:
        for e, data in _read_payloads([e for es in todo.values() for e in es]):
            yield (*where[e], e.name), (e.name, e.path, data, captions.find(e.name) if captions else None,
                                        splits.find(e.name) if splits else None)

    todo_files = len(where)
    with _progress(todo_files, progress) as bar:
        if not todo_files:
            return
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
                yield s, rows.pop(s), skips.pop(s)


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
