"""The music21 corpus: every readable piece of the collections that music21 ships, as MIDI, with style,
metadata and captions. Nothing is downloaded.

Collections (MUSIC21_COLLECTIONS) and their rules:

| collection | read by | style | instrument (GM program) | tempo when the source has none |
|---|---|---|---|---|
| essenFolksong | symusic (ABC) | "<region> folk song" from `O:` (German, Chinese, Lorraine, ...) | Voice Oohs (53) | beat 76 bpm |
| oneills1850 | symusic (ABC) | "Irish <dance>" (`R:`, else the title), else "Irish dance tune" | Violin (40) | per dance, else beat 96 |
| ryansMammoth | symusic (ABC) | "American <dance>", else "American dance tune" | Violin (40) | per dance, else beat 96 |
| airdsAirs | symusic (ABC) | "Scottish <dance>", else "Scottish air" | Violin (40) | per dance, else beat 76 |
| miscFolk | symusic (ABC) | "American fife tune" / "Northumbrian tune" | Piccolo (72) / Violin (40) | per dance, else beat 96 |
| palestrina | music21 (Humdrum) | "Renaissance mass" | Voice Oohs (53) on every part | 120 (tactus half = 60) |
| monteverdi | music21 (MusicXML) | "Italian madrigal" | Voice Oohs (53) on every part | 120 |
| trecento | music21 (MusicXML) | "Trecento song" | Voice Oohs (53) on every part | 120 |
| bach | music21 (MusicXML) | "Bach chorale" | Voice Oohs (53) on every part | 120 |
| quartets (opt-in) | music21 (MusicXML) | "Classical quartet" | Violin, Violin, Viola, Cello (40, 40, 41, 42) | 120 |

"Beat" defaults are in beats per minute of the metre's beat (a dotted quarter in 6/8, 9/8, 12/8; a
half in 2/2, 3/2; else the denominator's note); dance defaults (DANCE_TEMPO) in quarter notes. An ABC
`Q:` (1/4=120, 3/8=112, C=120 with C the unit length, a bare number meaning quarters) or a music21
metronome mark wins; `tempo_source` says which ("source" or "default") for each piece.

Each piece is converted in a worker process (bounded by a timeout; the symusic ABC parser's C-level
warnings are sent to /dev/null), written as OUT/<collection>/<name>.mid and described by one row of
OUT/captions.jsonl: `location`, `caption`, `style`, `split`, the metadata (collection, region,
composer, title, dance, tempo_source) and the features of amadeus.features. OUT/corpus.json is the
cache stamp and holds the statistics per style (pieces, notes, tokenizer fidelity, skipped with
reasons, metres, tempo sources). Splits are amadeus.corpus.splits' (the same rule for every corpus):
a piece's split is a function of its melody (the first top-line intervals), so the same tune in two
collections, files or corpora (the chorales here and in the Bach corpus) shares one; a rebuild reports how
many pieces moved split since the previous build.
"""
from __future__ import annotations

import os
import random
import re
import time
from collections import Counter
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from amadeus.corpus.abc import (DANCE_TEMPO, SONG_BEAT, TUNE_BEAT, abc_fields, abc_fraction, abc_metre, beat_quarters,
                                dance_kind, essen_style, parse_abc_tempo, split_abc, strip_ornaments)
from amadeus.corpus.common import CAPTIONS, STAMP, CorpusBuild, _read_stamp, _write_jsonl, _write_stamp, cache_root
from amadeus.corpus.splits import (SPLIT_VERSION, assign_splits, content_key, melody_key, moved_pieces,
                                   previous_splits)

MUSIC21_FORMAT = 1  # bump when the conversion changes: cached collections are converted again
# the corpus stamp also holds SPLIT_VERSION: a new split rule re-splits (and re-shards) without converting
MUSIC21_SHARD_SIZE = 500
PIECES = "pieces.txt"
VOICE, VIOLIN, VIOLA, CELLO, PICCOLO = 53, 40, 41, 42, 72
POLYPHONY_TEMPO = 120.0


@dataclass(frozen=True)
class Collection:
    """One collection of music21's corpus and the rules that turn its files into captioned pieces."""

    name: str
    kind: str  # "abc" (symusic, many tunes per file) or "score" (music21, one piece per file)
    folders: tuple[str, ...]  # under the music21 corpus folder
    suffixes: tuple[str, ...]
    style: str  # the style label (ABC collections refine it per tune)
    program: int | None  # GM program of every part; None: QUARTET_PROGRAMS by part order
    composer: str | None = None
    region: str | None = None


