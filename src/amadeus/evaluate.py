"""`amadeus evaluate`: text adherence and unconditional metrics of a checkpoint, as a table and JSON.

    amadeus evaluate --ckpt outputs/demo/model-text.ckpt --split test --num 16 --out eval.json

Text adherence (the MidiCaps / Text2Midi metrics): the first N pieces of the split that have a caption are
the prompts. From each caption the model generates a piece (with classifier-free guidance G) and, as
a baseline in the same run, a piece without text from the same seed (piece i uses seed + i in both).
Every generated piece is scored (amadeus.metrics.TextAdherence: TB TBT CK CKD CTS CI CM_top3) twice:
against the features stored with the prompt's source piece (key, tempo, time signature,
instruments, chords: the shard's features JSON) and against the fields the caption states
(amadeus.captions.parse_caption). A model without a text encoder gets the baseline rows only.

Unconditional metrics: the masked-diffusion ELBO per attribute (amadeus.metrics.DiffusionNLL, nats per
note) on deterministic windows of the split, without text (and with each window's caption when the
model reads text); syntax-error rate, pitch-class entropy, groove consistency and notes/s of the
generated pieces, next to the same structure metrics of the source pieces for reference.

CLAP only with --clap PATH (a local checkpoint); nothing is ever downloaded.
Bad arguments print one line on stderr and exit with code 2.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from amadeus.captions import parse_caption
from amadeus.metrics import (
    ADHERENCE_METRICS,
    DiffusionNLL,
    GrooveConsistency,
    MetricUnavailable,
    NotesPerSecond,
    PitchClassEntropy,
    SyntaxErrorRate,
    TextAdherence,
)

SPLITS = ("train", "validation", "test")
CLAP_NOT_COMPUTED = "CLAP: not computed (needs a local checkpoint, --clap PATH)"
MODES = ("with_text", "without_text")
TARGETS = ("features", "caption")


# ----------------------------------------------------------------------------------------------
# data


def _is_local(path: str) -> bool:
    return "://" not in str(path)


def read_pieces(data: str | Path, split: str, num: int, tokenizer_hash: str | None = None) -> tuple[list[dict], Any]:
    """The first `num` captioned pieces of `split` in shard order, and the MusicDataModule of `data`.

    Each piece: {"id", "caption", "features" (dict), "tokens" (int64 [N, K])}. The shards' tokenizer
    must be the model's (tokenizer_hash); a mismatch or a missing manifest is a clear error.
    """
    from amadeus.datamodule import MusicDataModule
    from amadeus.shards import read_shard

    dm = MusicDataModule(data_dir=str(data), stage="pretrain", num_workers=0, tokenizer_hash=tokenizer_hash)
    K = dm.tokenizer.K
    pieces: list[dict] = []
    for file in dm.files(split, required=False):
        table = read_shard(file, ["id", "tokens", "caption", "features"], split=split, captioned=True)
        for row in table.slice(0, num - len(pieces)).to_pylist():
            try:
                features = json.loads(row["features"] or "{}")
            except json.JSONDecodeError as e:
                raise ValueError(f"{file}: piece {row['id']}: features are not JSON ({e})") from None
            pieces.append({"id": row["id"], "caption": row["caption"], "features": features,
                           "tokens": np.asarray(row["tokens"], dtype=np.int64).reshape(-1, K)})
        if len(pieces) >= num:
            break
    return pieces, dm


# ----------------------------------------------------------------------------------------------
# metrics


def _num(x: Any) -> float | None:
    """A metric value as a JSON number; None for nan / inf (metric not defined)."""
    v = float(x)
    return v if math.isfinite(v) else None


def structure_metrics(tokens: Sequence[np.ndarray], tokenizer) -> dict[str, Any]:
    """Syntax-error rate (% of rows), pitch-class entropy (bits), groove consistency of token matrices."""
    ser, pce, groove = SyntaxErrorRate(tokenizer), PitchClassEntropy(), GrooveConsistency(tokenizer)
    ser.update(list(tokens))
    pce.update(list(tokens))
    groove.update(list(tokens))
    return {"syntax_error_rate": {k: _num(v) for k, v in ser.compute().items()},
            "pitch_class_entropy": _num(pce.compute()), "groove_consistency": _num(groove.compute())}


@torch.no_grad()
def diffusion_nll(module, windows, *, text: bool, batch_size: int = 8, num_samples: int = 4,
                  method: str = "subsets", seed: int = 0) -> dict[str, Any]:
    """Masked-diffusion ELBO per attribute (nats per note) over evaluation windows.

    For each batch the backbone runs once (with the windows' captions as prefix when `text`), the
    head's context once, and `logits_fn(masked)` reruns only the head's denoiser on the real target
    rows with the chosen slots hidden; amadeus.metrics.DiffusionNLL sums the ELBO terms.
    """
    from torch.utils.data import DataLoader

    from amadeus.datamodule import collate_windows

    names = module.tokenizer.attribute_names
    metric = DiffusionNLL(names, num_samples=num_samples, method=method, seed=seed)
    dev = next(module.parameters()).device
    module.eval()
    for batch in DataLoader(windows, batch_size=batch_size, shuffle=False, collate_fn=collate_windows):
        notes, mask = batch["notes"].to(dev), batch["mask"].to(dev)  # [B, T+1, K], [B, T+1]
        inputs, targets = notes[:, :-1], notes[:, 1:]  # [B, T, K]
        valid = mask[:, 1:] & mask[:, :-1]  # [B, T]: the same rows training scores
        prefix, prefix_mask = module.encode_text(list(batch["caption"])) if text else (None, None)
        z = module.backbone(inputs, prefix=prefix, prefix_mask=prefix_mask).z  # [B, T, d]
        C = module.head.context(z, prefix, prefix_mask)[valid]  # [N, K, w]
        tv = targets[valid]  # [N, K]
        metric.update(lambda masked: module.head.logits(C, tv, masked), tv)
    if not len(windows):
        return {}
    out = {k: _num(v) for k, v in metric.compute().items()}
    out.update(windows=len(windows), notes=int(metric.notes), num_samples=num_samples, method=method)
    return out


def _generation_report(result, tokenizer) -> dict[str, Any]:
    speed = NotesPerSecond()
    speed.update(int(result.notes), float(result.seconds))
    return {"notes": int(result.notes), "seconds": round(float(result.seconds), 4),
            "notes_per_s": _num(speed.compute()), "guard_interventions": int(result.guard_interventions),
            **structure_metrics(result.tokens, tokenizer)}


def evaluate(ckpt: str | Path, data: str | Path | None = None, split: str = "test", num: int = 16,
             max_notes: int = 256, steps: int | None = None, guidance: float = 3.0, seed: int = 0,
             clap: str | Path | None = None, nll_windows: int = 16, nll_length: int = 128, nll_samples: int = 4,
             device: str = "cpu", log=print) -> dict[str, Any]:
    """Run every metric; returns the report (what `amadeus evaluate` writes as JSON).

    Raises ValueError / OSError (checkpoint, data) or MetricUnavailable (--clap) with a clear message.
    """
    from amadeus.datamodule import EvalWindows
    from amadeus.features import extract_features
    from amadeus.hub import Amadeus

    t0 = time.perf_counter()
    if data is None:
        from amadeus.corpus import ensure_bach_shards

        data = ensure_bach_shards(progress=False)
    model = Amadeus.load(ckpt, device=device)
    module, tokenizer = model.module, model.tokenizer
    text_model = module.text_encoder is not None
    pieces, dm = read_pieces(data, split, num, tokenizer.config_hash)
    if not pieces:
        raise ValueError(f"{data}: no pieces with a caption in the {split!r} split")
    if len(pieces) < num:
        log(f"note: the {split!r} split of {data} has {len(pieces)} captioned pieces; evaluating those")
    clap_metric = None
    if clap:  # before generating: a bad checkpoint or a missing soundfont fails fast
        from amadeus.metrics import ClapScore

        clap_metric = ClapScore(clap)  # one model, reset between modes
    captions = [p["caption"] for p in pieces]
    n = len(pieces)

    # -- generation: with text (guided) and without, same seeds
    options = dict(max_notes=max_notes, steps=steps, seed=seed)
    results = {}
    if text_model:
        log(f"generating {n} pieces from their captions (guidance {guidance}) ...")
        results["with_text"] = model.sample(n, text=captions, guidance=guidance, **options)
    log(f"generating {n} pieces without text ...")
    results["without_text"] = model.sample(n, **options)

    adherence: dict[str, dict[str, Any]] = {t: {m: None for m in MODES} for t in TARGETS}
    counts: dict[str, dict[str, Any]] = {t: {m: None for m in MODES} for t in TARGETS}
    generation: dict[str, Any] = {m: None for m in MODES}
    clap_report: dict[str, Any] | str = CLAP_NOT_COMPUTED if clap_metric is None else {m: None for m in MODES}
    targets = {"features": [p["features"] for p in pieces], "caption": [parse_caption(c) for c in captions]}
    for mode, result in results.items():
        scores = [tokenizer.decode(t) for t in result.tokens]
        feats = [extract_features(s) for s in scores]
        for target in TARGETS:
            metric = TextAdherence()
            metric.update(feats, targets[target])
            adherence[target][mode] = {k: _num(v) for k, v in metric.compute().items()}
            counts[target][mode] = metric.counts()
        generation[mode] = _generation_report(result, tokenizer)
        if clap_metric is not None:
            clap_metric.reset()
            clap_metric.update(scores, captions)
            clap_report[mode] = _num(clap_metric.compute())

    # -- likelihood on windows of the split
    nll: dict[str, Any] = {}
    if nll_windows > 0:
        windows = EvalWindows(dm.files(split, required=False), split, "pretrain", tokenizer, nll_length, nll_windows)
        log(f"diffusion ELBO on {len(windows)} windows of {nll_length} rows ({nll_samples} masks per size) ...")
        nll["without_text"] = diffusion_nll(module, windows, text=False, num_samples=nll_samples, seed=seed)
        nll["with_text"] = (diffusion_nll(module, windows, text=True, num_samples=nll_samples, seed=seed)
                            if text_model else None)

    return {
        "checkpoint": str(ckpt), "data": str(data), "split": split, "device": str(model.device),
        "threads": torch.get_num_threads(),
        "tokenizer_hash": tokenizer.config_hash, "text_conditioned": text_model,
        "settings": {"num": n, "max_notes": max_notes, "steps": steps, "guidance": guidance if text_model else None,
                     "seed": seed, "nll_windows": nll_windows, "nll_length": nll_length, "nll_samples": nll_samples},
        "pieces": [{"id": p["id"], "caption": p["caption"], "seed": seed + i} for i, p in enumerate(pieces)],
        "adherence": adherence, "adherence_counts": counts,
        "generation": generation,
        "data_reference": structure_metrics([p["tokens"] for p in pieces], tokenizer),
        "nll": nll,
        "clap": clap_report,
        "seconds": round(time.perf_counter() - t0, 2),
    }


# ----------------------------------------------------------------------------------------------
# table


def _cell(v: Any, width: int = 8, digits: int = 1) -> str:
    return ("-" if v is None else f"{v:.{digits}f}").rjust(width)


def format_report(report: dict[str, Any]) -> str:
    """The report as plain-text tables."""
    lines = []
    n = report["settings"]["num"]
    g = report["settings"]["guidance"]
    lines.append(f"text adherence, % of {n} pieces of the {report['split']!r} split"
                 + (f" (guidance {g})" if report["text_conditioned"] else " (model has no text encoder)"))
    lines.append("target / mode".ljust(30) + "".join(c.rjust(8) for c in ADHERENCE_METRICS) + "   scored")
    for target in TARGETS:
        for mode in MODES:
            name = f"{'stored features' if target == 'features' else 'caption fields'} / {mode.replace('_', ' ')}"
            row = report["adherence"][target][mode]
            if row is None:
                lines.append(name.ljust(30) + "  not computed (model has no text encoder)")
                continue
            scored = report["adherence_counts"][target][mode]
            lines.append(name.ljust(30) + "".join(_cell(row[c]) for c in ADHERENCE_METRICS)
                         + "   " + " ".join(str(scored[c]) for c in ADHERENCE_METRICS))
    lines.append("")
    lines.append("generated pieces".ljust(30) + "notes/s".rjust(10) + "syntax err %".rjust(14)
                 + "PC entropy".rjust(12) + "groove".rjust(9))
    rows = [(m.replace("_", " "), report["generation"][m]) for m in MODES]
    rows.append(("source pieces (data)", report["data_reference"]))
    for name, r in rows:
        if r is None:
            continue
        lines.append(name.ljust(30) + _cell(r.get("notes_per_s"), 10) + _cell(r["syntax_error_rate"]["any"], 14, 2)
                     + _cell(r["pitch_class_entropy"], 12, 3) + _cell(r["groove_consistency"], 9, 3))
    nll = report["nll"]
    if nll:
        names = [k.split("/", 1)[1] for k in nll["without_text"] if k.startswith("nll/")]
        lines.append("")
        first = nll["without_text"]
        lines.append(f"diffusion ELBO, nats per note ({first.get('windows', 0)} windows, "
                     f"{first.get('notes', 0)} notes)")
        lines.append("".ljust(14) + "".join(c[:8].rjust(9) for c in names))
        for mode in ("without_text", "with_text"):
            r = nll.get(mode)
            if r:
                lines.append(mode.replace("_", " ").ljust(14) + "".join(_cell(r[f"nll/{c}"], 9, 3) for c in names))
    lines.append("")
    clap = report["clap"]
    if isinstance(clap, str):
        lines.append(clap)
    else:
        lines.append("CLAP: " + ", ".join(f"{m.replace('_', ' ')} {_cell(v, 0, 4).strip()}" for m, v in clap.items()))
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# `amadeus evaluate`


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ckpt", required=True, help="Lightning .ckpt or exported folder (amadeus export)")
    parser.add_argument("--data", default=None,
                        help="shard folder (amadeus preprocess); default: the embedded Bach corpus shards")
    parser.add_argument("--split", default="test", choices=SPLITS, help="split to evaluate on (default test)")
    parser.add_argument("--num", type=int, default=16, help="captioned pieces used as prompts (default 16)")
    parser.add_argument("--max-notes", type=int, default=256, help="at most this many generated rows per piece")
    parser.add_argument("--steps", type=int, default=None, help="denoising steps per note (default K // 2)")
    parser.add_argument("--guidance", type=float, default=3.0,
                        help="classifier-free guidance scale for the text rows (default 3; 1 = plain conditional)")
    parser.add_argument("--seed", type=int, default=0, help="piece i uses seed + i, with and without text")
    parser.add_argument("--clap", default=None, metavar="PATH",
                        help="local CLAP checkpoint (Hugging Face folder) to compute CLAP; never downloaded")
    parser.add_argument("--nll-windows", type=int, default=16,
                        help="windows of the split for the diffusion ELBO (default 16; 0 = skip)")
    parser.add_argument("--nll-length", type=int, default=128, help="rows per ELBO window (default 128)")
    parser.add_argument("--nll-samples", type=int, default=4,
                        help="random masks per mask size for the ELBO (exact where fewer subsets exist; default 4)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, ... (default: cuda if available)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1: the sampler's small per-note tensors run fastest on one "
                             "thread, and far slower when threads outnumber free cores; 0 = torch's default)")
    parser.add_argument("--out", default=None,
                        help="JSON report (default: beside the checkpoint, NAME.eval.json or FOLDER/evaluation.json)")


def _validate(args: argparse.Namespace) -> None:
    from amadeus.tokenizer import ATTRIBUTES

    K = len(ATTRIBUTES)
    if not Path(args.ckpt).exists():
        raise ValueError(f"--ckpt {args.ckpt}: no such checkpoint file or exported folder")
    if args.data is not None and _is_local(args.data) and not (Path(args.data) / "manifest.json").is_file():
        what = ("no such folder" if not Path(args.data).exists()
                else "no manifest.json in it (make shards with `amadeus preprocess`)")
        raise ValueError(f"--data {args.data}: {what}")
    for name in ("num", "max_notes", "nll_samples"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.nll_windows < 0:
        raise ValueError(f"--nll-windows must be >= 0, got {args.nll_windows}")
    if args.nll_length < 2:
        raise ValueError(f"--nll-length must be >= 2, got {args.nll_length}")
    if args.steps is not None and not 1 <= args.steps <= K:
        raise ValueError(f"--steps {args.steps}: must be in 1..{K} (the number of attributes)")
    if args.threads < 0:
        raise ValueError(f"--threads must be >= 0, got {args.threads}")
    if not math.isfinite(args.guidance) or args.guidance < 0:
        raise ValueError(f"--guidance must be a number >= 0, got {args.guidance}")
    if args.clap is not None and not Path(args.clap).exists():
        raise ValueError(f"--clap {args.clap}: no such local CLAP checkpoint (nothing is downloaded)")


def _default_out(ckpt: str) -> Path:
    p = Path(ckpt)
    return p / "evaluation.json" if p.is_dir() else p.with_name(p.stem + ".eval.json")


def run(args: argparse.Namespace) -> int:
    threads = torch.get_num_threads()
    try:
        _validate(args)
        device = args.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if args.threads > 0 and device == "cpu":
            torch.set_num_threads(args.threads)
        report = evaluate(args.ckpt, data=args.data, split=args.split, num=args.num, max_notes=args.max_notes,
                          steps=args.steps, guidance=args.guidance, seed=args.seed, clap=args.clap,
                          nll_windows=args.nll_windows, nll_length=args.nll_length, nll_samples=args.nll_samples,
                          device=device, log=lambda msg: print(msg, file=sys.stderr))
    except (ValueError, OSError, MetricUnavailable) as e:  # checkpoint, data, tokenizer and CLAP errors
        print(f"amadeus evaluate: error: {e}", file=sys.stderr)
        return 2
    finally:
        torch.set_num_threads(threads)  # in-process callers (tests, notebooks) keep their setting
    out = Path(args.out) if args.out else _default_out(args.ckpt)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, allow_nan=False) + "\n")
    print(format_report(report))
    print(f"\nwrote {out} ({report['seconds']:.1f} s)")
    return 0
