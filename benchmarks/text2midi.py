"""Text-to-MIDI generation speed at batch 1: no text, text, and text with classifier-free guidance.

    python benchmarks/text2midi.py [--quick] [--sizes tiny,30m] [--steps 3] [--guidance 2]
                                   [--threads 1] [--device cpu|cuda]

Weights are random (untrained): speed does not depend on them (the sampler's grammar guards may see
more same-step contradictions than with a trained model, so these numbers are if anything
pessimistic). Each run is the real sampler (`amadeus.sampling.generate`, guards on, top-p 0.95) with
EOS forbidden so that every piece runs the full length. Network sizes come from configs/size/tiny.yaml
and configs/size/30m.yaml; the text encoder is the bundled all-MiniLM-L6-v2 (384-d).

Guidance runs the conditional and the unconditional (fully masked prefix) rows together, so the
backbone and the head do twice the work per note; the `guidance_cost` column measures what that
costs in time (time per note guided / time per note conditional). Text encoding happens once per
caption before sampling: it is timed apart (`text_encode_ms`, cold: the encoder's caption cache is
off) and excluded from notes_per_s; `notes_per_s_with_encoding` adds it back for a piece of `notes`
notes.

Rows: {"size", "mode" (no_text | text | text_guided), "guidance", "batch", "steps", "notes",
"notes_per_s", "ms_per_note", "text_encode_ms", "notes_per_s_with_encoding", "guidance_cost",
"prefix_tokens", "device", "threads", "weights"}.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from amadeus.sampling.options import DEFAULT_STEPS, TEXT_GUIDANCE

RESULTS = Path(__file__).parent / "results" / "text2midi.json"
CAPTION = ("A melodic classical piece in D minor for string ensemble and piano, at a slow Adagio tempo of "
           "66 bpm in 3/4, built on the chords Dm, A7 and Gm.")
ENCODER = "all-MiniLM-L6-v2"


def network(size: str, vocab: tuple[int, ...]):
    from amadeus.model.config import ModelConfig

    from _sizes import SIZE_KEYS
    from _sizes import network as size_network

    net = size_network(size)
    return ModelConfig(vocab_sizes=vocab, dropout=0.0, max_notes=4096, **{k: net[k] for k in SIZE_KEYS if k in net})


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def encode_ms(encoder, device: str, repeats: int) -> float:
    """Median ms to encode one caption (the encoder's cache is off: every call runs the network)."""
    encoder([CAPTION])  # warm-up
    times = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        encoder([CAPTION])
        sync(device)
        times.append(1000 * (time.perf_counter() - t0))
    return statistics.median(times)


def generate_s(module, notes: int, steps: int, repeats: int, device: str, **text) -> float:
    """Best of `repeats` wall times (s) to sample one piece of exactly `notes` rows."""
    from amadeus.sampling import generate

    kw = dict(num=1, max_notes=notes, min_notes=notes, steps=steps, seed=0, top_p=0.95, **text)
    generate(module, **{**kw, "max_notes": 8, "min_notes": 8})  # warm-up
    best = float("inf")
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        result = generate(module, **kw)
        sync(device)
        best = min(best, time.perf_counter() - t0)
        if result.rows != notes:
            raise RuntimeError(f"expected {notes} generated rows, got {result.rows}")
    return best


def main(argv: list[str] | None = None) -> int:
    from amadeus.model.text import TextEncoder
    from amadeus.module import AmadeusModule
    from amadeus.tokenizer import NoteTokenizer

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer notes and repeats (about a minute on 2 cores)")
    ap.add_argument("--sizes", default="tiny,30m")
    ap.add_argument("--steps", type=int, default=DEFAULT_STEPS,
                    help=f"denoising steps per note (default {DEFAULT_STEPS}, the sampler's)")
    ap.add_argument("--guidance", type=float, default=TEXT_GUIDANCE,
                    help=f"guidance scale of the guided rows (default {TEXT_GUIDANCE:g})")
    ap.add_argument("--notes", type=int, default=None, help="generated notes per run (default 32 quick, 128 full)")
    ap.add_argument("--repeats", type=int, default=None, help="timed runs per row, best kept (default 2 quick, 3 full)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch CPU threads (default 1: reproducible on a shared machine; 0 = torch's default)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args(argv)
    if args.threads > 0 and args.device == "cpu":
        torch.set_num_threads(args.threads)
    notes = args.notes or (32 if args.quick else 128)
    repeats = args.repeats or (2 if args.quick else 3)
    device = args.device
    tok = NoteTokenizer()
    encoder = TextEncoder(ENCODER, max_length=64, cache_size=0).to(device)
    enc_ms = encode_ms(encoder, device, repeats=5 if args.quick else 20)
    prefix, prefix_mask = encoder([CAPTION])  # [1, P, 384], [1, P]
    print(f"text encoder {ENCODER}: {enc_ms:.2f} ms per caption ({prefix.shape[1]} tokens), device {device}, "
          f"{torch.get_num_threads()} threads, random model weights")
    rows = []
    for size in args.sizes.split(","):
        torch.manual_seed(0)
        module = AmadeusModule(network=network(size, tok.vocab_sizes), text_encoder=ENCODER).to(device).eval()
        params = sum(p.numel() for p in module.parameters()) / 1e6
        modes = {"no_text": {}, "text": {"prefix": prefix, "prefix_mask": prefix_mask, "guidance": 1.0},
                 "text_guided": {"prefix": prefix, "prefix_mask": prefix_mask, "guidance": args.guidance}}
        for mode, text in modes.items():
            seconds = generate_s(module, notes, args.steps, repeats, device, **text)
            uses_text = mode != "no_text"
            total = seconds + (enc_ms / 1000 if uses_text else 0.0)
            rows.append({"size": size, "params_m": round(params, 2), "mode": mode,
                         "guidance": args.guidance if mode == "text_guided" else 1.0, "batch": 1, "steps": args.steps,
                         "notes": notes, "notes_per_s": round(notes / seconds, 2),
                         "ms_per_note": round(1000 * seconds / notes, 3),
                         "text_encode_ms": round(enc_ms, 3) if uses_text else None,
                         "notes_per_s_with_encoding": round(notes / total, 2),
                         "prefix_tokens": int(prefix.shape[1]) if uses_text else 0,
                         "device": device, "threads": torch.get_num_threads(), "weights": "random"})
        same = {r["mode"]: r for r in rows if r["size"] == size}
        for r in same.values():
            r["guidance_cost"] = round(r["ms_per_note"] / same["text"]["ms_per_note"], 2)

    print(f"\n{'size':>5} {'mode':<12} {'g':>4} {'notes/s':>9} {'ms/note':>8} {'vs text':>8} "
          f"{'encode ms':>10} {'notes/s incl. encoding':>23}")
    for r in rows:
        enc = "-" if r["text_encode_ms"] is None else f"{r['text_encode_ms']:.2f}"
        print(f"{r['size']:>5} {r['mode']:<12} {r['guidance']:>4g} {r['notes_per_s']:>9.1f} {r['ms_per_note']:>8.2f} "
              f"{r['guidance_cost']:>7.2f}x {enc:>10} {r['notes_per_s_with_encoding']:>23.1f}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"rows": rows, "caption": CAPTION, "text_encoder": ENCODER,
                               "note": f"random weights; batch 1; {notes} notes per piece (EOS forbidden); "
                                       "text encoding timed apart, once per caption"}, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
