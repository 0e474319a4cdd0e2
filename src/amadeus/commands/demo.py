"""`amadeus demo`: the main job on the embedded data, what `make demo` runs.

1. builds (or reuses) the embedded Bach corpus and its shards, prints its statistics;
2. trains `configs/tiny.yaml` on it (CPU, a few minutes) and reports the validation loss;
3. writes sampled chorales as MIDI + piano-roll PNG into OUT;
4. fine-tunes the tiny model on the auto-captions (`configs/tiny-text.yaml`) and generates from two
   contrasting captions, with and without the text, printing the text-adherence metrics of each.
"""
from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path
from typing import Any

from amadeus.commands._common import DEMO_MAX_NOTES, TEXT_GUIDANCE, fail

# Two contrasting targets that the Bach corpus can teach (it has 4/4 and 3/4 pieces in many keys,
# but nearly all at one tempo, so tempo is stated and not contrasted). Captions are written from
# them by the same templates as the training captions.
TARGETS = (
    {"key": "D minor", "key_mode": "minor", "time_signature": "3/4", "tempo": 120,
     "instruments": ["Voice Oohs"], "chords": ["Dm", "A", "Gm", "F"], "n_voices": 4},
    {"key": "G major", "key_mode": "major", "time_signature": "4/4", "tempo": 120,
     "instruments": ["Voice Oohs"], "chords": ["G", "D", "C", "Em"], "n_voices": 4},
)
TEXT_SAMPLES = 32  # pieces per caption and mode in stage 4
ADHERENCE_COLUMNS = ("CTS", "CK", "CKD", "CI", "CM_top3", "TB", "TBT")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of `amadeus demo`."""
    parser.add_argument("--out", default="outputs/demo", help="where the checkpoint and samples go")
    parser.add_argument("--config", default="configs/tiny.yaml", help="pretraining config")
    parser.add_argument("--text-config", default="configs/tiny-text.yaml", help="text fine-tuning config")
    parser.add_argument("--max-steps", type=int, default=None, help="override trainer.max_steps (pretraining)")
    parser.add_argument("--text-steps", type=int, default=None, help="override trainer.max_steps (fine-tuning)")
    parser.add_argument("--samples", type=int, default=4, help="unconditional samples to write")
    parser.add_argument("--no-text", action="store_true", help="skip the text fine-tuning stage")
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


def _voices(score) -> int:
    """Most notes sounding at one onset (polyphony), over all tracks."""
    import numpy as np

    onsets = np.concatenate([t.notes.numpy()["time"] for t in score.tracks if len(t.notes)] or [np.zeros(0)])
    return int(np.unique(onsets, return_counts=True)[1].max()) if onsets.size else 0


def _corpus(workers: int | None):
    print("== 1/4 embedded corpus (Bach chorales from music21)")
    from amadeus.corpus import corpus_statistics, default_bach_dir, ensure_bach_shards

    shards = ensure_bach_shards(workers=workers)
    stats = corpus_statistics(default_bach_dir() / "midi")
    print(f"corpus: {stats.summary()}\nshards: {shards}")
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


def _sample(ckpt: Path, out: Path, num: int) -> list[Path]:
    print("== 3/4 sampling")
    from amadeus.api import Amadeus

    model = Amadeus.load(ckpt)
    scores = model.generate(num=num, max_notes=DEMO_MAX_NOTES, seed=0)  # the sampler's defaults
    written = _write_samples(scores, out, "sample")
    for path, score in zip(written, scores):
        print(f"  {path}  ({score.note_num()} notes, up to {_voices(score)} voices at once)")
    return written


def _text_demo(ckpt: Path, out: Path, num: int = TEXT_SAMPLES, guidance: float = TEXT_GUIDANCE) -> dict[str, Any]:
    """Generate from two contrasting captions, with and without the text; print adherence."""
    from amadeus.api import Amadeus
    from amadeus.evaluate import caption_contrast

    rows = caption_contrast(Amadeus.load(ckpt), TARGETS, num=num, max_notes=DEMO_MAX_NOTES, steps=None,
                            guidance=guidance)
    for row in rows.values():
        if row["mode"] == "text":
            _write_samples(row["scores"][:2], out, f"text{row['target']}")
    print(f"text adherence, % of {num} samples per row (guidance {guidance}):")
    print("target / mode".ljust(28) + "".join(c.rjust(9) for c in ADHERENCE_COLUMNS))
    for name, row in rows.items():
        r = row["adherence"]
        print(name.ljust(28) + "".join(f"{r.get(c, float('nan')):9.1f}" for c in ADHERENCE_COLUMNS))
    return {name: row["adherence"] for name, row in rows.items()}


def run(args: argparse.Namespace) -> int:
    """The four stages; 2 when a config file is missing."""
    for cfg in [args.config] + ([] if args.no_text else [args.text_config]):
        if not Path(cfg).is_file():
            return fail("demo", f"config {cfg} not found (run from the repository root)", prefix="")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    stats = _corpus(args.workers)
    ckpt, metrics = _pretrain(args, out)
    written = _sample(ckpt, out, args.samples)
    summary: dict[str, Any] = {"corpus": stats.summary(), "val_loss": metrics.get("val/loss"),
                               "val_diffusion": metrics.get("val/diffusion"), "samples": [str(p) for p in written]}
    if not args.no_text:
        print("== 4/4 text fine-tuning on the auto-captions, then text-to-MIDI")
        extra = [f"--model.init_from={ckpt}"] + ([f"--trainer.max_steps={args.text_steps}"] if args.text_steps else [])
        last, _ = _fit(args.text_config, out / "text", extra)
        text_ckpt = out / "model-text.ckpt"
        shutil.copyfile(last, text_ckpt)
        summary["text"] = _text_demo(text_ckpt, out)
    (out / "demo.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"done in {time.perf_counter() - t0:.0f} s; everything is in {out}/")
    return 0
