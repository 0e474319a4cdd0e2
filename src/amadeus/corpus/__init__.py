"""Embedded corpora built offline from the installed music21 package.

- `bach` (amadeus.corpus.bach): the 409 Bach chorales, small and fast (quick demo, tests).
- `music21` (amadeus.corpus.music21): every readable piece of the collections of music21's corpus
  (folk songs, Irish / Scottish / American dance tunes, Renaissance masses, madrigals, chorales,
  ...), each with a style label and a caption.
- `folk`: the tune books of that corpus only (FOLK_COLLECTIONS: about 11,000 folk songs and dance tunes
  in about 45 styles, built in about a minute): the demo's text-to-MIDI corpus.
"""
from amadeus.corpus.bach import (BACH_SHARD_SIZE, CORPUS_FORMAT, CorpusReport, CorpusStats,
                                 bach_chorale_paths, build_bach_corpus, chorale_to_score, convert_chorale,
                                 corpus_statistics, default_bach_dir, ensure_bach_shards, midi_name,
                                 music21_to_score)
from amadeus.corpus.common import CAPTIONS, STAMP, cache_root
from amadeus.corpus.music21 import (DEFAULT_COLLECTIONS, FOLK_COLLECTIONS, MUSIC21_COLLECTIONS, Music21Report,
                                    build_music21_corpus, build_music21_shards, default_folk_dir,
                                    default_music21_dir, ensure_folk_shards, ensure_music21_shards,
                                    format_music21_report)

__all__ = [
    "BACH_SHARD_SIZE", "CAPTIONS", "CORPUS_FORMAT", "CorpusReport", "CorpusStats", "DEFAULT_COLLECTIONS",
    "FOLK_COLLECTIONS", "default_folk_dir", "ensure_folk_shards",
    "MUSIC21_COLLECTIONS", "Music21Report", "STAMP", "bach_chorale_paths", "build_bach_corpus",
    "build_music21_corpus", "build_music21_shards", "cache_root", "chorale_to_score", "convert_chorale", "corpus_statistics",
    "default_bach_dir", "default_music21_dir", "ensure_bach_shards", "ensure_music21_shards",
    "format_music21_report", "midi_name", "music21_to_score",
]
