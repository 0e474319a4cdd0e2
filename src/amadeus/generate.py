"""`amadeus generate`: sample MIDI (and WAV / piano-roll PNG) from a checkpoint.

    amadeus generate --ckpt outputs/demo/model.ckpt --num 4 --steps 4 --out samples/
    amadeus generate --ckpt CKPT --control instrument=piano,violin --control tempo=96 \
        --control time_signature=3/4 --png --wav --out samples/controlled
    amadeus generate --ckpt CKPT --prompt-midi song.mid --prompt-bars 4 --out samples/continued
    amadeus generate --ckpt CKPT --prompt-midi song.mid --regenerate velocity --out samples/revoiced
    amadeus generate --ckpt CKPT --text "A calm piano piece in D minor" --guidance 3 --out samples/text

Writes sample_000.mid ... (+ .wav, .png) and generation.json (settings, seeds, time taken, notes/s,
guard interventions). Bad arguments print one line on stderr and exit with code 2.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from amadeus.tokenizer import ATTRIBUTES


def _setting(values: list[str] | None, name: str, cast) -> Any:
    """Repeated --NAME values, each "X" (all attributes) or "attr=X" -> a number or {attr: X, "*": X}."""
    if not values:
        return None
    out: dict[str, Any] = {}
    for v in values:
        key, _, val = v.rpartition("=")
        key = key.strip() or "*"
        if key != "*" and key not in ATTRIBUTES:
            raise ValueError(f"--{name} {v}: unknown attribute {key!r}; known: {', '.join(ATTRIBUTES)}")
        try:
            out[key] = cast(val)
        except ValueError:
            raise ValueError(f"--{name} {v}: {val!r} is not a number") from None
    return out["*"] if list(out) == ["*"] else out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ckpt", required=True, help="Lightning .ckpt or exported folder (amadeus export)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--num", type=int, default=4, help="pieces to generate (default 4)")
    parser.add_argument("--max-notes", type=int, default=1024, help="at most this many generated rows per piece")
    parser.add_argument("--max-bars", type=int, default=None, help="at most this many generated bars per piece")
    parser.add_argument("--min-notes", type=int, default=0, help="no EOS before this many generated rows")
    parser.add_argument("--steps", type=int, default=None,
                        help=f"denoising steps per note, 1..{len(ATTRIBUTES)} (default {len(ATTRIBUTES) // 2})")
    parser.add_argument("--temperature", action="append", metavar="[ATTR=]T",
                        help="sampling temperature, global or per attribute (repeatable: --temperature 1.1 "
                             "--temperature pitch=0.9); 0 = greedy; default 1.0")
    parser.add_argument("--top-p", action="append", metavar="[ATTR=]P", help="nucleus threshold (default 0.95)")
    parser.add_argument("--top-k", action="append", metavar="[ATTR=]K", help="top-k (default 0 = off)")
    parser.add_argument("--seed", type=int, default=0, help="piece i uses seed + i (default 0)")
    parser.add_argument("--prompt-midi", default=None, help="MIDI file to continue (or to regenerate with --regenerate)")
    parser.add_argument("--prompt-bars", type=int, default=None, help="use the first N bars of --prompt-midi")
    parser.add_argument("--prompt-notes", type=int, default=None, help="use the first N rows of --prompt-midi")
    parser.add_argument("--regenerate", default=None, metavar="ATTRS",
                        help="re-sample these attributes of --prompt-midi and keep the rest, e.g. velocity or "
                             "instrument,velocity (any of chord, tempo, instrument, pitch, duration, velocity)")
    parser.add_argument("--control", action="append", default=[], metavar="NAME=VALUE",
                        help="attribute control (repeatable): instrument=piano,violin tempo=96 "
                             "time_signature=3/4 pitch=48-72 key=Dm velocity=60-100 duration=0.5-2 "
                             "chord=C,G,Am,F density=4-8; add @bars=A-B to restrict to bars")
    parser.add_argument("--text", default=None, help="caption (needs a text-conditioned checkpoint)")
    parser.add_argument("--guidance", type=float, default=None,
                        help="classifier-free guidance scale (default 3 with --text, else 1 = off)")
    parser.add_argument("--batch-size", type=int, default=None, help="pieces decoded together (default: all)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch CPU threads (default 0 = torch's default; 1 is fastest for small models and "
                             "whenever the machine is busy: more threads than free cores slow sampling 10x)")
    parser.add_argument("--wav", action="store_true", help="also render WAV (needs a soundfont)")
    parser.add_argument("--png", action="store_true", help="also draw piano-roll PNGs")


def _validate(args: argparse.Namespace) -> None:
    K = len(ATTRIBUTES)
    if args.steps is not None and not 1 <= args.steps <= K:
        raise ValueError(f"--steps {args.steps}: must be in 1..{K} (the number of attributes)")
    for name in ("num", "max_notes"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.max_bars is not None and args.max_bars < 1:
        raise ValueError(f"--max-bars must be >= 1, got {args.max_bars}")
    if (args.prompt_bars or args.prompt_notes or args.regenerate) and not args.prompt_midi:
        raise ValueError("--prompt-bars / --prompt-notes / --regenerate need --prompt-midi FILE")
    if args.prompt_midi and not Path(args.prompt_midi).is_file():
        raise ValueError(f"--prompt-midi {args.prompt_midi}: no such file")
    if args.guidance is not None and args.guidance != 1.0 and not args.text:
        raise ValueError("--guidance needs --text")
    if args.threads < 0:
        raise ValueError(f"--threads must be >= 0, got {args.threads}")
    ckpt = Path(args.ckpt)
    if not ckpt.exists():
        raise ValueError(f"--ckpt {ckpt}: no such checkpoint file or exported folder")


def run(args: argparse.Namespace) -> int:
    import torch

    from amadeus.hub import Amadeus

    try:
        _validate(args)
        temperature = _setting(args.temperature, "temperature", float)
        top_p = _setting(args.top_p, "top-p", float)
        top_k = _setting(args.top_k, "top-k", int)
        device = args.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if args.threads > 0 and device == "cpu":
            torch.set_num_threads(args.threads)
        model = Amadeus.load(args.ckpt, device=device)
        options: dict[str, Any] = dict(
            max_notes=args.max_notes, max_bars=args.max_bars, min_notes=args.min_notes, steps=args.steps,
            temperature=1.0 if temperature is None else temperature, top_p=0.95 if top_p is None else top_p,
            top_k=0 if top_k is None else top_k, seed=args.seed, controls=args.control,
            batch_size=args.batch_size)
        if args.text:
            options.update(text=args.text, guidance=3.0 if args.guidance is None else args.guidance)
        start = time.perf_counter()
        if args.regenerate:
            attrs = [a.strip() for a in args.regenerate.split(",") if a.strip()]
            from amadeus.sampling import prompt_from_midi

            piece = prompt_from_midi(model.tokenizer, args.prompt_midi, bars=args.prompt_bars, notes=args.prompt_notes)
            options.pop("max_notes")
            scores = model.regenerate(piece, attrs, num=args.num, **options)
        else:
            scores = model.generate(args.num, prompt=args.prompt_midi, prompt_bars=args.prompt_bars,
                                    prompt_notes=args.prompt_notes, **options)
        result = model.last_result
    except (ValueError, OSError) as e:  # our errors (checkpoint, control, tokenizer) are ValueErrors
        print(f"amadeus generate: error: {e}", file=sys.stderr)
        return 2

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
