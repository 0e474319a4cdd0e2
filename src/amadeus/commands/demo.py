"""`amadeus demo`: the main job on the embedded data, what `make demo` runs.

1. builds (or reuses) the embedded corpora and their shards: the Bach chorales (pretraining) and the
   folk tune books of music21's corpus (text), prints their statistics;
2. trains `configs/tiny.yaml` on the chorales (CPU, a few minutes) and reports the validation loss;
3. writes sampled chorales as MIDI + piano-roll PNG into OUT;
4. fine-tunes the tiny model on the captioned folk tunes (`configs/tiny-text.yaml`), then evaluates it
   on the captions of held-out pieces (the captions are templated: it is the pieces that are held out, not
   the text) with and without the text (`amadeus evaluate`: key, metre, tempo and style adherence with
   95 % intervals, OUT/evaluation.json) and writes two pieces generated from two of those captions.
"""
from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path
from typing import Any

from amadeus.commands._common import DEMO_MAX_NOTES, fail

EVAL_PROMPTS = 96  # held-out pieces whose captions prompt the text stage, round-robin over styles (at least 48: issue 12)
EVAL_MAX_NOTES = 128  # rows per generated piece in the text evaluation (folk tunes: 50-150 notes)
HEADLINE = ("CK", "CTS", "TBT", "CS")  # the text-adherence metrics the demo prints first


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of `amadeus demo`."""
    parser.add_argument("--out", default="outputs/demo", help="where the checkpoint and samples go")
    parser.add_argument("--config", default="configs/tiny.yaml", help="pretraining config")
    parser.add_argument("--text-config", default="configs/tiny-text.yaml", help="text fine-tuning config")
    parser.add_argument("--max-steps", type=int, default=None, help="override trainer.max_steps (pretraining)")
    parser.add_argument("--text-steps", type=int, default=None, help="override trainer.max_steps (fine-tuning)")
    parser.add_argument("--samples", type=int, default=4, help="unconditional samples to write")
    parser.add_argument("--no-text", action="store_true", help="skip the text fine-tuning stage")
    parser.add_argument("--prompts", type=int, default=EVAL_PROMPTS,
                        help=f"held-out pieces whose captions the text stage is evaluated on (default {EVAL_PROMPTS})")
    parser.add_argument("--workers", type=int, default=None, help="preprocessing processes")


def _fit(config: str, out: Path, extra: list[str]) -> tuple[Path, dict[str, float]]:
    """Run `amadeus fit -c config` in-process; return the last checkpoint and the final metrics."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    from amadeus.commands.lightning import make_cli

    cli = make_cli(["fit", "-c", config, f"--trainer.default_root_dir={out}",
                    f"--trainer.logger.init_args.save_dir={out}"] + extra)
    ckpt = next(cb for cb in cli.trainer.callbacks if isinstance(cb, ModelCheckpoint))
    metrics = {k: float(v) for k, v in cli.trainer.callback_metrics.items() if v.numel() == 1}
    return Path(ckpt.last_model_path or ckpt.best_model_path), metrics


def _write_samples(scores: list, out: Path, stem: str) -> list[Path]:
    from amadeus.render import piano_roll_png

    written = []
    for i, score in enumerate(scores):
        mid = out / f"{stem}_{i}.mid"
        score.dump_midi(str(mid))
        piano_roll_png(score, out / f"{stem}_{i}.png", title=f"{stem} {i}")
        written.append(mid)
    return written


def _corpus(workers: int | None, text: bool) -> dict[str, str]:
    print("== 1/4 embedded corpora (built offline from music21)")
    from amadeus.corpus import (FOLK_COLLECTIONS, build_bach_corpus, build_music21_shards, corpus_statistics,
                                default_bach_dir, default_folk_dir, ensure_bach_shards)

    from amadeus.corpus.splits import moved_text

    shards = ensure_bach_shards(workers=workers)
    stats = {"bach": corpus_statistics(default_bach_dir() / "midi").summary()}
    build = build_bach_corpus(default_bach_dir() / "midi", workers=workers, progress=False)  # cached: its stamp
    print(f"Bach chorales (pretraining): {stats['bach']}\n{moved_text(build.moved, build.cached)}\nshards: {shards}")
    if text:
        report, pre = build_music21_shards(default_folk_dir(), FOLK_COLLECTIONS, workers=workers)
        stats["folk"] = report.summary()
        print(f"folk tunes (text): {stats['folk']}\n{moved_text(report.moved, report.cached)}\nshards: {pre.out}")
    return stats


def _pretrain(args: argparse.Namespace, out: Path) -> tuple[Path, dict[str, float]]:
    print("== 2/4 training configs/tiny.yaml")
    extra = [f"--trainer.max_steps={args.max_steps}"] if args.max_steps else []
    last, metrics = _fit(args.config, out / "train", extra)
    ckpt = out / "model.ckpt"
    shutil.copyfile(last, ckpt)
    val_loss, val_diff = metrics.get("val/loss"), metrics.get("val/diffusion")
    print(f"checkpoint: {ckpt}")
    if val_diff is not None:
        acc = {k.split("/")[-1]: round(v, 3) for k, v in metrics.items() if k.startswith("val/acc/")}
        print(f"validation: diffusion loss {val_diff:.4f} (ELBO per attribute slot, nats), total with MLSDES "
              f"{val_loss:.4f}; masked-slot accuracy {acc}")
    return ckpt, metrics


