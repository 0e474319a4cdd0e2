"""`amadeus corpus bach [OUT]`: build the embedded Bach corpus (MIDI + captions), its shards, statistics."""
from __future__ import annotations

import argparse
from pathlib import Path

from amadeus.commands._common import fail


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of `amadeus corpus`."""
    from amadeus.corpus import default_bach_dir

    parser.add_argument("name", choices=["bach"], help="which embedded corpus (the music21 Bach chorales)")
    parser.add_argument("out", nargs="?", default=None,
                        help=f"output folder (default {default_bach_dir()}): OUT/midi and OUT/shards")
    parser.add_argument("--midi-only", action="store_true", help="write the MIDI files and captions, no shards")
    parser.add_argument("--workers", type=int, default=None, help="worker processes (default: CPU cores)")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per score before it is skipped")
    parser.add_argument("--limit", type=int, default=None, help="only the first N scores")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    """Build (or reuse) the corpus, preprocess it unless --midi-only, print what was done."""
    from amadeus.corpus import BACH_SHARD_SIZE, build_bach_corpus, corpus_statistics, default_bach_dir
    from amadeus.preprocess import preprocess

    root = Path(args.out) if args.out else default_bach_dir()
    if args.limit is not None and args.limit < 1:
        return fail("corpus", "--limit must be >= 1", prefix="")
    report = build_bach_corpus(root / "midi", workers=args.workers, timeout=args.timeout, limit=args.limit,
                               progress=not args.quiet)
    how = "cached" if report.cached else f"built in {report.seconds:.1f} s"
    print(f"corpus: {len(report.pieces)} chorales -> {report.out_dir} ({how}, music21 {report.music21})")
    for item in report.skipped:
        print(f"  skipped {item['path']}: {item['reason']}")
    if not args.midi_only:
        pre = preprocess(report.out_dir, root / "shards", captions=report.captions, workers=args.workers,
                         shard_size=BACH_SHARD_SIZE, progress=not args.quiet)
        print(f"shards: {pre.summary()}")
    print(f"statistics: {corpus_statistics(report.out_dir).summary()}")
    return 0
