"""Generation speed: Amadeus (one backbone step + S head passes per note) vs flat and nested decoding.

    python benchmarks/generate.py [--quick] [--sizes tiny,30m] [--batches 1,16] [--steps 1,2,4,8]
                                  [--decode auto,static] [--compile] [--kernels] [--methods amadeus,flat,nested]
                                  [--threads 1] [--device cpu|cuda] [--out FILE]

Weights are random (untrained): decoding speed does not depend on them, except that the Amadeus
sampler's grammar guards see more same-step contradictions with random weights than with a trained
model (so its numbers here are, if anything, pessimistic). Every row, Amadeus and baselines alike, is the
real sampler (`amadeus.sampling.generate`, guards on, top-p 0.95) with EOS forbidden so that every piece
runs the full length, and every decoder goes through the same decode path (`--decode`, below): the
comparison measures the decoders, not the plumbing. Baselines (`amadeus.model.baselines`) share the
backbone sizes:
  flat   (REMI-like): one attribute per backbone step, K = 8 backbone steps per note;
  nested (NMT-like):  one backbone step per note + a 1-layer causal head decoding the K attributes
                      one after another.
Network sizes come from configs/size/*.yaml.

Decode paths (`SamplingOptions.decode`, docs/decoders.md), one column each: "auto" (what `generate` uses
by default: eager on the CPU, static with CUDA graphs on CUDA), "eager", "static", and with `--compile`
"compile" (static + torch.compile; its compile time is the `compile_s` column: the first, warm-up call
minus a timed one). Each static and compiled row also says whether its pieces equal the eager path's
(`same_as_eager`; every piece, fp32).

Rows: {"method", "size", "steps", "batch", "decode", "notes_per_s", "ms_per_note", "backbone_ms_per_step"}
(+ "device", "threads", "notes", "ran", "host_reads_per_note", "kernels_per_note" with --kernels, "compile_s",
"same_as_eager"). host_reads_per_note: the host's reads of the device (`amadeus.sampling.count_syncs`) per note
of the 8-note warm-up call (compile: of the timed call), setup and final reads included; kernels_per_note: aten operators that are not
views, per note (--kernels). ms_per_note = wall time per
generated row of the batch (all pieces advance together); backbone_ms_per_step = one cached eager backbone
step for the same batch. Targets: CPU (batch 1, 30m, auto): Amadeus S=8 >= 3x flat, S=2 >= 5x flat, and
Amadeus' time per note <= 2x one backbone step at S=2. CUDA (30m, auto, issue 23): batch 1 S=2 >= 500
notes/s and >= 5x flat; batch 64 S=2 >= 20,000 notes/s and ahead of nested.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

RESULTS = Path(__file__).parent / "results" / "generate.json"
QUICK = Path(__file__).parent / "results" / "generate-quick.json"


def network(size: str, vocab: tuple[int, ...]):
    from amadeus.model.config import ModelConfig

    from _sizes import SIZE_KEYS
    from _sizes import network as size_network

    net = size_network(size)
    return ModelConfig(vocab_sizes=vocab, dropout=0.0, max_notes=4096, **{k: net[k] for k in SIZE_KEYS if k in net})


def timed(fn, device: str):
    """(seconds, fn's result), the device synchronised before and after."""
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0, out


@torch.inference_mode()
def backbone_step_ms(backbone, batch: int, notes: int, device: str) -> float:
    """One cached (eager) backbone step at `batch` rows (after `notes` rows are in the cache)."""
    K = len(backbone.cfg.vocab_sizes)
    x = torch.ones(batch, 1, K, dtype=torch.long, device=device)
    cache = backbone.new_cache(batch, capacity=2 * notes + 2)
    backbone(x, cache=cache)

    def run():
        for _ in range(notes):
            backbone(x, cache=cache)

    run()  # warm-up (and fills the cache to a realistic length)
    return 1000 * timed(run, device)[0] / notes


WARM_NOTES = 8  # notes of the warm-up call (except when compiling), which also counts the host's reads


def decoder_row(parts, batch: int, steps: int | None, notes: int, device: str, decode: str):
    """(seconds, warm-up seconds, SampleResult, host reads per note) to decode `notes` rows for
    `batch` pieces with the real sampler (`amadeus.sampling.generate`): guards on, top-p 0.95, EOS forbidden;
    `steps` only matters for Amadeus. The warm-up is the same call when compiling (torch.compile specialises
    on every shape), else a short one, run under `count_syncs` (outside the timed call: the spy costs time)."""
    from amadeus.sampling import count_syncs, generate

    kw = dict(num=batch, max_notes=notes, min_notes=notes, steps=steps, seed=0, top_p=0.95, decode=decode)
    if decode == "compile":  # the reads of the timed call: tracing reads shapes and values of its own
        warm_s, _ = timed(lambda: generate(parts, **kw), device)
        with count_syncs() as reads:
            seconds, result = timed(lambda: generate(parts, **kw), device)
        return seconds, warm_s, result, max(reads.reads, reads.cuda) / notes
    warm = {**kw, "max_notes": WARM_NOTES, "min_notes": WARM_NOTES}
    with count_syncs() as reads:
        warm_s, _ = timed(lambda: generate(parts, **warm), device)
    seconds, result = timed(lambda: generate(parts, **kw), device)
    return seconds, warm_s, result, max(reads.reads, reads.cuda) / WARM_NOTES


_VIEWS = {"unsqueeze", "squeeze", "select", "slice", "view", "expand", "t", "transpose", "permute", "alias",
          "detach", "split", "split_with_sizes", "chunk", "unbind", "_unsafe_view", "as_strided", "lift_fresh",
          "reshape", "contiguous"}


def kernels_per_note(parts, batch: int, steps: int | None, decode: str) -> float:
    """aten operators per note that are not views (each one kernel launch, or more, on CUDA), counted by a
    dispatch mode over a WARM_NOTES-note run; a launch-bound chip's time per note follows this count."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from amadeus.sampling import generate

    class Count(TorchDispatchMode):
        n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            Count.n += func.overloadpacket.__name__ not in _VIEWS
            return func(*args, **(kwargs or {}))

    with Count():
        generate(parts, num=batch, max_notes=WARM_NOTES, min_notes=WARM_NOTES, steps=steps, seed=0, top_p=0.95,
                 decode=decode)
    return Count.n / WARM_NOTES


def main(argv: list[str] | None = None) -> int:
    from amadeus.model.baselines import build_decoder
    from amadeus.tokenizer import NoteTokenizer

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer notes per run (about a minute on 2 cores)")
    ap.add_argument("--sizes", default="tiny,30m")
    ap.add_argument("--batches", default=None, help="default 1,16 on the CPU, 1,64,256 on CUDA")
    ap.add_argument("--steps", default="1,2,4,8")
    ap.add_argument("--methods", default="amadeus,flat,nested")
    ap.add_argument("--decode", default=None, help="decode paths to measure (default auto,static on the CPU, "
                                                   "auto,eager on CUDA, where auto is static)")
    ap.add_argument("--compile", action="store_true", help="also measure decode=compile (torch.compile: minutes "
                                                           "of compiling per configuration on a CPU)")
    ap.add_argument("--kernels", action="store_true", help="also count aten kernels per note (a dispatch mode "
                                                           "over an extra 8-note run per row)")
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
    batches = args.batches or ("1,64,256" if device == "cuda" else "1,16")
    modes = (args.decode or ("auto,eager" if device == "cuda" else "auto,static")).split(",")
    modes += ["compile"] if args.compile and "compile" not in modes else []
    methods = args.methods.split(",")
    tok = NoteTokenizer()
    rows = []
    for size in args.sizes.split(","):
        torch.manual_seed(0)
        cfg = network(size, tok.vocab_sizes)
        decoders = {}
        for name in methods:
            backbone, head = build_decoder(cfg, name)
            decoders[name] = SimpleNamespace(backbone=backbone.to(device).eval(), head=head.to(device).eval(),
                                             tokenizer=tok)
        floor_of = decoders["amadeus"] if "amadeus" in decoders else decoders[methods[0]]
        for batch in map(int, batches.split(",")):
            floor = backbone_step_ms(floor_of.backbone, batch, notes, device)
            for name in methods:
                for S in map(int, args.steps.split(",")) if name == "amadeus" else [None]:
                    rows += measure(decoders[name], name, size, batch, S, notes, device, modes, floor, args.kernels)
    summarise(rows, device)
    out = Path(args.out) if args.out else QUICK if args.quick else RESULTS
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"rows": rows, "targets": dict(targets(rows, device)),
                               "note": "random weights; every row is the real sampler with guards, top-p 0.95"},
                              indent=2) + "\n")
    print(f"wrote {out}")
    return 0


def measure(parts, method: str, size: str, batch: int, steps: int | None, notes: int, device: str,
            modes: list[str], floor: float, kernels: bool = False) -> list[dict]:
    """One row per decode path for one decoder configuration."""
    out, reference = [], None
    for mode in modes:
        if mode == "compile":
            torch._dynamo.reset()  # a fresh compile per configuration, within the recompile limit
        seconds, warm_s, result, reads = decoder_row(parts, batch, steps, notes, device, mode)
        if result.settings["decode"] == "eager":
            reference = result.tokens if reference is None else reference
        elif reference is None:  # the eager pieces to compare with
            reference = decoder_row(parts, batch, steps, notes, device, "eager")[2].tokens
        ms = 1000 * seconds / notes
        r = {"method": method, "size": size, "steps": steps, "batch": batch, "decode": mode,
             "notes_per_s": round(batch * notes / seconds, 2), "ms_per_note": round(ms, 3),
             "backbone_ms_per_step": round(floor, 3), "device": device, "threads": torch.get_num_threads(),
             "notes": notes, "ran": result.settings["decode"], "host_reads_per_note": round(reads, 2)}
        if kernels and mode != "compile":
            r["kernels_per_note"] = round(kernels_per_note(parts, batch, steps, mode))
        if mode == "compile":
            r["compile_s"] = round(warm_s - seconds, 1)
        if reference is not None and result.settings["decode"] != "eager":
            r["same_as_eager"] = all(np.array_equal(a, b) for a, b in zip(reference, result.tokens))
        out.append(r)
        extra = f"  reads/note {r['host_reads_per_note']}"
        extra += f"  kernels/note {r['kernels_per_note']}" if "kernels_per_note" in r else ""
        extra += f"  compile {r['compile_s']} s" if "compile_s" in r else ""
        extra += "" if "same_as_eager" not in r else f"  same as eager: {r['same_as_eager']}"
        print(f"{size:>5} B={batch:<3} {method:<8} S={str(steps or '-'):<2} {mode:<8} {r['notes_per_s']:>10.1f} "
              f"notes/s {ms:8.2f} ms/note ({ms / floor:5.2f} backbone steps) [{r['ran']}]{extra}", flush=True)
    return out


def summarise(rows: list[dict], device: str) -> None:
    """Ratios against flat and nested (same size, batch and decode path), and the targets."""
    print("\nratios (same size, batch and decode path):")
    print(f"{'size':>5} {'batch':>5} {'decode':>8} {'S':>2} {'amadeus/flat':>13} {'amadeus/nested':>15} "
          f"{'note/backbone step':>19}")
    for r in rows:
        if r["method"] != "amadeus":
            continue
        same = {x["method"]: x for x in rows
                if (x["size"], x["batch"], x["decode"]) == (r["size"], r["batch"], r["decode"])}
        for other in ("flat", "nested"):
            if other in same:
                r[f"speedup_vs_{other}"] = round(r["notes_per_s"] / same[other]["notes_per_s"], 2)
        r["note_over_backbone_step"] = round(r["ms_per_note"] / r["backbone_ms_per_step"], 2)
        print(f"{r['size']:>5} {r['batch']:>5} {r['decode']:>8} {r['steps']:>2} {r.get('speedup_vs_flat', 0):>13.2f} "
              f"{r.get('speedup_vs_nested', 0):>15.2f} {r['note_over_backbone_step']:>19.2f}")
    for name, ok in targets(rows, device):
        print(f"target {name}: {'met' if ok else 'MISSED'}")


def targets(rows: list[dict], device: str) -> list[tuple[str, bool]]:
    """The acceptance targets that the measured rows can tell (module docstring)."""
    t = {(r["size"], r["batch"], r["steps"]): r for r in rows if r["method"] == "amadeus" and r["decode"] == "auto"}
    checks = []
    if device == "cpu":
        if ("30m", 1, 8) in t and "speedup_vs_flat" in t[("30m", 1, 8)]:
            checks.append(("30m B=1 S=8 >= 3x flat", t[("30m", 1, 8)]["speedup_vs_flat"] >= 3))
        if ("30m", 1, 2) in t and "speedup_vs_flat" in t[("30m", 1, 2)]:
            r = t[("30m", 1, 2)]
            checks.append(("30m B=1 S=2 >= 5x flat", r["speedup_vs_flat"] >= 5))
            checks.append(("30m B=1 S=2 note <= 2 backbone steps", r["note_over_backbone_step"] <= 2))
    elif device == "cuda":
        if ("30m", 1, 2) in t:
            r = t[("30m", 1, 2)]
            checks.append(("30m B=1 S=2 >= 500 notes/s", r["notes_per_s"] >= 500))
            if "speedup_vs_flat" in r:
                checks.append(("30m B=1 S=2 >= 5x flat", r["speedup_vs_flat"] >= 5))
        if ("30m", 64, 2) in t:
            r = t[("30m", 64, 2)]
            checks.append(("30m B=64 S=2 >= 20,000 notes/s", r["notes_per_s"] >= 20000))
            if "speedup_vs_nested" in r:
                checks.append(("30m B=64 S=2 ahead of nested", r["speedup_vs_nested"] > 1))
    return checks


if __name__ == "__main__":
    raise SystemExit(main())
