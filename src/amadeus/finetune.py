"""Fine-tuning a pretrained model on a user's own MIDI in one call (`amadeus finetune SRC --from CKPT --out DIR`).

    result = finetune("my_midi/", "outputs/demo/model.ckpt", "outputs/my-style", max_steps=60)
    print(*result.lines(), sep="\\n")

What it does, with the package's own parts:
1. `amadeus.preprocess` tokenizes SRC (folder, glob, archive or list file; bad files skipped and listed)
   with the checkpoint's tokenizer. With at least HOLD_OUT_MIN_PIECES pieces, a share of them (HOLD_OUT_SHARE,
   chosen by a hash of the file name, so the same files every time) is held out of training as the
   `test` split: the report is measured on them. With fewer, every piece trains and the report says that
   it is measured on training pieces.
2. The checkpoint's network is rebuilt with the recipe (`Recipe`: learning rate, warm-up, weight
   averaging, transposition, window; its defaults were chosen by measurement, docs/finetune.md) and trained by a
   plain Lightning Trainer (CPU, or the GPU when there is one) for `max_steps` steps or `minutes`
   minutes of training, with a progress bar. A checkpoint is saved every CHECKPOINT_EVERY steps, at the end,
   on Ctrl-C and on SIGTERM, so running the same call again continues where it stopped.
3. The report (DIR/report.json): the base model and the fine-tuned one each generate `eval_pieces` pieces,
   whose descriptors are compared with the user's reference pieces (`amadeus.descriptors.compare`: mean
   overlapped area, as `amadeus evaluate` reports it), and the exact NLL per note of the reference pieces
   (`NoteDecoder.exact_nll`, the chain rule in column order). The first `samples` pieces of the fine-tuned
   model are written as DIR/samples/sample_<i>.mid.

Nothing is half-written in DIR: the work happens in a folder beside it (`.<DIR name>.partial`) that is
moved into place at the end. An interrupted run leaves that folder, and the same call continues from its
last checkpoint; a finished DIR given a larger budget continues from DIR/train/checkpoints/last.ckpt
(DIR is replaced only when the longer run has finished). Every bad input raises `FinetuneError` with one
line naming the problem.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from amadeus.finetune_training import (
    FinetuneError,
    FinetuneInterrupted,
    Recipe,
    build_module,
    save_model,
    steps_for_minutes,
    train,
)

HOLD_OUT_MIN_PIECES = 10  # hold out pieces for the report only when there are at least this many
HOLD_OUT_SHARE = 0.2  # the share held out (rounded, at least 2, at most HOLD_OUT_MAX)
HOLD_OUT_MAX = 64
DEFAULT_STEPS = 300  # the budget when neither max_steps nor minutes is given
EVAL_PIECES = 8  # pieces each model generates for the report's descriptor OA
EVAL_NOTES = 256  # rows per generated piece (the reference pieces are cut to as many)
NLL_WINDOWS = 64  # most windows of the reference pieces the NLL is measured on
SAMPLES = 4
SETTINGS, REPORT, MODEL, BEFORE = "train/settings.json", "report.json", "model.ckpt", "train/before.json"
CHECKPOINTS = "train/checkpoints"


@dataclass
class FinetuneResult:
    """What a fine-tune wrote: DIR, its report (report.json) and whether it trained in this call."""

    out: Path
    report: dict[str, Any]
    trained: bool = True

    def lines(self) -> tuple[str, str]:
        """The two lines a user reads: what was trained and written, and whether it got closer to their music."""
        r, n = self.report, self.report["pieces"]
        minutes, seconds = divmod(int(round(r["seconds"]["total"])), 60)
        first = (f"fine-tuned {r['steps']} steps on {n['train']} pieces ({n['skipped']} files skipped, "
                 f"{n['held_out']} pieces held out) in {minutes}:{seconds:02d} -> {self.out / MODEL}, "
                 f"{len(r['samples'])} samples in {self.out / 'samples'}")
        if not self.trained:
            first = f"already fine-tuned {r['steps']} steps (a larger budget continues it): {self.out / MODEL}"
        b, a = r["before"], r["after"]
        where = (f"your {n['held_out']} held-out pieces" if n["held_out"]
                 else f"your {n['train']} training pieces (fewer than {HOLD_OUT_MIN_PIECES}: none held out)")
        second = (f"on {where}: descriptor OA {_fmt(b['mean_oa'], 3)} -> {_fmt(a['mean_oa'], 3)} (higher = closer "
                  f"to your music), NLL {_fmt(b['nll_per_note'], 3)} -> {_fmt(a['nll_per_note'], 3)} nats/note "
                  "(lower = better)")
        return first, second


def _fmt(x: float | None, digits: int) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


# ----------------------------------------------------------------------------------------------
# inputs: the budget, the checkpoint, SRC


def check_budget(max_steps: int | None, minutes: float | None) -> None:
    """FinetuneError when the budget cannot make one training step (max_steps < 1, minutes <= 0)."""
    if max_steps is not None and minutes is not None:
        raise FinetuneError("give a step budget (max_steps) or a time budget (minutes), not both")
    if max_steps is not None and max_steps < 1:
        raise FinetuneError(f"a budget of {max_steps} steps makes no training step; the minimum is 1")
    if minutes is not None and not minutes > 0:
        raise FinetuneError(f"a budget of {minutes} minutes makes no training step; give more than 0 "
                            "(the minimum is one step's time, measured before training)")


def base_arguments(ckpt: str | os.PathLike) -> dict[str, Any]:
    """The constructor arguments of the checkpoint's network (network, tokenizer, decoder, text encoder);
    FinetuneError when it is unreadable or its tokenizer is not this code's (`amadeus.checkpoint` checks)."""
    from amadeus.checkpoint import CheckpointError, module_arguments, read_checkpoint

    try:
        _, hparams = read_checkpoint(ckpt)
        return module_arguments(ckpt, hparams)
    except CheckpointError as e:
        raise FinetuneError(str(e)) from None


