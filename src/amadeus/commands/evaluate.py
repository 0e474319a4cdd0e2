"""`amadeus evaluate`: text adherence and unconditional metrics of a checkpoint, as a table and JSON.

    amadeus evaluate --ckpt outputs/demo/model-text.ckpt --split test --num 16 --out eval.json

What is measured is described in `amadeus.evaluate`. Bad arguments print one line on stderr and exit
with code 2.
"""
from __future__ import annotations

import argparse
import inspect
import json
import sys
from pathlib import Path

from amadeus.commands._common import (
    EVAL_THREADS,
    UsageError,
    add_device_arguments,
    add_sampling_arguments,
    check_at_least,
    check_threads,
    fail,
    sampling_options,
    torch_runtime,
)


def _defaults() -> dict:
    """The library defaults of `amadeus.evaluate.evaluate` (defined there once)."""
    from amadeus.evaluate import evaluate

    return {k: p.default for k, p in inspect.signature(evaluate).parameters.items()
            if p.default is not inspect.Parameter.empty}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of `amadeus evaluate`."""
    from amadeus.evaluate import CHOSEN_ON, HELD_OUT, SPLITS

    d = _defaults()
    parser.add_argument("--ckpt", required=True, help="Lightning .ckpt or exported folder (amadeus export)")
    parser.add_argument("--data", default=None,
                        help="shard folder (amadeus preprocess); default: the embedded Bach corpus shards")
    parser.add_argument("--split", default=d["split"], choices=SPLITS,
                        help=f"split to evaluate on (default {d['split']})")
    parser.add_argument("--reference-split", default=None, choices=HELD_OUT,
                        help="the real pieces the sample quality compares with: test to report, validation to "
                             "choose settings on (default: --split when it is one of them, else test)")
    parser.add_argument("--chosen-on", default=None, metavar="SPLIT",
                        help="where the sampler settings given were chosen, recorded in the report (default: where "
                             "the defaults were, " + ", ".join(f"{k} {v}" for k, v in CHOSEN_ON.items()) + ")")
    parser.add_argument("--num", type=int, default=d["num"],
                        help=f"captioned pieces used as prompts (default {d['num']})")
    parser.add_argument("--max-notes", type=int, default=d["max_notes"],
                        help="at most this many generated rows per piece")
    add_sampling_arguments(parser)
    parser.add_argument("--first", action="store_true",
                        help="prompts: the first NUM captioned pieces in shard order (default: round-robin over "
                             "the split's styles when the data has styles)")
    parser.add_argument("--seed", type=int, default=d["seed"], help="piece i uses seed + i, with and without text")
    parser.add_argument("--adherence", default=d["adherence"], choices=("amadeus", "midicaps"),
                        help="how tempo, time signature and key of a piece are read for TB/TBT/CTS/CK: amadeus "
                             "(default: longest-held tempo and time signature, Krumhansl-Kessler key) or midicaps "
                             "(MidiCaps' pipeline: first tempo event, first time signature, music21's key analysis)")
    parser.add_argument("--style-model", default=None, metavar="PATH",
                        help="style classifier JSON for CS, fitted on the data's training split when missing or "
                             "stale (default: DATA/style-classifier.json)")
    parser.add_argument("--clap", default=None, metavar="PATH",
                        help="local CLAP checkpoint (Hugging Face folder) to compute CLAP; never downloaded")
    parser.add_argument("--nll-windows", type=int, default=d["nll_windows"],
                        help=f"windows of the split for the diffusion ELBO (default {d['nll_windows']}; 0 = skip)")
    parser.add_argument("--nll-length", type=int, default=d["nll_length"],
                        help=f"rows per ELBO window (default {d['nll_length']})")
    parser.add_argument("--nll-samples", type=int, default=d["nll_samples"],
                        help="random masks per mask size for the ELBO (exact where fewer subsets exist; "
                             f"default {d['nll_samples']})")
    add_device_arguments(parser, EVAL_THREADS,
                         f"torch CPU threads (default {EVAL_THREADS}: the sampler's small per-note tensors run "
                         "fastest on one thread, and far slower when threads outnumber free cores; "
                         "0 = torch's default)")
    parser.add_argument("--out", default=None,
                        help="JSON report (default: beside the checkpoint, NAME.eval.json or FOLDER/evaluation.json)")


def _validate(args: argparse.Namespace) -> None:
    from amadeus.evaluate import is_local

    if not Path(args.ckpt).exists():
        raise UsageError(f"--ckpt {args.ckpt}: no such checkpoint file or exported folder")
    if args.data is not None and is_local(args.data) and not (Path(args.data) / "manifest.json").is_file():
        what = ("no such folder" if not Path(args.data).exists()
                else "no manifest.json in it (make shards with `amadeus preprocess`)")
        raise UsageError(f"--data {args.data}: {what}")
    check_at_least(args, ("num", "max_notes", "nll_samples"), 1)
    check_at_least(args, ("nll_windows",), 0)
    check_at_least(args, ("nll_length",), 2)
    check_threads(args.threads)
    if args.clap is not None and not Path(args.clap).exists():
        raise UsageError(f"--clap {args.clap}: no such local CLAP checkpoint (nothing is downloaded)")


def _default_out(ckpt: str) -> Path:
    p = Path(ckpt)
    return p / "evaluation.json" if p.is_dir() else p.with_name(p.stem + ".eval.json")


def run(args: argparse.Namespace) -> int:
    """Evaluate, write the JSON report, print the tables; 2 on bad arguments or unusable inputs."""
    from amadeus.evaluate import evaluate
    from amadeus.evaluation_tables import format_report
    from amadeus.metrics import MetricUnavailable

    try:
        _validate(args)
        options = sampling_options(args)
        with torch_runtime(args.device, args.threads) as device:
            report = evaluate(args.ckpt, options=options, data=args.data, split=args.split, num=args.num,
                              max_notes=args.max_notes, seed=args.seed, clap=args.clap,
                              nll_windows=args.nll_windows, nll_length=args.nll_length,
                              nll_samples=args.nll_samples, device=device, adherence=args.adherence,
                              style_model=args.style_model, stratify=not args.first,
                              reference_split=args.reference_split,
                              chosen_on=args.chosen_on and {"sampler": args.chosen_on, "guidance": args.chosen_on},
                              log=lambda msg: print(msg, file=sys.stderr))
    except (ValueError, OSError, MetricUnavailable) as e:  # checkpoint, data, tokenizer and CLAP errors
        return fail("evaluate", e)
    out = Path(args.out) if args.out else _default_out(args.ckpt)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, allow_nan=False) + "\n")
    print(format_report(report))
    print(f"\nwrote {out} ({report['seconds']:.1f} s)")
    return 0
