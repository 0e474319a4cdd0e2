"""Do the splits hold? Held-out pieces with a twin in a training split, within and across the embedded corpora.

    python benchmarks/splits.py [--label after] [--root bach=DIR --root folk=DIR --root music21=DIR] [--quick]

Two pieces are *twins* when the first 24 intervals of their top lines agree (the highest pitched note at
each onset; intervals in semitones, repeated notes collapsed: transposition-free; amadeus.corpus.splits,
TWIN_INTERVALS), read from the built shards' tokens. Pieces with fewer than 4 intervals are not tested.
For each corpus (default: the bach, folk and music21 corpora in $AMADEUS_CACHE, as `amadeus corpus NAME`
builds them) it counts the held-out (validation + test) pieces that have a twin in the same corpus'
training split (target: <= 0.5 %), and for every ordered pair of corpora the held-out pieces of the first
with a twin in the training split of the second (target: none). The splits are made from the first 12
intervals, so these counts are zero by construction when the shards come from the current rule; as a probe
that the rule does not guarantee, the same counts for *shifted twins* are reported beside them: 24
consecutive intervals starting at the 1st, 2nd or 3rd interval of one piece equal 24 starting at the 1st,
2nd or 3rd of the other (a tune with a pickup note more or less).

Writes benchmarks/results/splits.json ({"runs": {label: {...}}}; another label is added beside the ones
already there, `--quick` writes splits-quick.json) and prints a table.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results" / "splits.json"
CORPORA = ("bach", "folk", "music21")
SHIFTS = (0, 1, 2)  # start offsets of the shifted-twin probe
TARGET_PCT = 0.5


def read_corpus(shards: Path, limit: int | None = None) -> list[dict]:
    """[{"source", "split", "intervals"}] of every piece of a shard folder."""
    from amadeus.corpus.splits import token_intervals
    from amadeus.shards import load_manifest, read_shard

    from amadeus.tokenizer import NoteTokenizer, TokenizerConfig

    manifest = load_manifest(shards)
    K = NoteTokenizer(TokenizerConfig.from_dict(manifest["tokenizer"])).K
    pieces = []
    for shard in manifest["shards"]:
        table = read_shard(str(shards / shard["file"]), ["source", "split", "tokens"])
        for source, split, flat in zip(*(table.column(c).to_pylist() for c in ("source", "split", "tokens"))):
            tokens = np.asarray(flat, dtype=np.int64).reshape(-1, K)
            pieces.append({"source": source, "split": split, "intervals": token_intervals(tokens)})
            if limit and len(pieces) >= limit:
                return pieces
    return pieces


def fingerprint(intervals: np.ndarray, n: int, start: int = 0) -> bytes | None:
    """`n` intervals from `start` as bytes; None when fewer than MIN_INTERVALS remain."""
    from amadeus.corpus.splits import MIN_INTERVALS

    head = intervals[start:start + n]
    return head.astype(np.int64).tobytes() if len(head) >= MIN_INTERVALS else None


def twins(held: list[dict], train: list[dict], n: int, shifts: tuple[int, ...] = (0,)) -> int:
    """Held-out pieces with a training twin: `n` intervals from one of `shifts` equal to `n` intervals from
    one of `shifts` of a training piece."""
    seen = {f for p in train for s in shifts if (f := fingerprint(p["intervals"], n, s)) is not None}
    return sum(any(fingerprint(p["intervals"], n, s) in seen for s in shifts) for p in held)


def measure(roots: dict[str, Path], limit: int | None = None) -> dict:
    """Within- and across-corpus twin counts of the corpora in `roots` ({name: shard folder})."""
    from amadeus.corpus.splits import TWIN_INTERVALS

    data = {name: read_corpus(path, limit) for name, path in roots.items()}
    corpora, across = {}, {}
    for name, pieces in data.items():
        held = [p for p in pieces if p["split"] != "train"]
        train = [p for p in pieces if p["split"] == "train"]
        tested = [p for p in held if fingerprint(p["intervals"], TWIN_INTERVALS) is not None]
        n24, shifted = twins(tested, train, TWIN_INTERVALS), twins(tested, train, TWIN_INTERVALS, SHIFTS)
        corpora[name] = {"shards": str(roots[name]), "pieces": len(pieces), "held_out": len(held),
                         "tested": len(tested), "twin_in_train": n24,
                         "twin_in_train_pct": 100.0 * n24 / max(1, len(tested)),
                         "shifted_twin_in_train": shifted,
                         "shifted_twin_in_train_pct": 100.0 * shifted / max(1, len(tested)),
                         "splits": {s: sum(p["split"] == s for p in pieces) for s in ("train", "validation", "test")}}
    for a in data:
        held = [p for p in data[a] if p["split"] != "train"]
        for b in data:
            if a != b:
                train = [p for p in data[b] if p["split"] == "train"]
                across[f"{a}->{b}"] = {"twin_in_train": twins(held, train, TWIN_INTERVALS),
                                       "shifted_twin_in_train": twins(held, train, TWIN_INTERVALS, SHIFTS)}
    return {"twin_intervals": TWIN_INTERVALS, "shifts": list(SHIFTS), "corpora": corpora, "across": across}


def table(label: str, run: dict) -> str:
    lines = [f"{label}: held-out pieces with a twin in a training split (first {run['twin_intervals']} "
             "top-line intervals; shifted: from the 1st, 2nd or 3rd interval)",
             f"{'corpus':>8} {'pieces':>7} {'held out':>9} {'tested':>7} {'twins':>6} {'%':>6} {'shifted':>8} {'%':>6}"]
    for name, c in run["corpora"].items():
        ok = "ok" if c["twin_in_train_pct"] <= TARGET_PCT else f"above {TARGET_PCT} %"
        lines.append(f"{name:>8} {c['pieces']:>7} {c['held_out']:>9} {c['tested']:>7} {c['twin_in_train']:>6} "
                     f"{c['twin_in_train_pct']:>6.2f} {c['shifted_twin_in_train']:>8} "
                     f"{c['shifted_twin_in_train_pct']:>6.2f}  {ok}")
    if run["across"]:
        lines.append("across corpora (held out in the first, a twin in the second's training split; shifted in "
                     "brackets): " + "; ".join(f"{k} {v['twin_in_train']} ({v['shifted_twin_in_train']})"
                                               for k, v in run["across"].items()))
    return "\n".join(lines)


def main() -> None:
    from amadeus.corpus import CORPORA

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--root", action="append", default=[], metavar="NAME=DIR",
                    help="a corpus' shard folder (DIR/manifest.json) or its root (DIR/shards); default: "
                         "bach, folk and music21 in $AMADEUS_CACHE, those that are built")
    ap.add_argument("--label", default="current", help="name of this measurement in the JSON (e.g. before, after)")
    ap.add_argument("--quick", action="store_true", help="the first 300 pieces of each corpus")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    roots: dict[str, Path] = {}
    for item in args.root:
        name, _, path = item.partition("=")
        p = Path(path)
        roots[name] = p if (p / "manifest.json").is_file() else p / "shards"
    if not args.root:
        roots = {n: CORPORA[n].shards_dir() for n in CORPORA if (CORPORA[n].shards_dir() / "manifest.json").is_file()}
    missing = [f"{n}: {p}" for n, p in roots.items() if not (p / "manifest.json").is_file()]
    if missing or not roots:
        raise SystemExit(f"splits.py: no built shards ({'; '.join(missing) or 'build them with amadeus corpus NAME'})")
    t0 = time.perf_counter()
    run = measure(roots, 300 if args.quick else None)
    run["seconds"] = round(time.perf_counter() - t0, 1)
    print(table(args.label, run))
    out = Path(args.out) if args.out else RESULTS.with_name("splits-quick.json") if args.quick else RESULTS
    old = json.loads(out.read_text()) if out.is_file() else {}
    old.setdefault("runs", {})[args.label] = run
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(old, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
