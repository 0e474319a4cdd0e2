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
import sys
import time
from pathlib import Path
from typing import Any

# Two contrasting targets that the Bach corpus can teach (it has 4/4 and 3/4 pieces in many keys,
# but nearly all at one tempo, so tempo is stated and not contrasted). Captions are written from
# them by the same templates as the training captions.
TARGETS = (
    {"key": "D minor", "key_mode": "minor", "time_signature": "3/4", "tempo": 120,
     "instruments": ["Voice Oohs"], "chords": ["Dm", "A", "Gm", "F"], "n_voices": 4},
    {"key": "G major", "key_mode": "major", "time_signature": "4/4", "tempo": 120,
     "instruments": ["Voice Oohs"], "chords": ["G", "D", "C", "Em"], "n_voices": 4},
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
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
    from lightning.pytorch.cli import LightningCLI

    from amadeus.datamodule import MusicDataModule
    from amadeus.module import AmadeusModule

    args = ["fit", "-c", config, f"--trainer.default_root_dir={out}",
            f"--trainer.logger.init_args.save_dir={out}"] + extra
    argv, sys.argv = sys.argv, sys.argv[:1]  # LightningCLI warns when it sees both args and argv
    try:
        cli = LightningCLI(AmadeusModule, MusicDataModule, args=args, save_config_kwargs={"overwrite": True})
    finally:
        sys.argv = argv
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


def run(args: argparse.Namespace) -> int:
    from amadeus.corpus import corpus_statistics, default_bach_dir, ensure_bach_shards

    for cfg in [args.config] + ([] if args.no_text else [args.text_config]):
        if not Path(cfg).is_file():
            print(f"amadeus demo: config {cfg} not found (run from the repository root)", file=sys.stderr)
            return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()

    print("== 1/4 embedded corpus (Bach chorales from music21)")
    shards = ensure_bach_shards(workers=args.workers)
    stats = corpus_statistics(default_bach_dir() / "midi")
    print(f"corpus: {stats.summary()}\nshards: {shards}")

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

    print("== 3/4 sampling")
    from amadeus.hub import Amadeus

    model = Amadeus.load(ckpt)
    scores = model.generate(num=args.samples, max_notes=256, steps=4, seed=0)
    written = _write_samples(scores, out, "sample")
    for path, score in zip(written, scores):
        print(f"  {path}  ({score.note_num()} notes, up to {_voices(score)} voices at once)")
    summary: dict[str, Any] = {"corpus": stats.summary(), "val_loss": val_loss, "val_diffusion": val_diff, "samples": [str(p) for p in written]}

    if not args.no_text:
        print("== 4/4 text fine-tuning on the auto-captions, then text-to-MIDI")
        extra = [f"--model.init_from={ckpt}"] + ([f"--trainer.max_steps={args.text_steps}"] if args.text_steps else [])
        last, metrics = _fit(args.text_config, out / "text", extra)
        text_ckpt = out / "model-text.ckpt"
        shutil.copyfile(last, text_ckpt)
        summary["text"] = _text_demo(text_ckpt, out)
    (out / "demo.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"done in {time.perf_counter() - t0:.0f} s; everything is in {out}/")
    return 0


def _text_demo(ckpt: Path, out: Path, num: int = 32, guidance: float = 3.0) -> dict[str, Any]:
    """Generate from two contrasting captions, with and without the text; print adherence."""
    from amadeus.captions import make_caption
    from amadeus.hub import Amadeus
    from amadeus.metrics import TextAdherence

    model = Amadeus.load(ckpt)
    rows = {}
    for i, target in enumerate(TARGETS):
        caption = make_caption(target, rng=0)
        print(f"caption {i}: {caption}")
        for mode, guide in (("text", {"text": caption, "guidance": guidance}), ("no text", {})):
            scores = model.generate(num=num, max_notes=256, steps=4, seed=100 + i, **guide)
            metric = TextAdherence()
            metric.update(scores, [target] * len(scores))
            rows[f"{target['key']}, {target['time_signature']} / {mode}"] = {
                k: round(float(v), 1) for k, v in metric.compute().items()}
            if mode == "text":
                _write_samples(scores[:2], out, f"text{i}")
    cols = ["CTS", "CK", "CKD", "CI", "CM_top3", "TB", "TBT"]
    print(f"text adherence, % of {num} samples per row (guidance {guidance}):")
    print("target / mode".ljust(28) + "".join(c.rjust(9) for c in cols))
    for name, r in rows.items():
        print(name.ljust(28) + "".join(f"{r.get(c, float('nan')):9.1f}" for c in cols))
    return rows