def list_sources(src: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str]:
    """The MIDI files of SRC by name (as `amadeus preprocess` lists them); FinetuneError when there are none."""
    from amadeus.preprocess import list_inputs
    from amadeus.tokenizer import MIDI_SUFFIXES

    try:
        names = [e.name for e in list_inputs(src)]
    except FileNotFoundError as e:
        raise FinetuneError(str(e)) from None
    if names:
        return names
    path = Path(str(src)).expanduser()
    others = sum(1 for p in path.rglob("*") if p.is_file()) if path.is_dir() else 0
    if others:
        raise FinetuneError(f"{src}: no readable MIDI: its {others} files have none of the suffixes "
                            f"{', '.join(MIDI_SUFFIXES)}")
    raise FinetuneError(f"{src}: empty: no MIDI files ({', '.join(MIDI_SUFFIXES)}) found")


def held_out_names(names: Sequence[str]) -> list[str]:
    """The files held out for the report: none below HOLD_OUT_MIN_PIECES files, else a HOLD_OUT_SHARE of
    them (at least 2, at most HOLD_OUT_MAX), the first by a hash of their names (stable across runs)."""
    if len(names) < HOLD_OUT_MIN_PIECES:
        return []
    k = min(HOLD_OUT_MAX, max(2, round(HOLD_OUT_SHARE * len(names))))
    return sorted(sorted(names, key=lambda n: hashlib.sha1(n.encode()).hexdigest())[:k])


def prepare_data(src: Any, data: Path, tokenizer: Any, *, captions: str | os.PathLike | None, workers: int | None,
                 progress: bool) -> dict[str, Any]:
    """Tokenize SRC into DATA (train, and `test` = the held-out pieces); returns the report's "pieces" counts
    with the held-out and skipped files. FinetuneError when no file is usable."""
    from amadeus.preprocess import preprocess

    names = list_sources(src)
    held = held_out_names(names)

    def run(splits: dict[str, str] | None):
        try:
            return preprocess(src, data, captions=captions, workers=workers, tokenizer=tokenizer, val_fraction=0.0,
                              test_fraction=0.0, progress=progress, splits=splits or None)
        except (FileNotFoundError, ValueError) as e:
            raise FinetuneError(str(e)) from None

    report = run({n: "test" for n in held})
    if report.pieces == 0:
        first = report.skipped[0] if report.skipped else {"path": str(src), "reason": "no notes"}
        raise FinetuneError(f"{src}: every one of its {report.files} MIDI files is damaged or empty "
                            f"(e.g. {first['path']}: {first['reason']})")
    held_pieces = report.splits.get("test", 0)
    if held and (report.pieces < HOLD_OUT_MIN_PIECES or not held_pieces or not report.splits.get("train", 0)):
        held, report = [], run(None)  # damaged files left too few pieces: every piece trains
    sources = _split_sources(data, "test") if held else []
    return {"files": report.files, "pieces": report.pieces, "train": report.splits.get("train", 0),
            "held_out": len(sources), "skipped": len(report.skipped), "held_out_sources": sources,
            "skipped_files": report.skipped}


def _split_sources(data: Path, split: str) -> list[str]:
    from amadeus.shards import load_manifest, read_shard

    return sorted(s for sh in load_manifest(data)["shards"]
                  for s in read_shard(str(data / sh["file"]), ["source"], split=split).column("source").to_pylist())