MUSIC21_COLLECTIONS: dict[str, Collection] = {c.name: c for c in (
    Collection("essenFolksong", "abc", ("essenFolksong",), (".abc",), "German folk song", VOICE),
    Collection("oneills1850", "abc", ("oneills1850",), (".abc",), "Irish dance tune", VIOLIN, region="Ireland"),
    Collection("ryansMammoth", "abc", ("ryansMammoth",), (".abc",), "American dance tune", VIOLIN,
               region="North America"),
    Collection("airdsAirs", "abc", ("airdsAirs",), (".abc",), "Scottish air", VIOLIN, region="Scotland"),
    Collection("miscFolk", "abc", ("miscFolk",), (".abc",), "Northumbrian tune", VIOLIN),
    Collection("palestrina", "score", ("palestrina",), (".krn",), "Renaissance mass", VOICE,
               "Giovanni Pierluigi da Palestrina", "Italy"),
    Collection("monteverdi", "score", ("monteverdi",), (".mxl",), "Italian madrigal", VOICE,
               "Claudio Monteverdi", "Italy"),
    Collection("trecento", "score", ("trecento",), (".xml", ".mxl"), "Trecento song", VOICE, region="Italy"),
    Collection("bach", "score", ("bach",), (".mxl", ".xml", ".krn"), "Bach chorale", VOICE,
               "Johann Sebastian Bach", "Germany"),
    Collection("quartets", "score", ("beethoven", "mozart", "haydn"), (".mxl",), "Classical quartet", None),
)}
DEFAULT_COLLECTIONS = tuple(n for n in MUSIC21_COLLECTIONS if n != "quartets")  # quartets: slow, opt-in
FOLK_COLLECTIONS = tuple(n for n, c in MUSIC21_COLLECTIONS.items() if c.kind == "abc")
"""The tune books (ABC, read by symusic): folk songs and dance tunes in many styles and metres and (for the
Scottish books) real tempi, built in about a minute on 2 cores: the `folk` corpus of the demo's text stage
(the score collections take five minutes more, most of it the Palestrina masses). Its size: docs/results.md."""
QUARTET_PROGRAMS = (VIOLIN, VIOLIN, VIOLA, CELLO)
QUARTET_WORKS = {"beethoven": "Ludwig van Beethoven", "mozart": "Wolfgang Amadeus Mozart", "haydn": "Joseph Haydn"}
NOT_QUARTETS = ("k545", "opus133")  # a piano sonata and the Grosse Fuge file of the same folders

def default_music21_dir() -> Path:
    """Where the music21 corpus lives by default: cache_root()/music21 (midi/ and shards/ inside)."""
    return cache_root() / "music21"


def default_folk_dir() -> Path:
    """Where the folk corpus (FOLK_COLLECTIONS) lives by default: cache_root()/folk."""
    return cache_root() / "folk"


def music21_corpus_dir() -> Path:
    """The corpus folder of the installed music21 package."""
    import music21

    return Path(music21.__file__).parent / "corpus"


def abc_metadata(collection: str, file_stem: str, tune: str) -> dict[str, Any]:
    """Style, region, title, dance and tempo (with its source) of one ABC tune of a collection."""
    coll = MUSIC21_COLLECTIONS[collection]
    fields = abc_fields(tune)
    title = (fields.get("T") or [""])[0] or None
    num, den = abc_metre(fields)
    unit = abc_fraction((fields.get("L") or [""])[0]) or (1 / 16 if num / den < 0.75 else 1 / 8)
    meta: dict[str, Any] = {"collection": collection, "title": title, "region": coll.region,
                            "composer": ((fields.get("C") or [None])[0]) or coll.composer, "dance": None}
    program = coll.program
    if collection == "essenFolksong":
        meta["style"], meta["region"] = essen_style((fields.get("O") or [None])[0])
    else:
        kind = dance_kind(fields)
        meta["dance"] = kind
        if collection == "miscFolk" and "fife" in file_stem.lower():
            base, program, meta["region"] = "American fife tune", PICCOLO, "North America"
        else:
            base = coll.style
        prefix = {"oneills1850": "Irish", "ryansMammoth": "American", "airdsAirs": "Scottish"}.get(collection)
        if collection == "miscFolk" and "fife" not in file_stem.lower():
            prefix, meta["region"] = "Northumbrian", "Northumbria"
        meta["style"] = f"{prefix} {kind}" if prefix and kind else base
    bpm = parse_abc_tempo((fields.get("Q") or [None])[0], unit)
    meta["tempo_source"] = "source" if bpm else "default"
    if bpm is None:
        quarter = DANCE_TEMPO.get(meta["dance"] or "")
        beat = SONG_BEAT if collection == "essenFolksong" or meta["dance"] == "air" \
            or (collection == "airdsAirs" and not meta["dance"]) else TUNE_BEAT
        bpm = float(quarter) if quarter else beat * beat_quarters(num, den)
    meta["tempo"] = round(bpm, 2)
    meta["program"] = program
    return meta


