"""Sample quality against real music: decoders compared on one backbone, and sampler settings.

    python benchmarks/quality.py [--quick] [--train-steps 800] [--size tiny]     # decoders, trained here
    python benchmarks/quality.py --ckpt outputs/demo/model.ckpt [--steps 1,2,4,8] [--order confidence,harmony]
                                 [--top-p 0.95,pitch=0.8/*=0.95] [--temperature 1.0] [--reveal-threshold 0.9,2]
                                 [--num 32] [--max-notes 256] [--reference-split validation|test]

Decoders (the default mode): Amadeus (full, no_ciem, no_mlsdes) and the flat (REMI-like), nested
(NMT-like) and parallel decoders are trained on the embedded corpus with the same backbone, data,
optimiser and number of training notes, at parameter counts within 10 % of Amadeus' (the per-decoder
size overrides are in DECODER_SIZES); each is then scored on the held-out split: exact NLL per note
(chain rule; Amadeus in column order) and, for Amadeus, the diffusion ELBO per note; and its samples
at batch 1 (Amadeus at every S in --steps, and at S=2 and the largest S without the reveal threshold;
the ablations at S=2) against the held-out pieces as below, at the sampler's defaults otherwise.

Sampler settings (--ckpt): for each setting the checkpoint generates (all pieces in one batch) `num` pieces
of at most `max_notes` rows (piece i uses seed + i), and `amadeus.evaluate.sample_quality` compares their
per-piece descriptors with the pieces of the reference split (--reference-split: validation, the default,
to choose settings on; test to report a setting chosen on validation, once), cut to the same length:
overlapped area (OA, 1 = same distribution, kernel widths the reference's) and KL per descriptor, their
mean with a 95 % bootstrap interval over both sets, undefined shares, degenerate and furthest pieces. The
"real" row is the ceiling: as many training pieces, compared with the same reference pieces. The rows are
*appended* to --out (default benchmarks/results/quality-sampler.json, each with its command), never to the
decoder comparison's quality.json.

Rows: {"decoder", "variant", "steps", "order", "temperature", "top_p", "reveal_threshold", "passes_per_row"
(head passes per decoding step; the AR decoders: K), "num", "max_notes", "reference_split", "chosen_on"
(where this setting was chosen: the sampler defaults' CHOSEN_ON, --chosen-on, or null for a candidate),
"metric_version" (2: the reference's kernel widths, undefined values counted), "mean_oa", "mean_oa_ci95",
"oa", "kl", "mean", "undefined", "consonance_oa", "degenerate_rate", "degenerate", "furthest",
"syntax_error_rate", "notes_per_s"} (+ "params", "train_notes", "train_notes_per_s", "nll_per_note",
"elbo_per_note" for trained decoders); the "real" row has decoder "real". The decoder comparison writes
benchmarks/results/quality.json ({"rows": [...]}); both print a table.
"""
from __future__ import annotations

import argparse
import itertools
import json
import logging
import time
from pathlib import Path
from typing import Mapping

import torch

from amadeus.sampling import DEFAULT_STEPS, SamplingOptions, plain_setting, setting_text

DEFAULTS = SamplingOptions()  # the decoders are compared at the sampler's defaults
OFF = 2.0  # a reveal threshold above 1: no slot is revealed outside the step budget
RESULTS = Path(__file__).parent / "results" / "quality.json"  # the decoder comparison
SWEEP_RESULTS = Path(__file__).parent / "results" / "quality-sampler.json"  # sampler settings (--ckpt), appended
METRIC_VERSION = 2  # 1: kernel width shared by both sets, undefined values dropped (rows before issue 22)
# (decoder, variant) -> model overrides that bring every decoder within 10 % of Amadeus' parameters at
# the tiny size (flat and parallel have no head to speak of: a wider FFN; nested: a second head layer)
VARIANTS = {("amadeus", "full"): {}, ("amadeus", "no_ciem"): {"use_ciem": False},
            ("amadeus", "no_mlsdes"): {"use_mlsdes": False}, ("flat", "full"): {}, ("nested", "full"): {},
            ("parallel", "full"): {}}
