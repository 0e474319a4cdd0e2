"""The embedded corpus: the Bach chorales of the installed music21 corpus, as MIDI, with captions.

Nothing is downloaded: music21 ships about 410 chorale scores (MusicXML, a few Humdrum files). Each
is converted to MIDI in a worker process (bounded by a timeout; failures are skipped and reported),
with three fixes over music21's own MIDI export:
- pickup bars: music21 writes the anacrusis at tick 0, so every MIDI bar line would fall a beat off.
  The notes are shifted right by the missing part of the first bar (measure.paddingLeft), so the
  upbeat ends the first bar and the bar lines of the MIDI file match the score.
- irregular bars: the time signatures of the MIDI file follow the score's measures (a bar split in
  two around a repeat sign counts as one bar; any other short or long bar gets its own signature),
  instead of music21's repeated signature events, which restart the bar grid mid-bar.
- instruments: parts without a MIDI program get one from their name (music21's instrument table:
  Soprano/Alto/Tenor/Bass -> voice, Oboe -> oboe, ...), instead of all becoming piano.

The output folder holds NAME.mid files, captions.jsonl (MidiCaps format: `location`, `caption`, plus
the feature fields of amadeus.features, the piece's `melody_key` and `split`: amadeus.corpus.splits, the
same rule as every corpus) and corpus.json, a stamp with the music21 version and the
corpus config: a second build with the same stamp returns at once. `amadeus corpus bach OUT` builds
OUT/midi, preprocesses it into OUT/shards and prints statistics.
"""
from __future__ import annotations

import json
import os
import random
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from amadeus.corpus.common import CAPTIONS, STAMP, CorpusBuild, _read_stamp, _write_jsonl, cache_root
from amadeus.corpus.splits import SPLIT_VERSION, assign_splits, melody_key, moved_pieces, previous_splits

CORPUS_FORMAT = 2  # bump when the conversion or the captions change: cached corpora are rebuilt (2: splits)
BACH_SUFFIXES = (".mxl", ".xml", ".musicxml", ".krn")
NOT_CHORALES = {"bwv846"}  # the C major prelude (keyboard) lives in the same corpus folder
BACH_SHARD_SIZE = 100  # files per shard for the embedded corpus: several shards, so workers share them


def default_bach_dir() -> Path:
    """Where the embedded corpus lives by default: cache_root()/bach (midi/ and shards/ inside)."""
    return cache_root() / "bach"


def bach_chorale_paths() -> list[Path]:
    """Score files of the Bach chorales in the installed music21 corpus, sorted by file name.

    Roman-numeral analyses (.rntxt) and the keyboard prelude BWV 846 are left out; a chorale present
    in two encodings (bwv277.mxl and bwv277.krn) is taken once, MusicXML first, so that the same
    music cannot land in two splits.
    """
    from music21 import corpus

    best: dict[str, Path] = {}
    for p in map(Path, corpus.getComposer("bach")):
        suffix, stem = p.suffix.lower(), _stem(p)
        if suffix not in BACH_SUFFIXES or stem in NOT_CHORALES:
            continue
        if stem not in best or BACH_SUFFIXES.index(suffix) < BACH_SUFFIXES.index(best[stem].suffix.lower()):
            best[stem] = p
    return sorted(best.values(), key=lambda p: p.name)


def _stem(path: Path) -> str:
    name = path.name
    for suffix in BACH_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def midi_name(path: str | Path) -> str:
    """Deterministic MIDI file name of a corpus score: bach/bwv1.6.mxl -> bwv1.6.mid."""
    return _stem(Path(path)) + ".mid"


# ----------------------------------------------------------------------------------------------
# one score -> MIDI (runs in the workers)


def _pickup_quarters(score) -> float:
    """Quarter notes missing from an incomplete first bar (the anacrusis), 0 when it is complete."""
    for part in score.parts:
        measures = part.getElementsByClass("Measure")
        if not measures:
            continue
        first = measures[0]
        pad = float(first.paddingLeft or 0.0)
        if pad == 0.0 and first.barDuration is not None:
            missing = float(first.barDuration.quarterLength) - float(first.duration.quarterLength)
            if missing > 0 and first.number in (0, 1):
                pad = missing
        return pad
    return 0.0


