"""`amadeus preprocess SRC OUT`: MIDI folder / glob / tar / list file -> tokenized Parquet shards."""
from __future__ import annotations

import argparse
from pathlib import Path

from amadeus.captions import DEFAULT_TEXT_ENCODER
from amadeus.commands._common import fail


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of `amadeus preprocess`."""
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
    parser.add_argument("--text-max-length", type=int, default=None, metavar="N",
                        help="report how many captions exceed N tokens of the text encoder (e.g. the run's "
                             "model.text_max_length; counted after the shards are written)")
    parser.add_argument("--text-encoder", default=DEFAULT_TEXT_ENCODER,
                        help=f"text encoder whose tokenizer counts caption tokens (local only; default {DEFAULT_TEXT_ENCODER})")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    """0 when the run completed (skipped files are counted in the summary), 2 for bad arguments."""
    from amadeus.preprocess import preprocess
    from amadeus.tokenizer import NoteTokenizer

    if args.text_max_length is not None and args.text_max_length < 1:
        return fail("preprocess", f"--text-max-length must be >= 1, got {args.text_max_length}", prefix="")
    try:
        tokenizer = NoteTokenizer.load(args.tokenizer) if args.tokenizer else None
        report = preprocess(args.src, args.out, captions=args.captions, workers=args.workers,
                            tokenizer=tokenizer, shard_size=args.shard_size, val_fraction=args.val_fraction,
                            test_fraction=args.test_fraction, auto_captions=args.auto_captions,
                            timeout=args.timeout, progress=not args.quiet, text_max_length=args.text_max_length,
                            text_encoder=args.text_encoder)
    except (FileNotFoundError, ValueError) as e:  # TextEncoderError is a ValueError
        return fail("preprocess", e, prefix="")
    print(report.summary())
    for item in report.skipped[:20]:
        print(f"  skipped {item['path']}: {item['reason']}")
    if len(report.skipped) > 20:
        print(f"  ... and {len(report.skipped) - 20} more (see {Path(args.out) / 'manifest.json'})")
    return 0