DECODER_SIZES = {"tiny": {"flat": {"ffn_mult": 6}, "parallel": {"ffn_mult": 6}, "nested": {"head_layers": 2}}}


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x]


def _settings(text: str) -> list:
    """Comma-separated settings, each a number or per-attribute values joined by "/":
    "0.85,pitch=0.8/chord=0.8/*=0.95" -> [0.85, {"pitch": 0.8, "chord": 0.8, "*": 0.95}]."""
    out = []
    for item in filter(None, text.split(",")):
        if "=" in item:
            out.append({k.strip(): float(v) for k, v in (kv.split("=") for kv in item.split("/"))})
        else:
            out.append(float(item))
    return out


def _network(size: str, decoder: str, variant: str) -> dict:
    from _sizes import SIZE_KEYS
    from _sizes import network as size_network

    net = {k: v for k, v in size_network(size).items()
           if k in SIZE_KEYS or k in ("dropout", "use_ciem", "use_mlsdes", "mlsdes_weight")}
    net.update(DECODER_SIZES.get(size, {}).get(decoder, {}))
    net.update(VARIANTS[(decoder, variant)])
    return net


def train_decoder(decoder: str, variant: str, size: str, data: str, steps: int, batch: int, max_notes: int,
                  seed: int = 0):
    """Train one decoder on `data` for `steps` optimizer steps; returns (module, seconds, notes seen)."""
    import lightning as L

    from amadeus.datamodule import MusicDataModule
    from amadeus.model.config import ModelConfig
    from amadeus.module import AmadeusModule

    L.seed_everything(seed, verbose=False)
    module = AmadeusModule(network=ModelConfig(**_network(size, decoder, variant)), decoder=decoder, lr=2e-3,
                           warmup_steps=min(50, steps // 4), weight_decay=0.1)
    dm = MusicDataModule(data_dir=data, max_notes=max_notes, batch_size=batch, num_workers=0, seed=seed)
    trainer = L.Trainer(max_steps=steps, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                        gradient_clip_val=1.0)
    t0 = time.perf_counter()
    trainer.fit(module, dm)
    return module, time.perf_counter() - t0, steps * batch * max_notes


def held_out_likelihood(module, data: str, max_notes: int) -> dict:
    """Exact NLL (and Amadeus' ELBO) per note on the validation windows, as the module logs them."""
    import lightning as L

    from amadeus.datamodule import MusicDataModule

    dm = MusicDataModule(data_dir=data, max_notes=max_notes, batch_size=16, num_workers=0)
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                        enable_model_summary=False)
    out = trainer.validate(module, dm, verbose=False)[0]
    return {"nll_per_note": out.get("val/nll_per_note"), "elbo_per_note": out.get("val/elbo_per_note")}


def _settings_of(head, variant: str, steps: list[int]) -> list[tuple[int | None, float | None]]:
    """(S, reveal threshold) to sample each trained model with: full Amadeus at every S at the default
    threshold, and at S=2 and S=K without it; the ablations at S=2; the autoregressive baselines once (no S)."""
    if head.autoregressive:
        return [(None, None)]
    if variant != "full":
        return [(2, DEFAULTS.reveal_threshold)]
    off = [(s, OFF) for s in sorted({2, max(steps)} & set(steps))] if DEFAULTS.reveal_threshold <= 1 else []
    return [(s, DEFAULTS.reveal_threshold) for s in steps] + off


def compare_decoders(size: str, data: str | None, train_steps: int, batch: int, window: int, steps: list[int],
                     num: int, max_notes: int, seed: int = 0, reference: dict | None = None) -> list[dict]:
    """Train every (decoder, variant), score likelihood and samples against the `reference` split; one row
    per sampler setting."""
    from amadeus.api import Amadeus
    from amadeus.corpus import ensure_bach_shards

    data = data or str(ensure_bach_shards(progress=False))
    reference = reference or {"split": "test", "chosen_on": None}
    rows, real, base_params = [], None, None
    for decoder, variant in VARIANTS:
        module, seconds, notes = train_decoder(decoder, variant, size, data, train_steps, batch, window, seed)
        params = sum(p.numel() for p in module.parameters() if p.requires_grad)
        base_params = base_params or params
        info = {"params": params, "params_vs_amadeus": params / base_params, "train_notes": notes,
                "train_notes_per_s": notes / seconds, **held_out_likelihood(module, data, window)}
        model = Amadeus(module.eval())
        for s, thr in _settings_of(module.head, variant, steps):
            row, real = _sample_row(model, data, (s, DEFAULTS.order, DEFAULTS.temperature, DEFAULTS.top_p, thr),
                                    num, max_notes, seed, reference)
            rows.append({**row, "variant": variant, **info})
            print(_line(rows[-1]), flush=True)
    rows.append(_real_row(real, num, max_notes))
    return rows


def _chosen_on(setting: tuple, reference: dict):
    """Where a row's setting was chosen: --chosen-on when given, the defaults' CHOSEN_ON for the sampler's
    defaults, else None (a candidate of this sweep)."""
    from amadeus.evaluate import CHOSEN_ON

    if reference.get("chosen_on"):
        return reference["chosen_on"]
    s, order, t, p, thr = setting
    default = (s in (None, DEFAULT_STEPS) and order == DEFAULTS.order and t == DEFAULTS.temperature
               and p == DEFAULTS.top_p and thr in (None, DEFAULTS.reveal_threshold))
    return CHOSEN_ON["sampler"] if default else None


def _sample_row(model, data: str, setting: tuple, num: int, max_notes: int, seed: int, reference: dict,
                batch: int | None = 1) -> tuple[dict, dict]:
    """Sample `num` pieces with `setting` = (steps, order, temperature, top_p, reveal threshold), `batch` at a
    time (None: all together), and score them against the reference split's pieces; notes_per_s is the
    sampling speed at that batch size."""
    from amadeus.datamodule import MusicDataModule
    from amadeus.evaluate import sample_quality, structure_metrics

    s, order, t, p, thr = setting
    dm = MusicDataModule(data_dir=data, num_workers=0, tokenizer_hash=model.tokenizer.config_hash)
    t0 = time.perf_counter()
    result = model.sample(num, max_notes=max_notes, steps=s, temperature=t, top_p=p, order=order,
                          seed=seed, batch_size=batch, **({} if thr is None else {"reveal_threshold": thr}))
    seconds = time.perf_counter() - t0
    chosen_on = _chosen_on(setting, reference)
    q = sample_quality({"generated": result.tokens}, dm, model.tokenizer, max_notes=max_notes, seed=seed,
                       reference_split=reference["split"], chosen_on=chosen_on)
    g = q["generated"]
    errors = structure_metrics(result.tokens, model.tokenizer)["syntax_error_rate"]["any"]
    row = {"decoder": model.module.head.name, "variant": "full", "batch": batch or num, "seed": seed, "steps": s,
           "order": order, "temperature": plain_setting(t), "top_p": plain_setting(p), "reveal_threshold": thr,
           "passes_per_row": passes_per_row(result, batch or num), "num": num, "max_notes": max_notes,
           **_quality_fields(q, g), "chosen_on": chosen_on, "syntax_error_rate": errors,
           "notes_per_s": result.notes / seconds}
    return row, {**q["ceiling"], **_quality_fields(q, q["ceiling"]), "pieces": q["ceiling_pieces"]}


def _quality_fields(q: dict, g: dict) -> dict:
    """The row fields of one compared set (amadeus.descriptors.compare) against sample_quality's reference."""
    return {"reference_split": q["reference_split"], "metric_version": METRIC_VERSION, "mean_oa": g["mean_oa"],
            "mean_oa_ci95": g["mean_oa_ci95"], "oa": g["oa"], "kl": g["kl"], "mean": g["mean"],
            "undefined": {k: v["generated"] for k, v in g["undefined"].items()},
            "consonance_oa": g["oa"]["consonance"], "degenerate_rate": g["degenerate"]["rate"],
            "degenerate": g["degenerate"], "furthest": g["furthest"][:3], "real_pieces": q["real_pieces"]}


def passes_per_row(result, batch: int) -> float:
    """Head passes per decoding step of a batch (one row per piece): S without the reveal threshold."""
    lengths = [len(t) - 1 for t in result.tokens]  # generated rows, EOS included
    row_steps = sum(max(lengths[i:i + batch]) for i in range(0, len(lengths), batch))
    return result.head_passes / max(1, row_steps)


def _real_row(real: dict, num: int, max_notes: int) -> dict:
    return {**real, "decoder": "real", "variant": "train vs reference", "steps": None, "order": None,
            "temperature": None, "top_p": None, "reveal_threshold": None, "passes_per_row": None,
            "num": real["pieces"], "max_notes": max_notes, "chosen_on": None, "syntax_error_rate": None,
            "notes_per_s": None}


def sweep(ckpt: str, data: str | None, steps: list[int], temperatures: list, top_ps: list,
          orders: list[str], thresholds: list[float], num: int, max_notes: int, seed: int = 0,
          reference: dict | None = None) -> list[dict]:
    """One row per (steps, order, temperature, top_p, reveal threshold) of one checkpoint, plus the
    real-vs-real row, all against the `reference` split ({"split", "chosen_on"})."""
    from amadeus.api import Amadeus
    from amadeus.corpus import ensure_bach_shards

    model = Amadeus.load(ckpt)
    data = data or str(ensure_bach_shards(progress=False))
    reference = reference or {"split": "validation", "chosen_on": None}
    rows, real = [], None
    for setting in itertools.product(steps, orders, temperatures, top_ps, thresholds):
        row, real = _sample_row(model, data, setting, num, max_notes, seed, reference, batch=None)
        rows.append(row)
        print(_line(row), flush=True)
    return rows + [_real_row(real, num, max_notes)]


def _fmt(value, spec: str) -> str:
    if isinstance(value, Mapping):  # per-attribute setting
        return "/".join(f"{k[:2]}{v:g}" for k, v in value.items())
    return "-" if value is None else format(value, spec)


def _line(r: dict) -> str:
    low, high = r.get("mean_oa_ci95") or (None, None)
    ci = f"{low:.3f}-{high:.3f}" if low is not None else "-"
    rate = r.get("degenerate_rate")
    return (f"{r['decoder']:>8} {r['variant'][:9]:>9} {_fmt(r['steps'], 'd'):>3} {_fmt(r['order'], 's'):>10} "
            f"{_fmt(r['temperature'], '.2f'):>5} {_fmt(r['top_p'], '.2f'):>5} {_fmt(r['reveal_threshold'], '.2f'):>5} "
            f"{_fmt(r['passes_per_row'], '.2f'):>6} {r['mean_oa']:>8.3f} {ci:>12} "
            f"{r['consonance_oa']:>9.3f} {r['mean']['consonance']:>10.3f} {r['mean']['scale_consistency']:>6.3f} "
            f"{_fmt(None if rate is None else 100 * rate, '.1f'):>6} "
            f"{_fmt(r.get('nll_per_note'), '.3f'):>8} {_fmt(r['notes_per_s'], '.1f'):>8}")


def table(rows: list[dict]) -> str:
    real = rows[-1]
    head = (f"{'decoder':>8} {'variant':>9} {'S':>3} {'order':>10} {'temp':>5} {'top_p':>5} {'thr':>5} {'passes':>6} "
            f"{'mean OA':>8} {'95 % CI':>12} "
            f"{'cons. OA':>9} {'consonance':>10} {'scale':>6} {'degen%':>6} {'NLL/note':>8} {'notes/s':>8}")
    lines = [f"against {real['real_pieces']} {real['reference_split']} pieces (kernel widths theirs); "
             f"degenerate: above {real['degenerate']['factor']:g} x the corpus' {real['degenerate']['limits']}", head]
    lines += [_line(r) for r in rows]
    lines.append(f"{'reference pieces':>78} {real['real_mean']['consonance']:>18.3f} "
                 f"{real['real_mean']['scale_consistency']:>6.3f}")
    return "\n".join(lines)


def write(rows: list[dict], out: Path, append: bool) -> None:
    """Write the rows to `out`; with `append` add them (each with the command that made it) to the rows
    already there."""
    import shlex
    import sys

    old = json.loads(out.read_text()) if append and out.is_file() else {}
    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    old["rows"] = old.get("rows", []) + [{**r, "command": command} if append else r for r in rows]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(old, indent=1) + "\n")
    print(f"{'added ' + str(len(rows)) + ' rows to' if append else 'wrote'} {out}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ckpt", default=None, help="sweep the sampler settings of this checkpoint instead of "
                                                 "training and comparing the decoders")
    ap.add_argument("--data", default=None, help="shard folder (default: the embedded Bach corpus)")
    ap.add_argument("--reference-split", default=None, choices=("validation", "test", "validation+test"),
                    help="the real pieces compared with: validation to choose settings on (default with --ckpt), "
                         "test to report (default for the decoder comparison); validation+test only to compare "
                         "with rows measured before issue 22")
    ap.add_argument("--chosen-on", default=None, metavar="SPLIT",
                    help="where the settings swept were chosen (recorded in every row; default: the defaults' "
                         "CHOSEN_ON for the sampler's defaults, none for other candidates)")
    ap.add_argument("--size", default="tiny", help="network size of the decoder comparison (configs/size)")
    ap.add_argument("--train-steps", type=int, default=800, help="optimizer steps per decoder")
    ap.add_argument("--batch", type=int, default=16, help="training windows per step")
    ap.add_argument("--window", type=int, default=128, help="rows per training window")
    ap.add_argument("--steps", default="1,2,4,8", help="Amadeus denoising steps to sample with")
    ap.add_argument("--temperature", default=setting_text(DEFAULTS.temperature, "/"),
                    help="temperatures (--ckpt), each a number or per attribute: pitch=0.9/*=1")
    ap.add_argument("--top-p", default=setting_text(DEFAULTS.top_p, "/"), help="nucleus thresholds (--ckpt), each a number or per attribute: pitch=0.8/*=0.95")
    ap.add_argument("--order", default=DEFAULTS.order, help="reveal orders (--ckpt): confidence,harmony,columns")
    ap.add_argument("--reveal-threshold", default=str(DEFAULTS.reveal_threshold),
                    help="reveal thresholds (--ckpt); > 1 = off")
    ap.add_argument("--num", type=int, default=32, help="pieces sampled per setting")
    ap.add_argument("--max-notes", type=int, default=256, help="rows per sampled piece")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0,
                    help="piece i uses seed + i (--ckpt; also picks the ceiling's training pieces): another seed "
                         "checks a setting chosen on seed 0 on pieces it was not chosen on")
    ap.add_argument("--quick", action="store_true",
                    help="about a minute: 30 training steps, 4 pieces of 64 rows, S=2 only")
    ap.add_argument("--out", default=None, help="default: results/quality.json (decoders; rewritten), "
                                                "results/quality-sampler.json (--ckpt; rows appended)")
    args = ap.parse_args()
    out = Path(args.out) if args.out else SWEEP_RESULTS if args.ckpt else RESULTS
    if args.quick and not args.out:
        out = out.with_name(out.stem + "-quick.json")
    if args.ckpt and out.resolve() == RESULTS.resolve():
        raise SystemExit(f"quality.py: --out {out} is the decoder comparison; a sampler sweep writes elsewhere")
    torch.set_num_threads(args.threads)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)  # no banners per trained decoder
    if args.quick:
        args.train_steps, args.steps, args.num, args.max_notes = 30, "2", 4, 64
    steps = [int(s) for s in args.steps.split(",")]
    reference = {"split": args.reference_split or ("validation" if args.ckpt else "test"), "chosen_on": args.chosen_on}
    if args.ckpt:
        rows = sweep(args.ckpt, args.data, steps, _settings(args.temperature), _settings(args.top_p),
                     args.order.split(","), _floats(args.reveal_threshold), args.num, args.max_notes, args.seed,
                     reference)
    else:
        rows = compare_decoders(args.size, args.data, args.train_steps, args.batch, args.window, steps, args.num,
                                args.max_notes, reference=reference)
    print(table(rows))
    write(rows, out, append=bool(args.ckpt))


if __name__ == "__main__":
    main()
