"""`amadeus fidelity FILE_OR_DIR...`: fidelity of encode -> decode for MIDI/ABC files, per file and in total."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of the fidelity report."""
    parser.add_argument("paths", nargs="+", help="files or folders (searched recursively)")
    parser.add_argument("--tokenizer", help="tokenizer.json to use (default config otherwise)")
    parser.add_argument("--quiet", action="store_true", help="print only errors and the total")


def _iter_files(paths: list[str]) -> list[Path]:
    from amadeus.tokenizer import MIDI_SUFFIXES

    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files += sorted(f for f in p.rglob("*") if f.suffix.lower() in MIDI_SUFFIXES and f.is_file())
        else:
            files.append(p)
    return files


def run(args: argparse.Namespace) -> int:
    """Print each file's fidelity and the total; 1 when no file was readable."""
    from amadeus.tokenizer import NoteTokenizer, TokenizerError

    tok = NoteTokenizer.load(args.tokenizer) if args.tokenizer else NoteTokenizer()
    total, errors = None, 0
    for f in _iter_files(args.paths):
        try:
            report = tok.fidelity(f)
        except TokenizerError as e:
            errors += 1
            print(f"ERROR {e}", file=sys.stderr)
            continue
        if not args.quiet:
            print(report.summary())
        total = report if total is None else total + report
    if total is None:
        print("no readable files", file=sys.stderr)
        return 1
    print(total.summary() + f"  ({errors} unreadable)")
    return 0