def _signature_for(quarters: float) -> tuple[int, int]:
    """The n/d signature of a bar lasting `quarters` (3.0 -> 3/4, 1.5 -> 3/8)."""
    for d in (4, 8, 16, 32):
        n = quarters * d / 4
        if abs(n - round(n)) < 1e-6 and round(n) >= 1:
            return int(round(n)), d
    return max(1, int(round(quarters))), 4


def _bar_signatures(score, pickup: float) -> list[tuple[float, int, int]]:
    """(onset in quarters after the pickup shift, n, d) wherever the bar length changes.

    Bars follow the measures of the first part: the pickup joins bar 0; a bar split in two around a
    repeat sign (3 + 1 beats) counts as one bar; any other irregular bar gets its own signature, so
    the MIDI bar grid stays on the score's bar lines after it. The last bar never needs one.
    """
    from music21 import meter

    part = next((p for p in score.parts if p.getElementsByClass("Measure")), None)
    if part is None:
        return []
    measures = list(part.getElementsByClass("Measure"))
    current = next(iter(part.recurse().getElementsByClass(meter.TimeSignature)), None) or meter.TimeSignature("4/4")
    plan: list[tuple[float, int, int]] = []
    last = None
    i = 0
    while i < len(measures):
        m = measures[i]
        current = m.timeSignature or current
        nominal = float(current.barDuration.quarterLength)
        start = 0.0 if i == 0 else float(m.offset) + pickup
        length = nominal if (i == 0 and pickup > 0) else float(m.duration.quarterLength)
        j = i + 1
        while length < nominal and j < len(measures) and measures[j].timeSignature is None \
                and length + float(measures[j].duration.quarterLength) <= nominal + 1e-9:
            length += float(measures[j].duration.quarterLength)
            j += 1
        if abs(length - nominal) < 1e-9 or j >= len(measures):
            sig = (current.numerator, current.denominator)
        else:
            sig = _signature_for(length)
        if sig != last:
            plan.append((start, *sig))
            last = sig
        i = j
    return plan


def _name_programs(score) -> None:
    """Give parts without a MIDI program the program of the instrument their name names."""
    from music21 import instrument

    for part in score.parts:
        inst = part.getInstrument(returnDefault=False)
        if inst is not None and inst.midiProgram is not None:
            continue
        name = (part.partName or (inst.instrumentName if inst is not None else None) or "").strip()
        if not name:
            continue
        try:
            guess = instrument.fromString(name)
        except Exception:  # noqa: BLE001 - music21 raises InstrumentException for unknown names
            continue
        if guess.midiProgram is None:
            continue
        if inst is None:
            part.insert(0, guess)
        else:
            inst.midiProgram = guess.midiProgram


def chorale_to_score(path: str | Path):
    """A music21 corpus score -> symusic Score with bar-aligned pickup and named programs."""
    from music21 import converter

    with warnings.catch_warnings():  # music21 warns about MIDI channel juggling; not our concern
        warnings.simplefilter("ignore")
        m21 = converter.parse(str(path))
    return music21_to_score(m21)


def music21_to_score(m21):
    """A parsed music21 score -> symusic Score (the fixes of the module docstring; parts renamed in place)."""
    import symusic
    from music21 import midi

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _name_programs(m21)
        pickup = _pickup_quarters(m21)
        data = midi.translate.music21ObjectToMidiFile(m21).writestr()
    score = symusic.Score.from_midi(data)
    if pickup > 0:
        shift = int(round(pickup * score.ticks_per_quarter))
        score = score.shift_time(shift)
        for events in (score.time_signatures, score.tempos, score.key_signatures):
            for ev in events:  # what music21 wrote at the start stays at the start
                if ev.time == shift:
                    ev.time = 0
    plan = _bar_signatures(m21, pickup)
    if plan:  # the score's own bars (pickup, irregular bars), not music21's repeated signature events
        score.time_signatures = [symusic.TimeSignature(round(q * score.ticks_per_quarter), n, d) for q, n, d in plan]
    return score