# ----------------------------------------------------------------------------------------------
# the pieces of a collection (in the parent) and their conversion (in the workers)


def _score_paths(coll: Collection, root: Path) -> list[Path]:
    """Score files of a score collection; one encoding per piece (MusicXML before Humdrum)."""
    best: dict[str, Path] = {}
    for folder in coll.folders:
        for p in sorted((root / folder).rglob("*")):
            suffix = p.suffix.lower()
            if not p.is_file() or suffix not in coll.suffixes:
                continue
            rel = p.relative_to(root / folder).with_suffix("").as_posix()
            if coll.name == "bach" and p.stem.lower() == "bwv846":
                continue  # the keyboard prelude, not a chorale
            if coll.name == "quartets" and any(x in rel for x in NOT_QUARTETS):
                continue
            key = f"{folder}/{rel}"
            if key not in best or coll.suffixes.index(suffix) < coll.suffixes.index(best[key].suffix.lower()):
                best[key] = p
    return [best[k] for k in sorted(best)]


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "piece"


def list_tasks(collections: Sequence[str], root: Path, out_dir: Path) -> list[tuple[str, dict[str, Any]]]:
    """(location, task) of every piece of the collections: ABC files split into tunes, scores as files."""
    tasks: list[tuple[str, dict[str, Any]]] = []
    for name in collections:
        coll = MUSIC21_COLLECTIONS[name]
        if coll.kind == "abc":
            for folder in coll.folders:
                for path in sorted((root / folder).glob("*.abc")):
                    text = path.read_text(encoding="latin-1")
                    for i, tune in enumerate(split_abc(text), 1):
                        loc = f"{name}/{_safe(path.stem)}_{i:04d}.mid"
                        meta = abc_metadata(name, path.stem, tune)
                        tasks.append((loc, {"kind": "abc", "text": tune, "meta": meta, "out": str(out_dir),
                                            "location": loc, "source": f"{folder}/{path.name}#{i}"}))
        else:
            for path in _score_paths(coll, root):
                rel = path.relative_to(root).as_posix()
                loc = f"{name}/{_safe(str(Path(rel).with_suffix('')).replace('/', '_'))}.mid"
                meta = {"collection": name, "style": coll.style, "region": coll.region, "dance": None,
                        "composer": coll.composer or QUARTET_WORKS.get(rel.split("/")[0]),
                        "title": None, "program": coll.program, "tempo": POLYPHONY_TEMPO}
                tasks.append((loc, {"kind": "score", "path": str(path), "meta": meta, "out": str(out_dir),
                                    "location": loc, "source": rel}))
    return tasks


_TOKENIZER: list[Any] = []
_TMPDIR: list[str] = []


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return re.sub(r"/\S+/", "", text.splitlines()[0])[:80] if text else type(e).__name__


class _Quiet:
    """Send this process's stdout and stderr file descriptors to /dev/null (C code writes there)."""

    def __enter__(self) -> _Quiet:
        import sys

        sys.stdout.flush()
        sys.stderr.flush()
        self.saved = (os.dup(1), os.dup(2))
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 1)
        os.dup2(null, 2)
        os.close(null)
        return self

    def __exit__(self, *exc: Any) -> None:
        for fd, saved in zip((1, 2), self.saved):
            os.dup2(saved, fd)
            os.close(saved)