# ----------------------------------------------------------------------------------------------
# the report's measurements


def reference_tokens(data: Path, split: str, tokenizer_hash: str) -> list[np.ndarray]:
    """Token matrices of the pieces the report compares with (`split` of the shards in DATA)."""
    from amadeus.datamodule import MusicDataModule
    from amadeus.evaluate import read_tokens

    return read_tokens(MusicDataModule(data_dir=str(data), num_workers=0, tokenizer_hash=tokenizer_hash), (split,))


def measure(module: Any, reference: Sequence[np.ndarray], *, pieces: int, notes: int, window: int,
            seed: int) -> tuple[dict[str, Any], list[np.ndarray]]:
    """How close a model is to the reference pieces: mean descriptor OA of `pieces` generated pieces
    (`notes` rows each; the reference cut to as many) and the exact NLL per note of the reference's
    windows; returns ({"mean_oa", "oa", "nll_per_note", "windows"}, the generated token matrices)."""
    from amadeus.descriptors import compare, describe_set
    from amadeus.sampling import generate

    tokenizer = module.tokenizer
    module.eval()
    tokens = generate(module, pieces, max_notes=notes, seed=seed).tokens
    described = [describe_set(tokenizer.decode(t[: notes + 1]) for t in group) for group in (tokens, reference)]
    quality = compare(*described)
    nll, windows = exact_nll_per_note(module, reference, window)
    return {"mean_oa": _finite(quality["mean_oa"]), "oa": {k: _finite(v) for k, v in quality["oa"].items()},
            "nll_per_note": nll, "windows": windows}, tokens


def exact_nll_per_note(module: Any, pieces: Sequence[np.ndarray], window: int,
                       limit: int = NLL_WINDOWS, batch_size: int = 16) -> tuple[float | None, int]:
    """(nats per note of the pieces' consecutive `window`-row windows, the first `limit` of them; their number):
    the decoder's exact NLL, the chain rule in column order, as training's validation reports it."""
    import torch

    from amadeus.windows import cut_window, eval_starts

    cut = [cut_window(t, int(s), window) for t in pieces for s in eval_starts(len(t), window)][:limit]
    if not cut:
        return None, 0
    device = next(module.parameters()).device
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(cut), batch_size):
            notes = torch.from_numpy(np.stack([c[0] for c in cut[i:i + batch_size]])).to(device)  # [B, T+1, K]
            mask = torch.from_numpy(np.stack([c[1] for c in cut[i:i + batch_size]])).to(device)  # [B, T+1]
            valid = mask[:, 1:] & mask[:, :-1]  # [B, T]: the rows training scores
            total += float(module.head.exact_nll(module.backbone, notes, valid).sum())
            count += int(valid.sum())
    return (total / count if count else None), len(cut)


def _finite(x: float) -> float | None:
    return float(x) if x is not None and math.isfinite(x) else None


# ----------------------------------------------------------------------------------------------
# the work folder


def work_folder(out: Path) -> Path:
    """Where a fine-tune into OUT runs until it is moved into place: `.<OUT name>.partial` beside OUT."""
    return out.parent / f".{out.name}.partial"


def run_settings(src: Any, ckpt: str | os.PathLike, captions: Any, recipe: Recipe, seed: int,
                 eval_pieces: int, eval_notes: int) -> dict[str, Any]:
    """What must match for a run to continue an earlier one (the budget may differ)."""
    def where(p: Any) -> Any:
        if isinstance(p, (list, tuple)):
            return [where(x) for x in p]
        return None if p is None else str(Path(str(p)).expanduser().resolve()) if "://" not in str(p) else str(p)

    size = Path(ckpt).stat().st_size if Path(ckpt).is_file() else None
    return {"src": where(src), "checkpoint": where(ckpt), "checkpoint_bytes": size, "captions": where(captions),
            "recipe": recipe.as_dict(), "seed": seed, "eval": {"pieces": eval_pieces, "notes": eval_notes}}


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, allow_nan=False) + "\n")
    os.replace(tmp, path)