def convert_chorale(task: tuple[str, str]) -> dict[str, Any]:
    """(score path, out dir) -> writes NAME.mid (atomically) and returns its captions.jsonl record."""
    from amadeus.captions import make_caption
    from amadeus.features import extract_features

    src, out_dir = task
    name = midi_name(src)
    score = chorale_to_score(src)
    if score.note_num() == 0:
        raise ValueError(f"{src}: no notes")
    target = Path(out_dir) / name
    tmp = target.with_name(target.name + ".tmp")
    score.dump_midi(str(tmp))
    os.replace(tmp, target)
    features = extract_features(score)
    caption = make_caption(features, rng=random.Random(name))
    return {"location": name, "caption": caption, **features, "melody_key": melody_key(score),
            "notes": int(score.note_num())}


# ----------------------------------------------------------------------------------------------
# the corpus


@dataclass
class CorpusReport(CorpusBuild):
    """A Bach corpus build (CorpusBuild) and the chorales it holds."""

    pieces: list[str] = field(default_factory=list)  # MIDI file names
    notes: int = 0


def _config(limit: int | None) -> dict[str, Any]:
    return {"corpus": "bach", "format": CORPUS_FORMAT, "split": SPLIT_VERSION, "limit": limit}


def build_bach_corpus(out_dir: str | os.PathLike | None = None, workers: int | None = None, timeout: float = 60,
                      limit: int | None = None, progress: bool = True) -> CorpusReport:
    """Convert the music21 Bach chorales to MIDI files + captions.jsonl in out_dir (cached by a stamp).

    workers: conversion processes (default: CPU cores); timeout: seconds per score; limit: only the
    first `limit` scores (tests). A score that fails or times out is skipped and listed in the report.
    """
    import music21

    from amadeus.workers import WorkerPool, default_workers

    t0 = time.perf_counter()
    out = Path(out_dir) if out_dir is not None else default_bach_dir() / "midi"
    stamp_path = out / STAMP
    config = _config(limit)
    cached = _read_stamp(stamp_path)
    if (cached and cached.get("music21") == music21.__version__ and cached.get("config") == config
            and (out / CAPTIONS).is_file() and all((out / n).is_file() for n in cached["pieces"])):
        return CorpusReport(out, cached["skipped"], cached["music21"], time.perf_counter() - t0, cached=True,
                            moved=cached.get("moved", {}), pieces=cached["pieces"], notes=cached["notes"])

    out.mkdir(parents=True, exist_ok=True)
    paths = bach_chorale_paths()[: limit if limit is not None else None]
    names = [midi_name(p) for p in paths]
    if len(set(names)) != len(names):
        raise RuntimeError("two corpus scores map to the same MIDI name; extend midi_name()")
    records: dict[str, dict[str, Any]] = {}
    skipped: list[dict[str, str]] = []
    tasks = [(str(p), (str(p), str(out))) for p in paths]
    n_workers = min(default_workers() if workers is None else max(1, workers), max(1, len(tasks)))
    from tqdm.auto import tqdm

    with tqdm(total=len(tasks), unit="score", desc="bach corpus", disable=not progress, mininterval=0.5) as bar:
        with WorkerPool(convert_chorale, n_workers, timeout=timeout) as pool:
            for key, ok, result in pool.imap_unordered(tasks):
                rel = _corpus_relative(key)
                if ok:
                    records[result["location"]] = result
                else:
                    skipped.append({"path": rel, "reason": str(result).splitlines()[0]})
                bar.update(1)
    pieces = sorted(records)
    previous = previous_splits(out / CAPTIONS, out.parent / "shards")  # before the captions are rewritten
    split = assign_splits(list(records.values()))
    _write_jsonl(out / CAPTIONS, [{**{k: v for k, v in records[n].items() if k != "notes"}, "split": split[n]}
                                  for n in pieces])
    moved = moved_pieces(previous, split)
    notes = sum(records[n]["notes"] for n in pieces)
    skipped.sort(key=lambda x: x["path"])
    for stale in out.glob("*.mid"):  # from an earlier, larger build
        if stale.name not in records:
            stale.unlink()
    stamp = {"music21": music21.__version__, "config": config, "pieces": pieces, "notes": notes, "skipped": skipped,
             "moved": moved}
    transient = any(x["reason"].startswith(("timed out", "worker")) for x in skipped)
    if transient:  # a timeout or a crashed worker may not happen again: no stamp, the next call retries
        stamp_path.unlink(missing_ok=True)
    else:
        tmp = stamp_path.with_name(STAMP + ".tmp")
        tmp.write_text(json.dumps(stamp, indent=1) + "\n")
        os.replace(tmp, stamp_path)
    return CorpusReport(out, skipped, music21.__version__, time.perf_counter() - t0, moved=moved, pieces=pieces,
                        notes=notes)


