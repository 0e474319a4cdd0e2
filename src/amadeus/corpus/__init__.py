"""Embedded corpora built offline from the installed music21 package, and their registry.

- `bach` (amadeus.corpus.bach): the 409 Bach chorales, small and fast (quick demo, tests).
- `folk`: the tune books of music21's corpus (FOLK_COLLECTIONS: the folk songs and dance tunes, built in
  about a minute): the demo's text-to-MIDI corpus.
- `music21` (amadeus.corpus.music21): every readable piece of the collections of music21's corpus
  (folk songs, Irish / Scottish / American dance tunes, Renaissance masses, madrigals, chorales, ...),
  each with a style label and a caption.

`CORPORA` is the one registry (name -> default folder, shard builder) that the DataModule and
`amadeus corpus` read; the sizes of the corpora are in docs/results.md ("Corpora").
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from amadeus.corpus.bach import (BACH_SHARD_SIZE, CORPUS_FORMAT, CorpusReport, CorpusStats,
                                 bach_chorale_paths, build_bach_corpus, chorale_to_score, convert_chorale,
                                 corpus_statistics, default_bach_dir, ensure_bach_shards, midi_name,
                                 music21_to_score)
from amadeus.corpus.common import CAPTIONS, STAMP, CorpusBuild, cache_root
from amadeus.corpus.music21 import (DEFAULT_COLLECTIONS, FOLK_COLLECTIONS, MUSIC21_COLLECTIONS, Music21Report,
                                    build_music21_corpus, build_music21_shards, default_folk_dir,
                                    default_music21_dir, ensure_folk_shards, ensure_music21_shards,
                                    format_music21_report)


@dataclass(frozen=True)
class Corpus:
    """An embedded corpus: where it lives by default (`default_dir()/midi` and `/shards`) and the function
    that builds its shards when they are missing (cached: a second call costs a few file reads)."""

    name: str
    description: str
    default_dir: Callable[[], Path]
    ensure_shards: Callable[..., Path]

    def shards_dir(self) -> Path:
        """Its shard folder in the default place (built or not)."""
        return self.default_dir() / "shards"


CORPORA: dict[str, Corpus] = {c.name: c for c in (
    Corpus("bach", "the Bach chorales", default_bach_dir, ensure_bach_shards),
    Corpus("folk", "the folk songs and dance tunes of music21's ABC tune books", default_folk_dir, ensure_folk_shards),
    Corpus("music21", "every collection of music21's corpus (folk, dances, masses, madrigals, chorales)",
           default_music21_dir, ensure_music21_shards),
)}

__all__ = [
    "BACH_SHARD_SIZE", "CAPTIONS", "CORPORA", "CORPUS_FORMAT", "Corpus", "CorpusBuild", "CorpusReport",
    "CorpusStats", "DEFAULT_COLLECTIONS", "FOLK_COLLECTIONS", "MUSIC21_COLLECTIONS", "Music21Report", "STAMP",
    "bach_chorale_paths", "build_bach_corpus", "build_music21_corpus", "build_music21_shards", "cache_root",
    "chorale_to_score", "convert_chorale", "corpus_statistics", "default_bach_dir", "default_folk_dir",
    "default_music21_dir", "ensure_bach_shards", "ensure_folk_shards", "ensure_music21_shards",
    "format_music21_report", "midi_name", "music21_to_score",
]