def open_work(out: Path, settings: dict[str, Any], budget_left: Callable[[dict[str, Any]], bool],
              log: Callable[[str], None]) -> tuple[Path | None, bool, dict | None]:
    """(work folder, whether this call created it, the report of OUT when OUT already holds this fine-tune);
    no work folder when OUT's run has no budget left. FinetuneError when OUT holds something else."""
    work = work_folder(out)
    finished = None
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        if _read_json(out / SETTINGS) != settings or not (out / REPORT).is_file():
            raise FinetuneError(f"{out} exists and is not a fine-tune of this SRC, checkpoint and recipe "
                                f"({SETTINGS} differs or is missing): choose another output folder or remove it")
        finished = _read_json(out / REPORT)
        if not budget_left(finished):
            return None, False, finished
    if work.exists() and _read_json(work / SETTINGS) == settings:
        log(f"continuing the interrupted run in {work}")
        return work, False, finished
    if work.exists():
        log(f"removing {work}: an unfinished run with other settings")
        shutil.rmtree(work)
    if finished is not None:
        shutil.copytree(out, work, ignore=shutil.ignore_patterns(REPORT, MODEL, "samples"))
        return work, True, finished
    work.mkdir(parents=True)
    _write_json(work / SETTINGS, settings)
    return work, True, None


def move_into_place(work: Path, out: Path) -> None:
    """Replace OUT by the finished work folder (OUT's old content is removed only after the move)."""
    old = out.parent / f".{out.name}.old"
    if old.exists():
        shutil.rmtree(old)
    if out.exists():
        out.rename(old)
    work.rename(out)
    if old.exists():
        shutil.rmtree(old, ignore_errors=True)


# ----------------------------------------------------------------------------------------------
# the run


@dataclass
class _Run:
    """One fine-tune's settings and state, passed between its stages."""

    src: Any
    ckpt: Path
    out: Path
    recipe: Recipe
    max_steps: int | None
    minutes: float | None
    captions: Any
    workers: int | None
    device: str
    seed: int
    eval_pieces: int
    eval_notes: int
    samples: int
    progress: bool
    log: Callable[[str], None]
    work: Path = Path()
    report: dict[str, Any] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)


def finetune(src: str | os.PathLike | Sequence[str | os.PathLike], ckpt: str | os.PathLike, out: str | os.PathLike, *,
             max_steps: int | None = None, minutes: float | None = None, captions: str | os.PathLike | None = None,
             workers: int | None = None, recipe: Recipe | None = None, device: str = "auto", seed: int = 0,
             eval_pieces: int = EVAL_PIECES, eval_notes: int = EVAL_NOTES, samples: int = SAMPLES,
             progress: bool = True, log: Callable[[str], None] = print) -> FinetuneResult:
    """Fine-tune CKPT on the MIDI files of SRC into OUT (model.ckpt, samples/, report.json); see the module
    docstring. Budget: `max_steps` optimizer steps or `minutes` of training (default DEFAULT_STEPS steps).
    `device` "auto" = the GPU when there is one. Raises FinetuneError (one line) on bad input,
    FinetuneInterrupted when stopped by Ctrl-C / SIGTERM (the same call continues)."""
    t0 = time.perf_counter()
    check_budget(max_steps, minutes)
    if eval_pieces < 1 or eval_notes < 8 or not 0 <= samples <= eval_pieces:
        raise FinetuneError(f"need eval_pieces >= 1, eval_notes >= 8 and 0 <= samples <= eval_pieces, got "
                            f"{eval_pieces}, {eval_notes}, {samples}")
    run = _Run(src, Path(ckpt), Path(out), recipe or Recipe(), max_steps if minutes is None else None, minutes,
               captions, workers, _device(device), seed, eval_pieces, eval_notes, samples, progress, log)
    if run.max_steps is None and minutes is None:
        run.max_steps = DEFAULT_STEPS
    args = base_arguments(run.ckpt)
    list_sources(src)  # an empty or MIDI-less SRC fails here, before anything is written
    settings = run_settings(src, ckpt, captions, run.recipe, seed, eval_pieces, eval_notes)
    work, created, finished = open_work(run.out, settings, lambda report: _budget_left(run, report), log)
    if work is None:
        return FinetuneResult(run.out, finished or {}, trained=False)
    run.work = work
    try:
        _stages(run, args)
    except FinetuneInterrupted:
        raise
    except BaseException:
        if created and not list((run.work / CHECKPOINTS).glob("last*.ckpt")):
            shutil.rmtree(run.work, ignore_errors=True)  # nothing worth continuing: leave no trace
        raise
    run.report["seconds"] = {**run.seconds, "total": round(time.perf_counter() - t0, 1)}
    _write_json(run.work / REPORT, run.report)
    move_into_place(run.work, run.out)
    return FinetuneResult(run.out, run.report)


def _device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise FinetuneError(f"device {device!r}: no GPU is available here")
    if not (device == "cpu" or device.startswith("cuda")):
        raise FinetuneError(f"device {device!r}: use auto, cpu or cuda[:N]")
    return device