def _sample(ckpt: Path, out: Path, num: int, data: Path | None = None) -> tuple[list[Path], dict[str, Any]]:
    """Write `num` samples at the sampler's defaults; flag each degenerate one (above 1.5 x the most notes
    at once or onsets per beat of the pieces of `data`, default the chorales: amadeus.descriptors.degenerate)."""
    print("== 3/4 sampling")
    from amadeus.api import Amadeus
    from amadeus.corpus import CORPORA
    from amadeus.datamodule import MusicDataModule
    from amadeus.descriptors import degenerate, describe_set
    from amadeus.evaluate import corpus_limits_of

    model = Amadeus.load(ckpt)
    scores = model.generate(num=num, max_notes=DEMO_MAX_NOTES, seed=0)  # the sampler's defaults
    written = _write_samples(scores, out, "sample")
    dm = MusicDataModule(data_dir=str(data or CORPORA["bach"].shards_dir()), num_workers=0,
                         tokenizer_hash=model.tokenizer.config_hash)
    limits = corpus_limits_of(dm, model.tokenizer, DEMO_MAX_NOTES)
    described = describe_set(scores)
    flags = degenerate(described, limits)
    for i, (path, score) in enumerate(zip(written, scores)):
        voices, beat = int(described["max_voices"][i]), int(described["max_notes_per_beat"][i])
        print(f"  {path}  ({score.note_num()} notes, at most {voices} at once and {beat} onsets in a beat"
              + (": DEGENERATE)" if i in flags["pieces"] else ")"))
    print(f"degenerate samples: {len(flags['pieces'])} of {len(scores)} (above {flags['factor']:g} x the corpus' "
          f"most notes at once, {limits['max_voices']:g}, or onsets in one beat, {limits['max_notes_per_beat']:g})")
    return written, {"degenerate_rate": flags["rate"], "degenerate": flags["pieces"], "limits": limits}


def _text_stage(ckpt: Path, out: Path, data: Path, prompts: int, max_notes: int = EVAL_MAX_NOTES,
                **evaluation: Any) -> dict[str, Any]:
    """Evaluate the text model on the captions of `prompts` held-out pieces of `data` (with and without the
    text, at the sampler's defaults unless `evaluation` holds other `evaluate` arguments) into
    OUT/evaluation.json, print the report, write two pieces from the first two captions."""
    from amadeus.api import Amadeus
    from amadeus.evaluate import evaluate
    from amadeus.evaluation_tables import format_report

    report = evaluate(ckpt, data=data, split="test", num=prompts, max_notes=max_notes, **evaluation)
    guidance = report["settings"]["guidance"]
    (out / "evaluation.json").write_text(json.dumps(report, indent=2, allow_nan=False) + "\n")
    print(format_report(report))
    features = report["adherence"]["features"]
    headline = {mode: {m: features[mode][m] for m in HEADLINE} for mode in ("with_text", "without_text")}
    diff = report["adherence_difference"]["features"] or {}

    def span(m: str) -> str:
        low, high = (diff.get(m) or {}).get("ci95") or (None, None)
        return f" (difference {low:+.1f}..{high:+.1f})" if low is not None else ""

    print(f"\nthe captions of {report['settings']['num']} held-out pieces (guidance {guidance:g}), % of pieces "
          "matching the prompt piece, 95 % interval of the paired difference: " + "; ".join(
              f"{m} {headline['with_text'][m]:.1f} with text vs {headline['without_text'][m]:.1f} without{span(m)}"
              for m in HEADLINE))
    model = Amadeus.load(ckpt)
    for i, piece in enumerate(report["pieces"][:2]):
        scores = model.generate(num=1, text=piece["caption"], options=evaluation.get("options"), max_notes=max_notes,
                                seed=piece["seed"])
        _write_samples(scores, out, f"text{i}")
        print(f"  {out}/text{i}_0.mid  from: {piece['caption']}")
    return {"evaluation": str(out / "evaluation.json"), "adherence": headline,
            "adherence_difference": {m: diff.get(m) for m in HEADLINE},
            "style_ceiling": ((report.get("style") or {}).get("CS") or {}).get("held_out")}


def run(args: argparse.Namespace) -> int:
    """The four stages; 2 when a config file is missing."""
    for cfg in [args.config] + ([] if args.no_text else [args.text_config]):
        if not Path(cfg).is_file():
            return fail("demo", f"config {cfg} not found (run from the repository root)", prefix="")
    if args.prompts < 1:
        return fail("demo", f"--prompts must be >= 1, got {args.prompts}", prefix="")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    stats = _corpus(args.workers, text=not args.no_text)
    ckpt, metrics = _pretrain(args, out)
    written, checked = _sample(ckpt, out, args.samples)
    summary: dict[str, Any] = {"corpus": stats, "val_loss": metrics.get("val/loss"),
                               "val_diffusion": metrics.get("val/diffusion"), "samples": [str(p) for p in written],
                               "samples_degenerate": checked}
    if not args.no_text:
        print("== 4/4 text fine-tuning on the captioned folk tunes, then the captions of held-out pieces with and "
              "without text")
        extra = [f"--model.init_from={ckpt}"] + ([f"--trainer.max_steps={args.text_steps}"] if args.text_steps else [])
        last, _ = _fit(args.text_config, out / "text", extra)
        text_ckpt = out / "model-text.ckpt"
        shutil.copyfile(last, text_ckpt)
        from amadeus.corpus import default_folk_dir

        summary["text"] = _text_stage(text_ckpt, out, default_folk_dir() / "shards", args.prompts)
    (out / "demo.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"done in {time.perf_counter() - t0:.0f} s; everything is in {out}/")
    return 0