def _corpus_relative(path: str) -> str:
    parts = Path(path).parts
    return "/".join(parts[parts.index("corpus") + 1:]) if "corpus" in parts else Path(path).name


def ensure_bach_shards(root: str | os.PathLike | None = None, workers: int | None = None,
                       progress: bool = True) -> Path:
    """The embedded corpus as shards (root/shards), building MIDI (root/midi) and shards when missing.

    Both steps are cached (corpus stamp, finished shards), so a second call costs a few file reads.
    Concurrent callers (several jobs, or one process per node) take turns on a lock file in root:
    the first builds, the others then find everything cached.
    """
    from filelock import FileLock

    from amadeus.preprocess import preprocess

    root = Path(root) if root is not None else default_bach_dir()
    root.mkdir(parents=True, exist_ok=True)
    with FileLock(root / ".lock"):
        report = build_bach_corpus(root / "midi", workers=workers, progress=progress)
        shards = root / "shards"
        preprocess(report.out_dir, shards, captions=report.captions, splits=report.splits(), workers=workers,
                   shard_size=BACH_SHARD_SIZE, progress=progress)
    return shards


# ----------------------------------------------------------------------------------------------
# statistics


@dataclass
class CorpusStats:
    """Pieces, notes and tokenizer fidelity of a MIDI corpus (what `amadeus corpus` prints)."""

    pieces: int
    notes: int
    exact: int
    lost: dict[str, int]
    skipped: int

    @property
    def fidelity(self) -> float:
        """Percent of notes that survive encode -> decode exactly."""
        return 100.0 * self.exact / self.notes if self.notes else 100.0

    @property
    def sounding_fidelity(self) -> float:
        """Percent of the notes that sound (merged unisons apart) that survive exactly."""
        sounding = self.notes - self.lost.get("unison_merged", 0)
        return 100.0 * self.exact / sounding if sounding else 100.0

    def summary(self) -> str:
        lost = ", ".join(f"{k} {v}" for k, v in sorted(self.lost.items()) if v) or "none"
        sounding = (f", {self.sounding_fidelity:.2f}% of the notes that sound"
                    if self.lost.get("unison_merged") else "")
        return (f"{self.pieces} pieces, {self.notes} notes, fidelity {self.fidelity:.2f}%{sounding} "
                f"({self.exact} exact; lost: {lost}), {self.skipped} skipped")


def corpus_statistics(midi_dir: str | os.PathLike, tokenizer=None) -> CorpusStats:
    """Fidelity of every MIDI file of a corpus folder under `tokenizer` (default config)."""
    from amadeus.tokenizer import NoteTokenizer

    tokenizer = tokenizer or NoteTokenizer()
    midi_dir = Path(midi_dir)
    stamp = _read_stamp(midi_dir / STAMP) or {}
    files = sorted(midi_dir.glob("*.mid"))
    notes = exact = 0
    lost: dict[str, int] = {}
    bad = 0
    for f in files:
        try:
            rep = tokenizer.fidelity(f)
        except ValueError:
            bad += 1
            continue
        notes += rep.notes
        exact += rep.exact
        for k, v in rep.lost.items():
            lost[k] = lost.get(k, 0) + v
    return CorpusStats(len(files) - bad, notes, exact, lost, len(stamp.get("skipped", [])) + bad)
