"""`amadeus corpus bach|music21 [OUT]`: build an embedded corpus (MIDI + captions), its shards, statistics.

    amadeus corpus bach                       409 Bach chorales (small, fast: the demo and the tests)
    amadeus corpus music21 --collections oneills1850,airdsAirs
                                              every readable piece of music21's corpus, styled and captioned
    amadeus corpus folk                       its tune books only (about a minute: the demo's text corpus)

The corpora are `amadeus.corpus.CORPORA`; what each build holds is printed (and in docs/results.md).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from amadeus.commands._common import fail


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of `amadeus corpus`."""
    from amadeus.corpus import CORPORA, DEFAULT_COLLECTIONS, MUSIC21_COLLECTIONS

    parser.add_argument("name", choices=list(CORPORA),
                        help="which embedded corpus: " + "; ".join(f"{c.name}: {c.description}" for c in CORPORA.values()))
    parser.add_argument("out", nargs="?", default=None,
                        help="output folder: OUT/midi and OUT/shards (default: "
                             + ", ".join(str(c.default_dir()) for c in CORPORA.values()) + ")")
    parser.add_argument("--collections", default=None,
                        help=f"music21 only: comma-separated subset of {', '.join(MUSIC21_COLLECTIONS)} "
                             f"(default: {', '.join(DEFAULT_COLLECTIONS)})")
    parser.add_argument("--source", default=None, metavar="DIR",
                        help="music21 and folk only: a folder laid out like music21's corpus (default: the installed one's)")
    parser.add_argument("--midi-only", action="store_true", help="write the MIDI files and captions, no shards")
    parser.add_argument("--workers", type=int, default=None, help="worker processes (default: CPU cores)")
    parser.add_argument("--timeout", type=float, default=None,
                        help="seconds per score before it is skipped (default: 60 bach, 120 music21)")
    parser.add_argument("--limit", type=int, default=None, help="bach only: the first N scores")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    """Build (or reuse) the corpus, preprocess it unless --midi-only, print what was done."""
    if args.limit is not None and args.limit < 1:
        return fail("corpus", "--limit must be >= 1", prefix="")
    if args.workers is not None and args.workers < 0:
        return fail("corpus", f"--workers must be >= 0, got {args.workers}", prefix="")
    if args.name == "bach":
        if args.collections is not None or args.source is not None:
            return fail("corpus", "--collections and --source apply to the music21 corpus only", prefix="")
        return _bach(args)
    if args.limit is not None:
        return fail("corpus", "--limit applies to the bach corpus only (use --collections)", prefix="")
    if args.name == "folk" and args.collections is not None:
        return fail("corpus", "--collections applies to the music21 corpus (folk is its tune books)", prefix="")
    try:
        return _music21(args)
    except ValueError as e:  # an unknown collection name
        return fail("corpus", e, prefix="")


def _bach(args: argparse.Namespace) -> int:
    from amadeus.corpus import BACH_SHARD_SIZE, CORPORA, build_bach_corpus, corpus_statistics
    from amadeus.corpus.splits import moved_text
    from amadeus.preprocess import preprocess

    root = Path(args.out) if args.out else CORPORA["bach"].default_dir()
    report = build_bach_corpus(root / "midi", workers=args.workers, timeout=args.timeout or 60.0, limit=args.limit,
                               progress=not args.quiet)
    how = "cached" if report.cached else f"built in {report.seconds:.1f} s"
    print(f"corpus: {len(report.pieces)} chorales -> {report.out_dir} ({how}, music21 {report.music21})")
    for item in report.skipped:
        print(f"  skipped {item['path']}: {item['reason']}")
    print(moved_text(report.moved, report.cached))
    if not args.midi_only:
        pre = preprocess(report.out_dir, root / "shards", captions=report.captions, splits=report.splits(),
                         workers=args.workers, shard_size=BACH_SHARD_SIZE, progress=not args.quiet)
        print(f"shards: {pre.summary()}")
    print(f"statistics: {corpus_statistics(report.out_dir).summary()}")
    return 0


def _music21(args: argparse.Namespace) -> int:
    from amadeus.corpus import CORPORA, FOLK_COLLECTIONS, build_music21_corpus, build_music21_shards, format_music21_report
    from amadeus.corpus.splits import moved_text

    folk = args.name == "folk"
    root = Path(args.out) if args.out else CORPORA[args.name].default_dir()
    collections = ([c.strip() for c in args.collections.split(",") if c.strip()] if args.collections
                   else FOLK_COLLECTIONS if folk else None)
    options = dict(collections=collections, workers=args.workers, timeout=args.timeout or 120.0,
                   progress=not args.quiet, corpus_dir=args.source)
    if args.midi_only:
        report, pre = build_music21_corpus(root / "midi", **options), None
    else:
        report, pre = build_music21_shards(root, **options)
    print(format_music21_report(report))
    print(moved_text(report.moved, report.cached))
    if pre is not None:
        print(f"shards: {pre.summary()}")
    return 0
