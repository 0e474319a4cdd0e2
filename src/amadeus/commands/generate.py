"""`amadeus generate`: sample MIDI (and WAV / piano-roll PNG) from a checkpoint.

    amadeus generate --ckpt outputs/demo/model.ckpt --num 4 --steps 4 --out samples/
    amadeus generate --ckpt CKPT --control instrument=piano,violin --control tempo=96 \
        --control time_signature=3/4 --png --wav --out samples/controlled
    amadeus generate --ckpt CKPT --prompt-midi song.mid --prompt-bars 4 --out samples/continued
    amadeus generate --ckpt CKPT --prompt-midi song.mid --regenerate velocity --out samples/revoiced
    amadeus generate --ckpt CKPT --prompt-midi song.mid --infill-bars 5-8 --out samples/infilled
    amadeus generate --ckpt CKPT --prompt-midi song.mid --keep-tracks 1 --add-instruments violin,cello --out samples/duo
    amadeus generate --ckpt CKPT --text "A calm piano piece in D minor" --guidance 2 --out samples/text

The sampler's flags and defaults are `amadeus.sampling.options.SamplingOptions`' (the same for the Python
API and the studio: the same seed and settings write the same notes).

Writes sample_000.mid ... (+ .wav, .png) and generation.json (settings, seeds, time taken, notes/s,
guard interventions). Bad arguments print one line on stderr and exit with code 2.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from amadeus.commands._common import (
    GENERATE_THREADS,
    UsageError,
    add_device_arguments,
    add_sampling_arguments,
    check_at_least,
    check_threads,
    fail,
    sampling_options,
    torch_runtime,
)
from amadeus.infill import INFILL_CONTEXT
from amadeus.sampling.options import SamplingOptions


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of `amadeus generate`."""
    parser.add_argument("--ckpt", required=True, help="Lightning .ckpt or exported folder (amadeus export)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--num", type=int, default=4, help="pieces to generate (default 4)")
    parser.add_argument("--max-notes", type=int, default=SamplingOptions.max_notes,
                        help="at most this many generated rows per piece")
    parser.add_argument("--max-bars", type=int, default=None, help="at most this many generated bars per piece")
    parser.add_argument("--min-notes", type=int, default=0, help="no EOS before this many generated rows")
    add_sampling_arguments(parser)
    parser.add_argument("--seed", type=int, default=0, help="piece i uses seed + i (default 0)")
    parser.add_argument("--prompt-midi", default=None,
                        help="MIDI file to continue (or to regenerate with --regenerate)")
    parser.add_argument("--prompt-bars", type=int, default=None, help="use the first N bars of --prompt-midi")
    parser.add_argument("--prompt-notes", type=int, default=None, help="use the first N rows of --prompt-midi")
    parser.add_argument("--regenerate", default=None, metavar="ATTRS",
                        help="re-sample these attributes of --prompt-midi and keep the rest, e.g. velocity or "
                             "instrument,velocity (any of chord, tempo, instrument, pitch, duration, velocity)")
    parser.add_argument("--infill-bars", default=None, metavar="A-B",
                        help="rewrite bars A to B of --prompt-midi (1-based, inclusive, as a MIDI editor counts them), "
                             "given the music before and after; everything else stays note for note")
    parser.add_argument("--keep-tracks", default=None, metavar="TRACKS",
                        help="keep these tracks of --prompt-midi note for note (1-based numbers or track / instrument "
                             "names, e.g. 1 or Violin) and write the other parts around them")
    parser.add_argument("--add-instruments", default=None, metavar="NAMES",
                        help="with --keep-tracks: the instruments of the new parts, e.g. violin,cello")
    parser.add_argument("--context", type=int, default=INFILL_CONTEXT,
                        help=f"rows of the piece around the gap (or of kept parts) the model reads (default {INFILL_CONTEXT})")
    parser.add_argument("--control", action="append", default=[], metavar="NAME=VALUE",
                        help="attribute control (repeatable): instrument=piano,violin tempo=96 "
                             "time_signature=3/4 pitch=48-72 key=Dm velocity=60-100 duration=0.5-2 "
                             "chord=C,G,Am,F density=4-8; add @bars=A-B to restrict to bars")
    parser.add_argument("--text", default=None, help="caption (needs a text-conditioned checkpoint)")
    parser.add_argument("--batch-size", type=int, default=None, help="pieces decoded together (default: all)")
    add_device_arguments(parser, GENERATE_THREADS,
                         f"torch CPU threads (default {GENERATE_THREADS} = torch's default; 1 is fastest for small "
                         "models and whenever the machine is busy: more threads than free cores slow sampling 10x)")
    parser.add_argument("--wav", action="store_true", help="also render WAV (needs a soundfont)")
    parser.add_argument("--png", action="store_true", help="also draw piano-roll PNGs")


