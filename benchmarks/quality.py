"""Sample quality against real music: descriptor distributions of generated vs held-out pieces.

    python benchmarks/quality.py --ckpt outputs/demo/model.ckpt [--steps 1,2,4,8] [--top-p 0.95,0.9]
                                 [--temperature 1.0] [--num 32] [--max-notes 256] [--quick]

For each sampler setting the checkpoint generates `num` pieces of at most `max_notes` rows (piece i
uses seed i), and `amadeus.evaluate.sample_quality` compares their per-piece descriptors with the
held-out pieces (validation + test splits, cut to the same length): overlapped area (OA, 1 = same
distribution) and KL per descriptor, and their mean. The "real" row is the ceiling: as many training
pieces, compared with the same held-out pieces.

Rows: {"decoder", "variant", "steps", "temperature", "top_p", "num", "max_notes", "mean_oa", "oa",
"kl", "mean", "consonance_oa", "syntax_error_rate", "notes_per_s"}; the "real" row has decoder
"real". Written to benchmarks/results/quality.json ({"rows": [...]}) and printed as a table.
"""
from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).parent / "results" / "quality.json"


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x]


def sweep(ckpt: str, data: str | None, steps: list[int], temperatures: list[float], top_ps: list[float],
          orders: list[str], num: int, max_notes: int, seed: int = 0) -> list[dict]:
    """One row per (steps, order, temperature, top_p) of one checkpoint, plus the real-vs-real row."""
    from amadeus.api import Amadeus
    from amadeus.corpus import ensure_bach_shards
    from amadeus.datamodule import MusicDataModule
    from amadeus.evaluate import sample_quality, structure_metrics

    model = Amadeus.load(ckpt)
    data = data or str(ensure_bach_shards(progress=False))
    dm = MusicDataModule(data_dir=data, num_workers=0, tokenizer_hash=model.tokenizer.config_hash)
    decoder = getattr(model.module.hparams, "decoder", "amadeus")
    rows, q = [], {}
    for s, order, t, p in itertools.product(steps, orders, temperatures, top_ps):
        t0 = time.perf_counter()
        result = model.sample(num, max_notes=max_notes, steps=s, temperature=t, top_p=p, order=order, seed=seed)
        seconds = time.perf_counter() - t0
        q = sample_quality({"generated": result.tokens}, dm, model.tokenizer, max_notes=max_notes, seed=seed)
        g = q["generated"]
        errors = structure_metrics(result.tokens, model.tokenizer)["syntax_error_rate"]["any"]
        rows.append({"decoder": decoder, "variant": "full", "steps": s, "order": order, "temperature": t,
                     "top_p": p, "num": num, "max_notes": max_notes, "mean_oa": g["mean_oa"], "oa": g["oa"],
                     "kl": g["kl"], "mean": g["mean"], "consonance_oa": g["oa"]["consonance"],
                     "syntax_error_rate": errors, "notes_per_s": result.notes / seconds,
                     "real_pieces": q["real_pieces"]})
        print(_line(rows[-1]), flush=True)
    real = q["ceiling"]
    rows.append({"decoder": "real", "variant": "train vs held-out", "steps": None, "order": None, "temperature": None,
                 "top_p": None, "num": q["ceiling_pieces"], "max_notes": max_notes, "mean_oa": real["mean_oa"],
                 "oa": real["oa"], "kl": real["kl"], "mean": real["mean"], "real_mean": real["real_mean"],
                 "consonance_oa": real["oa"]["consonance"], "syntax_error_rate": None, "notes_per_s": None,
                 "real_pieces": q["real_pieces"]})
    return rows


def _line(r: dict) -> str:
    cons = r["mean"]["consonance"]
    return (f"{r['decoder']:>8} {str(r['steps'] or '-'):>5} {str(r['order'] or '-'):>10} {str(r['temperature'] or '-'):>5} "
            f"{str(r['top_p'] or '-'):>5} {r['mean_oa']:>8.3f} {r['consonance_oa']:>9.3f} "
            f"{cons:>10.3f} {r['mean']['scale_consistency']:>8.3f}")


def table(rows: list[dict]) -> str:
    head = f"{'decoder':>8} {'S':>5} {'order':>10} {'temp':>5} {'top_p':>5} {'mean OA':>8} {'cons. OA':>9} {'consonance':>10} {'scale':>8}"
    real = rows[-1]
    lines = [head] + [_line(r) for r in rows]
    lines.append(f"{'held-out':>8} {'':>5} {'':>10} {'':>5} {'':>5} {'':>8} {'':>9} {real['real_mean']['consonance']:>10.3f} "
                 f"{real['real_mean']['scale_consistency']:>8.3f}")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ckpt", required=True, help="checkpoint or exported folder to sample from")
    ap.add_argument("--data", default=None, help="shard folder (default: the embedded Bach corpus)")
    ap.add_argument("--steps", default="1,2,4,8")
    ap.add_argument("--temperature", default="1.0")
    ap.add_argument("--top-p", default="0.95")
    ap.add_argument("--order", default="confidence", help="reveal orders: confidence,attributes")
    ap.add_argument("--num", type=int, default=32)
    ap.add_argument("--max-notes", type=int, default=256)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="8 pieces of 128 notes at S=2")
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.quick:
        args.steps, args.num, args.max_notes = "2", 8, 128
    rows = sweep(args.ckpt, args.data, [int(s) for s in args.steps.split(",")], _floats(args.temperature),
                 _floats(args.top_p), args.order.split(","), args.num, args.max_notes)
    print(table(rows))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"rows": rows}, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
