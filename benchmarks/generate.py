"""Generation speed: Amadeus (one backbone step + S head passes per note) vs flat and nested decoding.

    python benchmarks/generate.py [--quick] [--sizes tiny,30m] [--batches 1,16] [--steps 1,2,4,8]
                                  [--threads 1] [--device cpu|cuda]

Weights are random (untrained): decoding speed does not depend on them, except that the Amadeus
sampler's grammar guards see more same-step contradictions with random weights than with a trained
model (so its numbers here are, if anything, pessimistic). Every row, Amadeus and baselines alike, is the
real sampler (`amadeus.sampling.generate`, guards on, top-p 0.95) with EOS forbidden so that every piece
runs the full length: the comparison measures the decoders, not the plumbing. Baselines
(`amadeus.model.baselines`) share the backbone sizes:
  flat   (REMI-like): one attribute per backbone step, K = 8 backbone steps per note;
  nested (NMT-like):  one backbone step per note + a 1-layer causal head decoding the K attributes
                      one after another.
Network sizes come from configs/size/tiny.yaml and configs/size/30m.yaml.

Rows: {"method", "size", "steps", "batch", "notes_per_s", "ms_per_note", "backbone_ms_per_step"}
(+ "device", "threads", "notes"). ms_per_note = wall time per generated row of the batch (all pieces
advance together); backbone_ms_per_step = one cached backbone step for the same batch, the floor no
method can beat. Targets (batch 1, 30m, CPU): Amadeus S=8 >= 3x flat, S=2 >= 5x flat, and Amadeus'
time per note <= 2x one backbone step at S=2.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from types import SimpleNamespace

import torch

RESULTS = Path(__file__).parent / "results" / "generate.json"
QUICK = Path(__file__).parent / "results" / "generate-quick.json"


def network(size: str, vocab: tuple[int, ...]):
    from amadeus.model.config import ModelConfig

    from _sizes import SIZE_KEYS
    from _sizes import network as size_network

    net = size_network(size)
    return ModelConfig(vocab_sizes=vocab, dropout=0.0, max_notes=4096, **{k: net[k] for k in SIZE_KEYS if k in net})


def timed(fn, device: str) -> float:
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


@torch.inference_mode()
def backbone_step_ms(backbone, batch: int, notes: int, device: str) -> float:
    """One cached backbone step at `batch` rows (after `notes` rows are in the cache)."""
    K = len(backbone.cfg.vocab_sizes)
    x = torch.ones(batch, 1, K, dtype=torch.long, device=device)
    cache = backbone.new_cache(batch, capacity=2 * notes + 2)
    backbone(x, cache=cache)

    def run():
        for _ in range(notes):
            backbone(x, cache=cache)

    run()  # warm-up (and fills the cache to a realistic length)
    return 1000 * timed(run, device) / notes


def decoder_row(parts, batch: int, steps: int | None, notes: int, device: str) -> float:
    """Seconds to decode `notes` rows for `batch` pieces with the real sampler (`amadeus.sampling.generate`):
    guards on, top-p 0.95, EOS forbidden; `steps` only matters for the Amadeus decoder."""
    from amadeus.sampling import generate

    kw = dict(num=batch, max_notes=notes, min_notes=notes, steps=steps, seed=0, top_p=0.95)
    generate(parts, **{**kw, "max_notes": 8, "min_notes": 8})  # warm-up
    return timed(lambda: generate(parts, **kw), device)


def main(argv: list[str] | None = None) -> int:
    from amadeus.model.baselines import build_decoder
    from amadeus.tokenizer import NoteTokenizer

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer notes per run (about a minute on 2 cores)")
    ap.add_argument("--sizes", default="tiny,30m")
    ap.add_argument("--batches", default="1,16")
    ap.add_argument("--steps", default="1,2,4,8")
    ap.add_argument("--notes", type=int, default=None, help="generated notes per run (default 24 quick, 96 full)")

    ap.add_argument("--threads", type=int, default=1,
                    help="torch CPU threads (default 1: reproducible on a shared machine; 0 = torch's default)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default=None, help=f"JSON file (default {RESULTS}; with --quick {QUICK})")
    args = ap.parse_args(argv)
    if args.threads > 0 and args.device == "cpu":
        torch.set_num_threads(args.threads)
    notes = args.notes or (24 if args.quick else 96)
    device = args.device
    tok = NoteTokenizer()
    rows = []
    for size in args.sizes.split(","):
        torch.manual_seed(0)
        cfg = network(size, tok.vocab_sizes)
        decoders = {}
        for name in ("amadeus", "flat", "nested"):
            backbone, head = build_decoder(cfg, name)
            decoders[name] = SimpleNamespace(backbone=backbone.to(device).eval(), head=head.to(device).eval(),
                                             tokenizer=tok)
        parts = decoders["amadeus"]
        for batch in map(int, args.batches.split(",")):
            floor = backbone_step_ms(parts.backbone, batch, notes, device)

            def add(method: str, steps: int | None, seconds: float) -> None:
                ms = 1000 * seconds / notes
                rows.append({"method": method, "size": size, "steps": steps, "batch": batch,
                             "notes_per_s": round(batch * notes / seconds, 2), "ms_per_note": round(ms, 3),
                             "backbone_ms_per_step": round(floor, 3), "device": device,
                             "threads": torch.get_num_threads(), "notes": notes})
                r = rows[-1]
                print(f"{size:>5} B={batch:<3} {method:<8} S={str(steps or '-'):<2} {r['notes_per_s']:>9.1f} notes/s "
                      f"{ms:8.2f} ms/note  ({ms / floor:5.2f} backbone steps)", flush=True)

            for S in map(int, args.steps.split(",")):
                add("amadeus", S, decoder_row(parts, batch, S, notes, device))
            for name in ("flat", "nested"):
                add(name, None, decoder_row(decoders[name], batch, None, notes, device))

    print("\nratios (same size and batch):")
    print(f"{'size':>5} {'batch':>5} {'S':>2} {'amadeus/flat':>13} {'amadeus/nested':>15} {'note/backbone step':>19}")
    for r in rows:
        if r["method"] != "amadeus":
            continue
        same = {x["method"]: x for x in rows if x["size"] == r["size"] and x["batch"] == r["batch"]}
        r["speedup_vs_flat"] = round(r["notes_per_s"] / same["flat"]["notes_per_s"], 2)
        r["speedup_vs_nested"] = round(r["notes_per_s"] / same["nested"]["notes_per_s"], 2)
        r["note_over_backbone_step"] = round(r["ms_per_note"] / r["backbone_ms_per_step"], 2)
        print(f"{r['size']:>5} {r['batch']:>5} {r['steps']:>2} {r['speedup_vs_flat']:>13.2f} "
              f"{r['speedup_vs_nested']:>15.2f} {r['note_over_backbone_step']:>19.2f}")
    targets = {(r["size"], r["batch"], r["steps"]): r for r in rows if r["method"] == "amadeus"}
    checks = []
    if ("30m", 1, 8) in targets:
        checks.append(("30m B=1 S=8 >= 3x flat", targets[("30m", 1, 8)]["speedup_vs_flat"] >= 3))
    if ("30m", 1, 2) in targets:
        r = targets[("30m", 1, 2)]
        checks.append(("30m B=1 S=2 >= 5x flat", r["speedup_vs_flat"] >= 5))
        checks.append(("30m B=1 S=2 note <= 2 backbone steps", r["note_over_backbone_step"] <= 2))
    for name, ok in checks:
        print(f"target {name}: {'met' if ok else 'MISSED'}")
    out = Path(args.out) if args.out else QUICK if args.quick else RESULTS
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"rows": rows, "targets": dict(checks),
                               "note": "random weights; every row is the real sampler with guards, top-p 0.95"}, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
