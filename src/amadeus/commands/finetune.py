"""`amadeus finetune SRC --from CKPT --out DIR`: fine-tune a model on your own MIDI in one command.

    amadeus finetune my_songs/ --from outputs/demo/model.ckpt --out outputs/my-style --max-steps 60
    amadeus generate --ckpt outputs/my-style/model.ckpt --num 4 --out samples/

SRC is what `amadeus preprocess` reads (a folder, glob, .tar/.tar.gz/.tgz or list file); bad files are
skipped and listed. Writes DIR/model.ckpt, DIR/samples/sample_<i>.mid and DIR/report.json (the base and the
fine-tuned model against your held-out pieces: descriptor OA and NLL per note), and prints two lines.
Running the same command again continues an interrupted run (or a finished one given a larger budget).
The work is `amadeus.finetune`; the recipe's defaults and their measurement are in docs/finetune.md.
Bad input prints one line on stderr and exits with code 2; Ctrl-C saves a checkpoint and exits with 130.
"""
from __future__ import annotations

import argparse
import logging
import sys
import warnings

from amadeus.commands._common import UsageError, check_threads, fail, torch_runtime

# torch CPU threads of training (the report's sampling always runs on one). One: on the shared 2-core machine
# two threads made a step 1.8x faster when the other jobs left room (0.30 s vs 0.53 s) but 5x slower when
# they did not (31 s vs 6 s; docs/finetune.md, benchmarks/finetune.py --threads).
FINETUNE_THREADS = 1


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of `amadeus finetune`."""
    from amadeus.finetune_training import Recipe

    r = Recipe()
    parser.add_argument("src", help="your MIDI: a folder (recursive), glob, .tar/.tar.gz/.tgz or list file")
    parser.add_argument("--from", dest="ckpt", required=True, metavar="CKPT",
                        help="the pretrained model: a Lightning .ckpt or an exported folder (amadeus export)")
    parser.add_argument("--out", required=True, metavar="DIR", help="where model.ckpt, samples/ and report.json go")
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--max-steps", type=int, default=None, metavar="N",
                        help="training steps (default 300 when --minutes is not given)")
    budget.add_argument("--minutes", type=float, default=None, metavar="M",
                        help="minutes of training (preprocessing and the report come on top)")
    parser.add_argument("--captions", default=None, metavar="F",
                        help="MidiCaps JSON/JSONL captions for SRC (pieces without one get an automatic caption)")
    parser.add_argument("--workers", type=int, default=None, metavar="N",
                        help="preprocessing processes (default: the CPU cores)")
    parser.add_argument("--device", default="auto", help="auto (the GPU when there is one), cpu, cuda, cuda:1 ...")
    parser.add_argument("--threads", type=int, default=FINETUNE_THREADS,
                        help=f"torch CPU threads of training, 0 = torch's default (default {FINETUNE_THREADS}: safest "
                             "on a busy machine; more help on idle cores); the report samples on one")
    parser.add_argument("--seed", type=int, default=0, help="seed of training and of the report's pieces")
    parser.add_argument("--eval-pieces", type=int, default=8,
                        help="pieces each model generates for the report (the first 4 are the samples; default 8)")
    parser.add_argument("--eval-notes", type=int, default=256,
                        help="rows of each generated piece, samples included (default 256)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars or progress messages")
    recipe = parser.add_argument_group("recipe (defaults measured for small corpora, docs/finetune.md)")
    recipe.add_argument("--lr", type=float, default=r.lr, help=f"peak learning rate (default {r.lr:g})")
    recipe.add_argument("--warmup-steps", type=int, default=r.warmup_steps,
                        help=f"linear warm-up steps (default {r.warmup_steps})")
    recipe.add_argument("--ema-decay", type=float, default=r.ema_decay,
                        help=f"weight averaging, 0 = off (default {r.ema_decay:g})")
    default_transpose = "off" if r.transpose is None else f"{r.transpose[0]},{r.transpose[1]}"
    recipe.add_argument("--transpose", default=default_transpose, metavar="LOW,HIGH",
                        help=f"semitone range drawn per training window, or off (default {default_transpose})")
    recipe.add_argument("--batch-size", type=int, default=r.batch_size, help=f"windows per step (default {r.batch_size})")


def _transpose(text: str) -> tuple[int, int] | None:
    if text.strip().lower() in ("off", "none", "0"):
        return None
    low, sep, high = text.partition(",")
    try:
        return (int(low), int(high)) if sep else (-abs(int(low)), abs(int(low)))
    except ValueError:
        raise ValueError(f"--transpose {text!r}: give LOW,HIGH semitones (e.g. -5,6) or off") from None


def run(args: argparse.Namespace) -> int:
    """0 when DIR holds the fine-tuned model and its report; 2 for bad input; 130 when interrupted."""
    from amadeus.finetune import FinetuneError, FinetuneInterrupted, finetune
    from amadeus.finetune_training import Recipe

    try:
        transpose = _transpose(args.transpose)
        if args.workers is not None and args.workers < 0:
            raise ValueError(f"--workers must be >= 0, got {args.workers}")
        if not (args.lr > 0 and args.warmup_steps >= 0 and 0 <= args.ema_decay < 1 and args.batch_size >= 1):
            raise ValueError("need --lr > 0, --warmup-steps >= 0, 0 <= --ema-decay < 1 and --batch-size >= 1")
        if transpose is not None and transpose[0] > transpose[1]:
            raise ValueError(f"--transpose {args.transpose}: LOW must not exceed HIGH")
        check_threads(args.threads)
    except (ValueError, UsageError) as e:
        return fail("finetune", e)
    recipe = Recipe(lr=args.lr, warmup_steps=args.warmup_steps, ema_decay=args.ema_decay, transpose=transpose,
                    batch_size=args.batch_size)
    _quiet_lightning()
    log = (lambda message: None) if args.quiet else (lambda message: print(f"finetune: {message}", file=sys.stderr))
    try:
        with torch_runtime(args.device, args.threads) as device:
            result = finetune(args.src, args.ckpt, args.out, max_steps=args.max_steps, minutes=args.minutes,
                              captions=args.captions, workers=args.workers, recipe=recipe, device=device,
                              seed=args.seed, eval_pieces=args.eval_pieces, eval_notes=args.eval_notes,
                              samples=min(4, args.eval_pieces),
                              progress=not args.quiet, log=log)
    except FinetuneInterrupted as e:
        print(f"amadeus finetune: {e}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:  # outside training: a run with a checkpoint keeps it, one without leaves nothing
        print("amadeus finetune: interrupted; run the same command again to continue", file=sys.stderr)
        return 130
    except FinetuneError as e:
        return fail("finetune", e)
    print(*result.lines(), sep="\n")
    return 0


def _quiet_lightning() -> None:
    """Lightning's start-up lines (devices, seeds, tips) and its small-data warnings say nothing to a user here."""
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*IterableDataset.*__len__.*")
