"""Fine-tuning recipes for a small corpus, compared: how close each brings a pretrained model to held-out songs.

    python benchmarks/finetune.py --ckpt outputs/tiny/checkpoints/last.ckpt [--quick] [--recipes a,b]

The corpus is benchmarks/songs.py's multi-track General MIDI songs with drums (styles rock, disco, funk;
`--songs` of them from seed 0): `amadeus.finetune.finetune` holds out a fifth of them and fine-tunes the
checkpoint on the rest for `--steps` steps with each recipe and seed (one torch thread), then reports, for the base
model and the fine-tuned one, the mean descriptor OA of `--eval-pieces` generated pieces against the held-out
songs (higher = closer) and the exact NLL per note of the held-out songs (lower = better). One row per recipe:
{"recipe", "seed", "settings", "steps", "before_oa", "after_oa", "before_nll", "after_nll", "train_s",
"total_s"}, and a summary per recipe (means over the seeds, the after-OA range).
Writes benchmarks/results/finetune.json (finetune-<N>steps.json for --steps N other than 60; finetune-quick.json
with --quick: 10 songs, 10 steps, 2 recipes, one seed).
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

RECIPES = {  # name -> Recipe fields (the others: amadeus.finetune_training.Recipe's defaults)
    "lr1e-3": {"lr": 1e-3, "warmup_steps": 10, "ema_decay": 0.0, "transpose": (-5, 6)},
    "lr3e-4": {"lr": 3e-4, "warmup_steps": 10, "ema_decay": 0.0, "transpose": (-5, 6)},
    "lr3e-3": {"lr": 3e-3, "warmup_steps": 10, "ema_decay": 0.0, "transpose": (-5, 6)},
    "lr1e-3-warmup30": {"lr": 1e-3, "warmup_steps": 30, "ema_decay": 0.0, "transpose": (-5, 6)},
    "lr2e-3-warmup30": {"lr": 2e-3, "warmup_steps": 30, "ema_decay": 0.0, "transpose": (-5, 6)},
    "lr3e-3-warmup30": {"lr": 3e-3, "warmup_steps": 30, "ema_decay": 0.0, "transpose": (-5, 6)},
    "lr1e-3-ema0.95": {"lr": 1e-3, "warmup_steps": 10, "ema_decay": 0.95, "transpose": (-5, 6)},
    "lr1e-3-no-transpose": {"lr": 1e-3, "warmup_steps": 10, "ema_decay": 0.0, "transpose": None},
}


def run_recipe(name: str, songs: Path, ckpt: Path, work: Path, steps: int, eval_pieces: int, seed: int) -> dict:
    """Fine-tune with one recipe and seed (training and the report's pieces); its row."""
    from dataclasses import replace

    from amadeus.finetune import finetune
    from amadeus.finetune_training import Recipe

    recipe = replace(Recipe(), **RECIPES[name])
    t0 = time.perf_counter()
    result = finetune(songs, ckpt, work / name, max_steps=steps, recipe=recipe, device="cpu", seed=seed,
                      eval_pieces=eval_pieces, samples=0, progress=False, log=lambda m: None)
    r = result.report
    return {"recipe": name, "seed": seed, "settings": recipe.as_dict(), "steps": r["steps"], "songs": r["pieces"],
            "before_oa": r["before"]["mean_oa"], "after_oa": r["after"]["mean_oa"],
            "before_nll": r["before"]["nll_per_note"], "after_nll": r["after"]["nll_per_note"],
            "train_s": r["seconds"]["train"], "total_s": round(time.perf_counter() - t0, 1),
            "eval_pieces": eval_pieces}


def summary(rows: list[dict]) -> list[dict]:
    """Per recipe: the mean over seeds of each figure, and the after-OA range."""
    out = []
    for name in dict.fromkeys(r["recipe"] for r in rows):
        mine = [r for r in rows if r["recipe"] == name]
        mean = {k: round(sum(r[k] for r in mine) / len(mine), 4)
                for k in ("before_oa", "after_oa", "before_nll", "after_nll", "train_s")}
        out.append({"recipe": name, "seeds": len(mine), "steps": mine[0]["steps"], **mean,
                    "after_oa_min": min(r["after_oa"] for r in mine), "after_oa_max": max(r["after_oa"] for r in mine)})
    return out


def table(rows: list[dict]) -> str:
    lines = [f"{'recipe':<22}{'seeds':>6}{'steps':>6}{'OA before':>11}{'OA after':>10}{'(min-max)':>14}"
             f"{'NLL before':>12}{'NLL after':>11}{'train s':>9}"]
    for r in rows:
        lines.append(f"{r['recipe']:<22}{r.get('seeds', 1):>6}{r['steps']:>6}{r['before_oa']:>11.3f}"
                     f"{r['after_oa']:>10.3f}"
                     f"{r.get('after_oa_min', r['after_oa']):>8.3f}-{r.get('after_oa_max', r['after_oa']):.3f}"
                     f"{r['before_nll']:>12.3f}{r['after_nll']:>11.3f}{r['train_s']:>9.0f}")
    return "\n".join(lines)


def thread_timings(ckpt: Path, songs: Path, work: Path) -> list[dict]:
    """Seconds of one training step, of sampling 4 pieces of 256 rows and of the held-out NLL, at 1 and 2
    torch threads (one row each): what `amadeus finetune --threads` trades."""
    import torch

    from amadeus.api import load_module
    from amadeus.finetune import exact_nll_per_note, prepare_data, reference_tokens
    from amadeus.finetune_training import Recipe, build_module, step_seconds
    from amadeus.sampling import generate

    model = load_module(ckpt)
    data = work / "data"
    prepare_data(songs, data, model.tokenizer, captions=None, workers=0, progress=False)
    reference = reference_tokens(data, "test", model.tokenizer.config_hash)
    rows = []
    for threads in (1, 2):
        torch.set_num_threads(threads)
        t = time.perf_counter()
        generate(model, 4, max_notes=256, seed=0)
        sample_s = time.perf_counter() - t
        t = time.perf_counter()
        exact_nll_per_note(model, reference, 128)
        nll_s = time.perf_counter() - t
        step_s = step_seconds(build_module(ckpt, Recipe()), data, Recipe(), "cpu")
        rows.append({"threads": threads, "step_s": round(step_s, 2), "sample_4x256_s": round(sample_s, 1),
                     "nll_s": round(nll_s, 1)})
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt", required=True, help="the pretrained model (e.g. configs/tiny.yaml's last.ckpt)")
    parser.add_argument("--quick", action="store_true", help="10 songs, 10 steps, 2 recipes, 4 pieces")
    parser.add_argument("--recipes", default=None, help=f"comma-separated, of {', '.join(RECIPES)}")
    parser.add_argument("--songs", type=int, default=20)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--eval-pieces", type=int, default=8)
    parser.add_argument("--seeds", default="0,1,2", help="seeds of training and of the report's pieces")
    parser.add_argument("--threads", action="store_true",
                        help="only time a step, sampling and the NLL at 1 and 2 torch threads (finetune-threads.json)")
    args = parser.parse_args()
    import torch

    from songs import TRAIN_STYLES, write_songs

    torch.set_num_threads(1)
    names = args.recipes.split(",") if args.recipes else list(RECIPES)[: 2 if args.quick else None]
    songs_n, steps, pieces = (10, 10, 4) if args.quick else (args.songs, args.steps, args.eval_pieces)
    seeds = [0] if args.quick else [int(x) for x in args.seeds.split(",")]
    rows = []
    with tempfile.TemporaryDirectory(prefix="amadeus-finetune-bench-") as tmp:
        songs = Path(tmp) / "songs"
        write_songs(songs, songs_n, seed=0, styles=TRAIN_STYLES)
        if args.threads:
            import os

            rows = thread_timings(Path(args.ckpt), songs, Path(tmp))
            out = HERE / "results" / "finetune-threads.json"
            out.write_text(json.dumps({"command": " ".join(sys.argv), "load_average": os.getloadavg(),
                                       "rows": rows}, indent=1) + "\n")
            print(f"-> {out}")
            return
        for name in names:
            for seed in seeds:
                rows.append(run_recipe(name, songs, Path(args.ckpt), Path(tmp), steps, pieces, seed))
                print(f"seed {seed}: " + table(rows[-1:]).splitlines()[-1], flush=True)
                shutil.rmtree(Path(tmp) / name, ignore_errors=True)
    name = "finetune-quick" if args.quick else "finetune" if steps == 60 else f"finetune-{steps}steps"
    out = HERE / "results" / f"{name}.json"
    out.write_text(json.dumps({"command": " ".join(sys.argv), "ckpt": args.ckpt, "threads": 1,
                               "summary": summary(rows), "rows": rows}, indent=1) + "\n")
    print(table(summary(rows)))
    print(f"-> {out}")


if __name__ == "__main__":
    main()