def _load_abc(text: str, meta: dict[str, Any]):
    import symusic

    from amadeus.workers import SkipFile

    if not _TMPDIR:  # symusic runs abc2midi on temporary files: a private folder per worker, no clashes
        import tempfile

        _TMPDIR.append(tempfile.mkdtemp(prefix="amadeus-abc-"))
        os.environ["TMPDIR"] = _TMPDIR[0]
    text = strip_ornaments(text)
    for attempt in (1, 2):  # a failed temporary file is retried once
        try:
            with _Quiet():
                score = symusic.Score.from_abc(text)
            break
        except Exception as e:  # noqa: BLE001 - symusic raises RuntimeError with the parser's message
            if attempt == 2:
                raise SkipFile(f"unreadable ABC ({_first_line(e)})") from None
    score.tempos = [symusic.Tempo(0, qpm=float(meta["tempo"]))]
    _snap(score)
    return score


def _snap(score, per_quarter: int = 48) -> None:
    """Onsets and ends to a grid of 1/48 quarter: abc2midi starts each note one tick late and ends it
    one tick early (a gap between notes), which would put every note off the tokenizer's grid."""
    import numpy as np
    import symusic

    g = score.ticks_per_quarter // per_quarter
    if g <= 1 or score.ticks_per_quarter % per_quarter:
        return
    for track in score.tracks:
        a = track.notes.numpy()
        start = (a["time"].astype(np.int64) + g // 2) // g * g
        end = (a["time"].astype(np.int64) + a["duration"] + g // 2) // g * g
        track.notes = symusic.Note.from_numpy(start.astype(np.int32), np.maximum(end - start, g).astype(np.int32),
                                              a["pitch"], a["velocity"])


def _load_music21(path: str, meta: dict[str, Any]):
    import warnings

    import symusic
    from music21 import converter, tempo

    from amadeus.corpus.bach import music21_to_score

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m21 = converter.parse(path)
    marks = [m for m in m21.recurse().getElementsByClass(tempo.MetronomeMark) if m.number or m.numberSounding]
    md = m21.metadata
    if md is not None:
        meta["title"] = md.title or md.movementName or meta["title"]
        meta["composer"] = meta["composer"] or md.composer
    score = music21_to_score(m21)
    meta["tempo_source"] = "source" if marks else "default"
    if not marks:
        score.tempos = [symusic.Tempo(0, qpm=float(meta["tempo"]))]
    return score


def convert_piece(task: dict[str, Any]) -> dict[str, Any]:
    """One piece -> OUT/<location> (MIDI, written atomically) and its captions.jsonl record with the
    statistics of the build (notes, fidelity, content key)."""
    from amadeus.captions import make_caption
    from amadeus.features import extract_features
    from amadeus.workers import SkipFile
    from amadeus.tokenizer import NoteTokenizer

    meta = dict(task["meta"])
    score = _load_abc(task["text"], meta) if task["kind"] == "abc" else _load_music21(task["path"], meta)
    if score.note_num() == 0:
        raise SkipFile("no notes")
    for i, track in enumerate(score.tracks):
        track.is_drum = False
        track.program = meta["program"] if meta["program"] is not None else QUARTET_PROGRAMS[min(i, 3)]
    target = Path(task["out"]) / task["location"]
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".tmp")
    score.dump_midi(str(tmp))
    os.replace(tmp, target)
    if not _TOKENIZER:
        _TOKENIZER.append(NoteTokenizer())
    fid = _TOKENIZER[0].fidelity(score)
    features = extract_features(score)
    features.update(style=meta["style"], composer=meta["composer"])
    caption = make_caption(features, rng=random.Random(task["location"]))
    info = {k: meta[k] for k in ("collection", "region", "title", "dance", "tempo_source")}
    return {"location": task["location"], "caption": caption, **features, **info, "source": task["source"],
            "content_key": content_key(score), "melody_key": melody_key(score), "_notes": fid.notes, "_exact": fid.exact, "_lost": fid.lost}


# ----------------------------------------------------------------------------------------------
# the build


@dataclass
class Music21Report(CorpusBuild):
    """A music21 corpus build (CorpusBuild): its collections and what it holds per style."""

    collections: list[str] = field(default_factory=list)
    pieces: int = 0
    notes: int = 0
    styles: dict[str, dict[str, Any]] = field(default_factory=dict)  # style -> statistics (STYLE_STATS)

    @property
    def pieces_list(self) -> Path:
        """OUT/pieces.txt: the MIDI files of this build (OUT may hold other collections too)."""
        return self.out_dir / PIECES

    @property
    def fidelity(self) -> float:
        """Percent of all notes that survive the tokenizer's encode -> decode exactly."""
        exact = sum(s["exact"] for s in self.styles.values())
        return 100.0 * exact / self.notes if self.notes else 100.0

    def summary(self) -> str:
        """One line: pieces, styles, notes, fidelity, what was lost or skipped, where, from what."""
        lost: Counter[str] = Counter()
        for s in self.styles.values():
            lost.update(s["lost"])
        lost_text = ", ".join(f"{k} {v}" for k, v in sorted(lost.items()) if v) or "none"
        how = "cached" if self.cached else f"built in {self.seconds:.0f} s"
        return (f"{self.pieces} pieces in {len(self.styles)} styles, {self.notes} notes, fidelity "
                f"{self.fidelity:.2f}% (lost: {lost_text}), {len(self.skipped)} skipped; {how} -> "
                f"{self.out_dir} (music21 {self.music21}; collections: {', '.join(self.collections)})")



def _new_style() -> dict[str, Any]:
    return {"pieces": 0, "notes": 0, "exact": 0, "lost": {}, "skipped": 0, "skip_reasons": {},
            "time_signatures": {}, "tempo_sources": {}, "splits": {"train": 0, "validation": 0, "test": 0}}


def _style_stats(records: Iterable[Mapping[str, Any]], skipped: Iterable[Mapping[str, str]],
                 split: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    styles: dict[str, dict[str, Any]] = {}
    for r in records:
        s = styles.setdefault(r["style"], _new_style())
        s["pieces"] += 1
        s["notes"] += r["_notes"]
        s["exact"] += r["_exact"]
        for k, v in r["_lost"].items():
            s["lost"][k] = s["lost"].get(k, 0) + int(v)
        for key, value in (("time_signatures", r["time_signature"]), ("tempo_sources", r["tempo_source"])):
            s[key][value] = s[key].get(value, 0) + 1
        s["splits"][split[r["location"]]] += 1
    for x in skipped:
        s = styles.setdefault(x["style"], _new_style())
        s["skipped"] += 1
        reason = re.sub(r"\d+(\.\d+)?", "N", x["reason"])[:60]
        s["skip_reasons"][reason] = s["skip_reasons"].get(reason, 0) + 1
    return dict(sorted(styles.items(), key=lambda kv: -kv[1]["pieces"]))


def _config(collections: Sequence[str], corpus_dir: Path | None) -> dict[str, Any]:
    return {"corpus": "music21", "format": MUSIC21_FORMAT, "split": SPLIT_VERSION, "collections": list(collections),
            "corpus_dir": str(corpus_dir) if corpus_dir is not None else None}


def _cached(out: Path, config: dict[str, Any], version: str, t0: float) -> Music21Report | None:
    stamp = _read_stamp(out / STAMP)
    if not stamp or stamp.get("music21") != version or stamp.get("config") != config \
            or not (out / CAPTIONS).is_file() or not (out / PIECES).is_file() \
            or not all((out / n).is_file() for n in stamp["locations"]):
        return None
    return Music21Report(out, stamp["skipped"], version, time.perf_counter() - t0, cached=True,
                         moved=stamp.get("moved", {}), collections=config["collections"], pieces=stamp["pieces"], notes=stamp["notes"],
                         styles=stamp["styles"])


def _convert_all(tasks: list[tuple[str, dict[str, Any]]], workers: int, timeout: float, progress: bool,
                 desc: str = "music21 corpus") -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """Run convert_piece over the tasks in worker processes (workers=0: in this process, no timeout):
    (records, skipped)."""
    from tqdm.auto import tqdm

    from amadeus.workers import WorkerPool

    meta = {loc: task for loc, task in tasks}
    records: list[dict[str, Any]] = []
    skipped: list[dict[str, str]] = []
    with tqdm(total=len(tasks), unit="piece", desc=desc, disable=not progress, mininterval=0.5,
              dynamic_ncols=True) as bar:
        with WorkerPool(convert_piece, workers, timeout=timeout) if workers else nullcontext() as pool:
            for key, ok, result in (pool.imap_unordered(tasks) if workers else _inline(tasks)):
                if ok:
                    records.append(result)
                else:
                    skipped.append({"path": meta[key]["source"], "style": meta[key]["meta"]["style"],
                                    "reason": str(result).splitlines()[0] if str(result) else "failed"})
                bar.update(1)
    records.sort(key=lambda r: r["location"])
    skipped.sort(key=lambda x: x["path"])
    return records, skipped


def _collection(name: str, root: Path, out: Path, config: dict[str, Any], version: str, workers: int,
                timeout: float, progress: bool) -> dict[str, Any]:
    """Records and skipped pieces of one collection, from its stamp OUT/<name>/collection.json when
    that matches, else converted (and stamped)."""
    import json

    stamp_path = out / name / "collection.json"
    key = {"music21": version, "format": MUSIC21_FORMAT, "corpus_dir": config["corpus_dir"]}
    cached = _read_stamp(stamp_path)
    if cached and cached.get("key") == key and all((out / r["location"]).is_file() for r in cached["records"]):
        return cached
    tasks = list_tasks([name], root, out)
    records, skipped = _convert_all(tasks, min(workers, max(1, len(tasks))), timeout, progress, name)
    done = {"key": key, "records": records, "skipped": skipped}
    stamp_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = stamp_path.with_name(stamp_path.name + ".tmp")
    tmp.write_text(json.dumps(done, default=str))
    os.replace(tmp, stamp_path)
    return done


def _add_melody_keys(records: list[dict[str, Any]], out: Path) -> None:
    """Give records converted before melody keys existed (cached collections) the key of their MIDI file."""
    import symusic

    for r in records:
        if not r.get("melody_key"):
            r["melody_key"] = melody_key(symusic.Score(str(out / r["location"])))


def _inline(tasks: Iterable[tuple[str, dict[str, Any]]]) -> Iterable[tuple[str, bool, Any]]:
    for key, task in tasks:
        try:
            yield key, True, convert_piece(task)
        except Exception as e:  # noqa: BLE001 - SkipFile and any other failure cost only this piece
            yield key, False, str(e) or type(e).__name__


def build_music21_corpus(out_dir: str | os.PathLike | None = None, collections: Sequence[str] | None = None,
                         workers: int | None = None, timeout: float = 120.0, progress: bool = True,
                         corpus_dir: str | os.PathLike | None = None) -> Music21Report:
    """Convert the music21 collections to OUT/<collection>/*.mid + captions.jsonl + corpus.json.

    out_dir: default default_music21_dir()/"midi"; collections: names of MUSIC21_COLLECTIONS (default
    DEFAULT_COLLECTIONS); workers: processes (default: CPU cores; 0: convert in this process, for
    tests and profiling); timeout: seconds per piece;
    corpus_dir: another folder laid out like music21's corpus (tests). Cached by the stamp: a second
    call with the same music21 version and options returns at once. Raises ValueError for an unknown
    collection name.
    """
    import music21

    from amadeus.workers import default_workers

    t0 = time.perf_counter()
    names = list(DEFAULT_COLLECTIONS if collections is None else dict.fromkeys(collections))
    unknown = [n for n in names if n not in MUSIC21_COLLECTIONS]
    if unknown or not names:
        raise ValueError(f"unknown music21 collection(s) {unknown or names}; choose from {', '.join(MUSIC21_COLLECTIONS)}")
    out = Path(out_dir) if out_dir is not None else default_music21_dir() / "midi"
    config = _config(names, Path(corpus_dir) if corpus_dir is not None else None)
    hit = _cached(out, config, music21.__version__, t0)
    if hit is not None:
        return hit
    out.mkdir(parents=True, exist_ok=True)
    root = Path(corpus_dir) if corpus_dir is not None else music21_corpus_dir()
    records, skipped = [], []
    n_workers = default_workers() if workers is None else max(0, workers)
    for name in names:  # one collection at a time, each cached: an interrupted build keeps what it finished
        done = _collection(name, root, out, config, music21.__version__, n_workers, timeout, progress)
        records += done["records"]
        skipped += done["skipped"]
    records.sort(key=lambda r: r["location"])
    _add_melody_keys(records, out)
    previous = previous_splits(out / CAPTIONS, out.parent / "shards")  # before the captions are rewritten
    split = assign_splits(records)
    moved = moved_pieces(previous, split)
    _write_jsonl(out / CAPTIONS, [{**{k: v for k, v in r.items() if not k.startswith("_")},
                                   "split": split[r["location"]]} for r in records])
    kept = {r["location"] for r in records}
    for stale in (p for name in names for p in (out / name).rglob("*.mid")):  # from an earlier build
        if stale.relative_to(out).as_posix() not in kept:
            stale.unlink()
    (out / PIECES).write_text("".join(f"{loc}\n" for loc in sorted(kept)))  # what preprocess reads
    styles = _style_stats(records, skipped, split)
    notes = sum(s["notes"] for s in styles.values())
    report = Music21Report(out, skipped, music21.__version__, time.perf_counter() - t0, moved=moved,
                           collections=names, pieces=len(records), notes=notes, styles=styles)
    _write_stamp(out / STAMP, {"music21": music21.__version__, "config": config, "pieces": len(records),
                               "notes": notes, "styles": styles, "skipped": skipped, "seconds": report.seconds,
                               "locations": sorted(kept), "moved": moved})
    return report


def build_music21_shards(root: str | os.PathLike | None = None, collections: Sequence[str] | None = None,
                         workers: int | None = None, timeout: float = 120.0, progress: bool = True,
                         corpus_dir: str | os.PathLike | None = None):
    """The corpus (root/midi) and its shards (root/shards, by amadeus.preprocess with the corpus'
    captions and splits): (Music21Report, PreprocessReport). Both steps are cached."""
    from amadeus.preprocess import preprocess

    root = Path(root) if root is not None else default_music21_dir()
    report = build_music21_corpus(root / "midi", collections, workers, timeout, progress, corpus_dir)
    pre = preprocess(report.pieces_list, root / "shards", captions=report.captions, splits=report.splits(),
                     workers=workers, shard_size=MUSIC21_SHARD_SIZE, timeout=timeout, progress=progress)
    return report, pre


def ensure_music21_shards(root: str | os.PathLike | None = None, workers: int | None = None,
                          progress: bool = True, collections: Sequence[str] | None = None) -> Path:
    """The music21 corpus (or the given collections of it) as shards (root/shards), built when missing;
    concurrent callers (several jobs, one process per node) take turns on a lock file in root, and the
    later ones find it cached."""
    from filelock import FileLock

    root = Path(root) if root is not None else default_music21_dir()
    root.mkdir(parents=True, exist_ok=True)
    with FileLock(root / ".lock"):
        build_music21_shards(root, collections, workers=workers, progress=progress)
    return root / "shards"


def ensure_folk_shards(root: str | os.PathLike | None = None, workers: int | None = None,
                       progress: bool = True) -> Path:
    """The folk corpus (FOLK_COLLECTIONS of music21's corpus) as shards, in default_folk_dir() unless
    `root` is given; built when missing (about a minute on 2 cores)."""
    return ensure_music21_shards(root if root is not None else default_folk_dir(), workers, progress,
                                 FOLK_COLLECTIONS)


# ----------------------------------------------------------------------------------------------
# the statistics table


def _share(counter: Mapping[str, int], key: str, total: int) -> str:
    return f"{100.0 * counter.get(key, 0) / total:.0f}%" if total else "-"


def format_music21_report(report: Music21Report) -> str:
    """The per-style statistics as a Markdown table (style, pieces, notes, fidelity, 3/4, 6/8, real
    tempo, test pieces, skipped with reasons), then the totals."""
    lines = ["| style | pieces | notes | fidelity | 3/4 | 6/8 | tempo from source | test | skipped |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for style, s in report.styles.items():
        fid = f"{100.0 * s['exact'] / s['notes']:.2f}%" if s["notes"] else "-"
        reasons = "; ".join(f"{v} {k}" for k, v in sorted(s["skip_reasons"].items(), key=lambda kv: -kv[1])[:2])
        lines.append(f"| {style} | {s['pieces']} | {s['notes']} | {fid} | "
                     f"{_share(s['time_signatures'], '3/4', s['pieces'])} | "
                     f"{_share(s['time_signatures'], '6/8', s['pieces'])} | "
                     f"{_share(s['tempo_sources'], 'source', s['pieces'])} | {s['splits']['test']} | "
                     f"{s['skipped']}{' (' + reasons + ')' if reasons else ''} |")
    lines.append("\n" + report.summary())
    return "\n".join(lines)