def _budget_left(run: _Run, finished: dict[str, Any]) -> bool:
    """Whether a finished OUT's run has budget left: more steps, or more minutes of training, than it made."""
    if run.minutes is not None:
        return run.minutes * 60 > finished.get("training_seconds", 0.0) + 1.0
    return bool(run.max_steps and run.max_steps > finished.get("steps", 0))


def _timed(run: _Run, stage: str, fn: Callable[[], Any]) -> Any:
    t = time.perf_counter()
    value = fn()
    run.seconds[stage] = round(run.seconds.get(stage, 0.0) + time.perf_counter() - t, 1)
    return value


def _stages(run: _Run, args: dict[str, Any]) -> None:
    """Preprocess, measure the base model, train, measure the fine-tuned one, write samples and the report."""
    from amadeus.tokenizer import NoteTokenizer, TokenizerConfig

    tokenizer = NoteTokenizer(TokenizerConfig.from_dict(args["tokenizer"]))
    data = run.work / "train" / "data"
    run.log(f"preprocessing {run.src} ...")
    pieces = _timed(run, "preprocess", lambda: prepare_data(run.src, data, tokenizer, captions=run.captions,
                                                            workers=run.workers, progress=run.progress))
    module = build_module(run.ckpt, run.recipe)
    budget = run.max_steps
    if run.minutes is not None:  # before the measurements, so that a budget too small fails fast
        budget = steps_for_minutes(module, data, run.recipe, run.device, run.minutes)
    split = "test" if pieces["held_out"] else "train"
    reference = reference_tokens(data, split, tokenizer.config_hash)
    before = _read_json(run.work / BEFORE)
    if before is None or before.get("reference") != pieces["held_out_sources"]:
        run.log(f"measuring the base model against {len(reference)} {'held-out' if pieces['held_out'] else 'training'}"
                " pieces ...")
        before = _timed(run, "before", lambda: _measure_checkpoint(run, run.ckpt, reference)[0])
        before["reference"] = pieces["held_out_sources"]
        _write_json(run.work / BEFORE, before)
    trained = _timed(run, "train", lambda: train(module, data, run.work / CHECKPOINTS, recipe=run.recipe,
                                                 max_steps=budget, minutes=run.minutes, device=run.device,
                                                 seed=run.seed, progress=run.progress, log=run.log))
    save_model(module, run.work / MODEL, trained.steps)
    run.log("measuring the fine-tuned model ...")
    after, tokens = _timed(run, "after", lambda: _measure_checkpoint(run, run.work / MODEL, reference))
    written = _write_samples(tokens[: run.samples], tokenizer, run.work / "samples")
    run.report = {
        "src": str(run.src), "checkpoint": str(run.ckpt), "out": str(run.out), "steps": trained.steps,
        "resumed_from": trained.start, "budget": {"max_steps": run.max_steps, "minutes": run.minutes},
        "training_seconds": round(trained.seconds if trained.seconds is not None else run.seconds["train"], 1),
        "recipe": run.recipe.as_dict(), "device": run.device,
        "pieces": {k: v for k, v in pieces.items() if k not in ("held_out_sources", "skipped_files")},
        "reference": "held-out pieces" if pieces["held_out"] else
                     f"training pieces (fewer than {HOLD_OUT_MIN_PIECES} pieces: none held out)",
        "held_out": pieces["held_out_sources"], "skipped": pieces["skipped_files"],
        "before": {k: v for k, v in before.items() if k != "reference"}, "after": after,
        "eval": {"pieces": run.eval_pieces, "notes": run.eval_notes, "window": run.recipe.max_notes, "seed": run.seed,
                 "reference_pieces": len(reference)},
        "samples": [p.relative_to(run.work).as_posix() for p in written],
    }


def _measure_checkpoint(run: _Run, path: Path, reference: list[np.ndarray]) -> tuple[dict[str, Any], list[np.ndarray]]:
    """`measure` of a checkpoint, on one CPU thread: sampling a small model's per-note tensors was 31x slower
    on two threads than on one here (benchmarks/results/finetune-threads.json), as `amadeus evaluate` found."""
    import torch

    from amadeus.api import load_module

    module = load_module(path, run.device)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return measure(module, reference, pieces=run.eval_pieces, notes=run.eval_notes, window=run.recipe.max_notes,
                       seed=run.seed)
    finally:
        torch.set_num_threads(threads)


def _write_samples(tokens: Sequence[np.ndarray], tokenizer: Any, folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for i, t in enumerate(tokens):
        path = folder / f"sample_{i}.mid"
        tokenizer.decode(t).dump_midi(str(path))
        written.append(path)
    return written