def _validate(args: argparse.Namespace) -> SamplingOptions:
    """Check the flags; the sampler's settings as SamplingOptions."""
    check_at_least(args, ("num", "max_notes", "max_bars"), 1)
    if (args.prompt_bars or args.prompt_notes or args.regenerate or args.infill_bars or args.keep_tracks) \
            and not args.prompt_midi:
        raise UsageError("--prompt-bars / --prompt-notes / --regenerate / --infill-bars / --keep-tracks need "
                         "--prompt-midi FILE")
    if sum(bool(x) for x in (args.regenerate, args.infill_bars, args.keep_tracks)) > 1:
        raise UsageError("choose one of --regenerate, --infill-bars and --keep-tracks")
    if args.add_instruments and not args.keep_tracks:
        raise UsageError("--add-instruments needs --keep-tracks")
    if args.infill_bars is not None:
        _bars(args.infill_bars)
    check_at_least(args, ("context",), 1)
    if args.prompt_midi and not Path(args.prompt_midi).is_file():
        raise UsageError(f"--prompt-midi {args.prompt_midi}: no such file")
    check_threads(args.threads)
    ckpt = Path(args.ckpt)
    if not ckpt.exists():
        raise UsageError(f"--ckpt {ckpt}: no such checkpoint file or exported folder")
    options = sampling_options(args, max_notes=args.max_notes, max_bars=args.max_bars, min_notes=args.min_notes,
                               batch_size=args.batch_size)
    try:
        options.guidance_for(bool(args.text))
    except ValueError:
        raise UsageError("--guidance needs --text") from None
    return options


def _bars(text: str) -> tuple[int, int]:
    """"5-8" (or "5") -> (5, 8)."""
    first, _, last = text.partition("-")
    try:
        return int(first), int(last or first)
    except ValueError:
        raise UsageError(f"--infill-bars {text}: expected bars A-B, e.g. 5-8") from None


def _sample(args: argparse.Namespace, options: SamplingOptions, device: str):
    """Load the model and sample; returns (model, scores, seconds since the start)."""
    from amadeus.api import Amadeus
    from amadeus.sampling import prompt_from_midi

    model = Amadeus.load(args.ckpt, device=device)
    start = time.perf_counter()
    common = dict(options=options, seed=args.seed, controls=args.control, text=args.text)
    if args.infill_bars:
        scores = model.infill(args.prompt_midi, _bars(args.infill_bars), num=args.num, context=args.context, **common)
    elif args.keep_tracks:
        keep = [t.strip() for t in args.keep_tracks.split(",") if t.strip()]
        scores = model.accompany(args.prompt_midi, keep, num=args.num, add_instruments=args.add_instruments,
                                 context=args.context, **common)
    elif args.regenerate:
        attrs = [a.strip() for a in args.regenerate.split(",") if a.strip()]
        piece = prompt_from_midi(model.tokenizer, args.prompt_midi, bars=args.prompt_bars, notes=args.prompt_notes)
        scores = model.regenerate(piece, attrs, num=args.num, **common)
    else:
        scores = model.generate(args.num, prompt=args.prompt_midi, prompt_bars=args.prompt_bars,
                                prompt_notes=args.prompt_notes, **common)
    return model, scores, start


def run(args: argparse.Namespace) -> int:
    """Sample, write the files and generation.json; 2 on bad arguments or an unusable checkpoint."""
    try:
        options = _validate(args)
        with torch_runtime(args.device, args.threads) as device:
            model, scores, start = _sample(args, options, device)
        result = model.last_result
    except (ValueError, OSError) as e:  # our errors (checkpoint, control, tokenizer) are ValueErrors
        return fail("generate", e)

    from amadeus.render import NO_SOUNDFONT, find_soundfont, piano_roll_png, render_wav

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    files: list[str] = []
    soundfont = find_soundfont() if args.wav else None
    wav_note = None
    if args.wav and soundfont is None:
        wav_note = NO_SOUNDFONT
        print(f"amadeus generate: {NO_SOUNDFONT}", file=sys.stderr)
    for i, score in enumerate(scores):
        stem = out / f"sample_{i:03d}"
        score.dump_midi(str(stem.with_suffix(".mid")))
        files.append(stem.with_suffix(".mid").name)
        if args.png:
            piano_roll_png(score, stem.with_suffix(".png"), title=f"sample {i} (seed {result.seeds[i]})")
            files.append(stem.with_suffix(".png").name)
        if soundfont is not None:
            render_wav(score, stem.with_suffix(".wav"), soundfont=soundfont)
            files.append(stem.with_suffix(".wav").name)
    elapsed = time.perf_counter() - start
    report = {
        "checkpoint": str(args.ckpt),
        "tokenizer_hash": model.tokenizer.config_hash,
        "device": str(model.device),
        "settings": {k: v for k, v in vars(args).items() if k not in ("func",)},
        "sampling": result.settings,
        "seed": args.seed,
        "seeds": result.seeds,
        "seconds_sampling": round(result.seconds, 4),
        "seconds_total": round(elapsed, 4),
        "notes": result.notes,
        "rows": result.rows,
        "notes_per_s": round(result.notes_per_s, 2),
        "guard_interventions": result.guard_interventions,
        "control_interventions": result.control_interventions,
        "conflicts_resolved": result.conflicts,
        "head_passes": result.head_passes,
        "files": files,
        "wav": wav_note or ("written" if args.wav else "not requested"),
    }
    (out / "generation.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(f"wrote {len(scores)} pieces to {out} ({result.notes} notes in {result.seconds:.2f} s, "
          f"{result.notes_per_s:.1f} notes/s, {result.guard_interventions} guard interventions)")
    return 0
