"""Evaluation of a checkpoint (`amadeus evaluate`): text adherence and unconditional metrics,
as a report (JSON) and a table.

    amadeus evaluate --ckpt outputs/demo/model-text.ckpt --split test --num 16 --out eval.json

Text adherence (the MidiCaps / Text2Midi metrics): N pieces of the split that have a caption are the
prompts: round-robin over the split's styles when the data has styles (the music21 corpora: 48 prompts
cover up to 48 styles), else the first N in shard order (`read_pieces`). From each caption the model
generates a piece (with classifier-free guidance G, over the values the conditional model finds
plausible) and, as a baseline in the same run, a piece without text from the same seed (piece i uses
seed + i in both). The time signatures of the prompts and of each mode's pieces are counted too: a metre
that no prompt asked for is where guidance goes wrong first.
Every generated piece is scored (amadeus.metrics.TextAdherence: TB TBT CK CKD CTS CI CM_top3 CS) twice:
against the features stored with the prompt's source piece (key, tempo, time signature,
instruments, chords: the shard's features JSON) and against the fields the caption states
(amadeus.captions.parse_caption). A model without a text encoder gets the baseline rows only.

Two conventions for the generated pieces' tempo, time signature and key (`adherence`, the command's
--adherence): "amadeus" (default: the longest-held tempo and time signature, Krumhansl-Kessler key
profiles, as the stored features) and "midicaps" (MidiCaps' pipeline: the first tempo event, the first
time signature, music21's key analysis; the stored-feature targets then take these three fields from
the prompt piece's tokens by the same rules), for comparisons with published MidiCaps tables.

Style adherence CS, when the data has styles (the music21 corpus: the shard's features `style` or the
corpus' captions.jsonl beside the shards): the share of generated pieces whose style, as predicted by
amadeus.style's classifier (fitted on the training split, cached in the shard folder), is the prompt
piece's style. Its ceiling is reported beside it (report["style"]): the classifier's accuracy on the
held-out pieces, and on the prompt pieces themselves cut to the generated length.

Sample quality (amadeus.descriptors): per-piece descriptors (consonance, scale consistency, polyphony,
rhythm, range ...) of the generated pieces against the held-out pieces (validation and test splits,
cut to the same number of rows), as distributions: overlapped area and KL per descriptor, beside the
real-vs-real ceiling (as many training pieces, same cut, against the same held-out pieces).

Unconditional metrics: the masked-diffusion ELBO per attribute (amadeus.metrics.DiffusionNLL, nats per
note) on deterministic windows of the split, without text (and with each window's caption when the
model reads text); syntax-error rate, pitch-class entropy, groove consistency and notes/s of the
generated pieces, next to the same structure metrics of the source pieces for reference.

CLAP only with --clap PATH (a local checkpoint); nothing is ever downloaded.
The command line (flags, checks, printing) is `amadeus.commands.evaluate`.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from amadeus.captions import parse_caption
from amadeus.metrics import (
    ADHERENCE_METRICS,
    DiffusionNLL,
    GrooveConsistency,
    NotesPerSecond,
    PitchClassEntropy,
    SyntaxErrorRate,
    TextAdherence,
)
from amadeus.sampling.options import SamplingOptions

SPLITS = ("train", "validation", "test")
HELD_OUT = ("validation", "test")  # the real pieces generated music is compared with
CLAP_NOT_COMPUTED = "CLAP: not computed (needs a local checkpoint, --clap PATH)"
MODES = ("with_text", "without_text")
TARGETS = ("features", "caption")


# ----------------------------------------------------------------------------------------------
# data


def is_local(path: str | Path) -> bool:
    """True for a local path, False for an fsspec URL (s3://, gs://, ...)."""
    return "://" not in str(path)


def read_pieces(data: str | Path, split: str, num: int, tokenizer_hash: str | None = None,
                stratify: bool = True) -> tuple[list[dict], Any]:
    """`num` captioned pieces of `split` and the MusicDataModule of `data`.

    With `stratify` and styles in the data (the music21 corpora), the pieces are taken round-robin over
    the split's styles, most frequent style first, each style's pieces in shard order, so that 48 prompts
    cover 48 styles or all of them; otherwise (or without styles: the Bach corpus) the first `num` in
    shard order. Each piece: {"id", "source", "caption", "features" (dict), "tokens" (int64 [N, K])}. The
    shards' tokenizer must be the model's (tokenizer_hash); a mismatch or a missing manifest is a clear
    error.
    """
    from amadeus.datamodule import MusicDataModule
    from amadeus.shards import read_shard
    from amadeus.style import captions_styles, piece_style

    dm = MusicDataModule(data_dir=str(data), stage="pretrain", num_workers=0, tokenizer_hash=tokenizer_hash)
    K = dm.tokenizer.K
    lookup = captions_styles(data) if stratify and is_local(data) else (lambda location: None)
    pieces: list[dict] = []
    styled = False
    for file in dm.files(split, required=False):
        table = read_shard(file, ["id", "source", "tokens", "caption", "features"], split=split, captioned=True)
        for row in table.to_pylist():
            try:
                features = json.loads(row["features"] or "{}")
            except json.JSONDecodeError as e:
                raise ValueError(f"{file}: piece {row['id']}: features are not JSON ({e})") from None
            style = piece_style(features, row["source"], lookup) if stratify else None
            styled = styled or style is not None
            pieces.append({"id": row["id"], "source": row["source"], "caption": row["caption"], "features": features,
                           "tokens": np.asarray(row["tokens"], dtype=np.int64).reshape(-1, K), "_style": style})
        if len(pieces) >= num and not styled:  # no styles: the first `num` are all we need
            break
    if styled:
        by_style: dict[str, list[dict]] = {}
        for p in pieces:
            by_style.setdefault(p["_style"] or "", []).append(p)
        queues = sorted(by_style.values(), key=lambda q: -len(q))  # stable: ties keep shard order
        pieces = [q[i] for i in range(max(map(len, queues))) for q in queues if i < len(q)]
    for p in pieces:
        del p["_style"]
    return pieces[:num], dm


def read_tokens(dm, splits: Sequence[str]) -> list[np.ndarray]:
    """Token matrices of every piece of `splits` (captioned or not), in shard order."""
    from amadeus.shards import read_shard

    K = dm.tokenizer.K
    out: list[np.ndarray] = []
    for split in splits:
        for file in dm.files(split, required=False):
            for flat in read_shard(file, ["tokens"], split=split).column("tokens").to_pylist():
                out.append(np.asarray(flat, dtype=np.int64).reshape(-1, K))
    return out


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
    """Likelihood of the evaluation windows in nats per note: `nll_per_note` (exact: the chain rule in
    column order, `NoteDecoder.exact_nll`) and, for a diffusion decoder, `elbo_per_note` (the
    masked-diffusion ELBO, `NoteDecoder.elbo_nll`) with its terms per attribute as `nll/<attribute>` and
    `nll/total` (= elbo_per_note); for the autoregressive decoders `nll/<attribute>` are the exact terms.
    With `text` the windows' captions are the prefix. Batch i of the ELBO uses seed `seed + i`.
    """
    from torch.utils.data import DataLoader

    from amadeus.datamodule import collate_windows

    names = module.tokenizer.attribute_names
    head, backbone = module.head, module.backbone
    dev = next(module.parameters()).device
    elbo = DiffusionNLL(names)
    exact = torch.zeros(len(names), dtype=torch.float64)
    notes_seen = 0
    module.eval()
    loader = DataLoader(windows, batch_size=batch_size, shuffle=False, collate_fn=collate_windows)
    for i, batch in enumerate(loader):
        notes, mask = batch["notes"].to(dev), batch["mask"].to(dev)  # [B, T+1, K], [B, T+1]
        valid = mask[:, 1:] & mask[:, :-1]  # [B, T]: the same rows training scores
        prefix, prefix_mask = module.encode_text(list(batch["caption"])) if text else (None, None)
        exact += head.exact_nll(backbone, notes, valid, prefix, prefix_mask).sum(0).cpu().double()
        notes_seen += int(valid.sum())
        terms = head.elbo_nll(backbone, notes, valid, prefix, prefix_mask, num_samples=num_samples,
                              method=method, seed=seed + i)
        if terms is not None:
            elbo.update(terms)
    if not len(windows):
        return {}
    per_note = exact / max(1, notes_seen)
    if not head.autoregressive:
        out = {k: _num(v) for k, v in elbo.compute().items()}
        out.update(elbo_per_note=out["nll/total"], num_samples=num_samples, method=method)
    else:
        out = {f"nll/{name}": _num(per_note[i]) for i, name in enumerate(names)}
        out["nll/total"] = _num(per_note.sum())
    out.update(nll_per_note=_num(per_note.sum()), nll_order="column", windows=len(windows), notes=notes_seen)
    return out


def sample_quality(generated: dict[str, Sequence[np.ndarray]], dm, tokenizer, *, max_notes: int,
                   seed: int = 0) -> dict[str, Any]:
    """Descriptors of each mode's generated token matrices against the held-out pieces, and the
    real-vs-real ceiling; real pieces are cut to the first `max_notes` rows, as generation is.

    Returns {"real_pieces", "ceiling_pieces", "ceiling": compare(...), mode: compare(...) | None};
    see amadeus.descriptors.compare for the fields (mean_oa, oa, kl, mean, real_mean).
    """
    from amadeus.descriptors import compare, describe_set

    def describe(tokens: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
        return describe_set(tokenizer.decode(t[: max_notes + 1]) for t in tokens)

    held_out = read_tokens(dm, HELD_OUT)
    if not held_out:
        return {}
    train = read_tokens(dm, ("train",))
    pick = np.random.default_rng(seed).permutation(len(train))[: len(held_out)]
    real = describe(held_out)
    out: dict[str, Any] = {"real_pieces": len(held_out), "ceiling_pieces": len(pick),
                           "ceiling": compare(describe([train[i] for i in pick]), real) if len(pick) else None}
    for mode, tokens in generated.items():
        out[mode] = compare(describe(tokens), real) if tokens is not None else None
    return _finite(out)


def _finite(obj: Any) -> Any:
    """Nested dicts with every nan / inf float replaced by None (JSON numbers only)."""
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    return _num(obj) if isinstance(obj, float) else obj


def _generation_report(result, tokenizer) -> dict[str, Any]:
    speed = NotesPerSecond()
    speed.update(int(result.notes), float(result.seconds))
    return {"notes": int(result.notes), "seconds": round(float(result.seconds), 4),
            "notes_per_s": _num(speed.compute()), "guard_interventions": int(result.guard_interventions),
            **structure_metrics(result.tokens, tokenizer)}


def style_targets(data: str | Path, pieces: list[dict], tokenizer, *, max_notes: int, style_model: str | Path | None,
                  log=print) -> tuple[Any, list[str | None], dict[str, Any] | None]:
    """(classifier or None, each prompt piece's style or None, the style report) for CS: None when the
    data has no styles. A style the classifier does not know (too few training pieces) is not scored.
    The report: classes, the classifier's held-out accuracy and its accuracy on the prompt pieces cut
    to `max_notes` rows (CS's ceilings)."""
    from amadeus.style import captions_styles, corpus_style_classifier, piece_style, piece_vector

    if not is_local(data):
        return None, [None] * len(pieces), None
    lookup = captions_styles(data)
    styles = [piece_style(p["features"], p["source"], lookup) for p in pieces]
    model = corpus_style_classifier(data, style_model, log=log) if any(styles) else None
    if model is None:
        return None, [None] * len(pieces), None
    styles = [s if s in model.classes else None for s in styles]
    vectors = np.array([piece_vector(tokenizer.decode(p["tokens"][: max_notes + 1])) for p in pieces])
    report = {"classes": model.classes, "held_out": model.info.get("held_out"),
              "prompt_pieces": model.accuracy(vectors, styles), "train_pieces": model.info.get("train_pieces")}
    return model, styles, _finite(report)


def _targets(pieces: list[dict], styles: Sequence[str | None], convention: str, tokenizer) -> dict[str, list[dict]]:
    """The two targets of every prompt piece: its stored features and its caption's fields, each with
    the piece's style; under the "midicaps" convention the stored features' tempo, time signature and
    key are re-taken from the piece's tokens by MidiCaps' rules."""
    from amadeus.features import midicaps_fields

    features = []
    for p, style in zip(pieces, styles):
        f = dict(p["features"], style=style)
        if convention == "midicaps":
            f.update(midicaps_fields(tokenizer.decode(p["tokens"]), p["features"].get("tempo_first", f.get("tempo"))))
        features.append(f)
    return {"features": features,
            "caption": [dict(parse_caption(p["caption"]), style=s) for p, s in zip(pieces, styles)]}


def _adherence(model, pieces: list[dict], results: dict[str, Any], clap_metric, *, convention: str = "amadeus",
               styles: tuple[Any, list[str | None]] = (None, [])) -> dict[str, Any]:
    """Adherence of each mode's pieces to the stored features and to the caption fields (tempo, time
    signature and key by `convention`; CS with a style classifier), their generation statistics and
    (when asked) CLAP: the report's adherence, counts, generation, clap."""
    from amadeus.features import adherence_features

    tokenizer = model.tokenizer
    captions = [p["caption"] for p in pieces]
    adherence: dict[str, dict[str, Any]] = {t: {m: None for m in MODES} for t in TARGETS}
    counts: dict[str, dict[str, Any]] = {t: {m: None for m in MODES} for t in TARGETS}
    generation: dict[str, Any] = {m: None for m in MODES}
    meters: dict[str, Any] = {m: None for m in MODES}
    clap_report: dict[str, Any] | str = CLAP_NOT_COMPUTED if clap_metric is None else {m: None for m in MODES}
    classifier, piece_styles = styles
    targets = _targets(pieces, piece_styles or [None] * len(pieces), convention, tokenizer)
    meters["prompts"] = _meter_counts(targets["features"])
    for mode, result in results.items():
        scores = [tokenizer.decode(t) for t in result.tokens]
        feats = [adherence_features(s, convention) for s in scores]
        if classifier is not None:
            for f, style in zip(feats, classifier.predict(scores)):
                f["style"] = style
        for target in TARGETS:
            metric = TextAdherence()
            metric.update(feats, targets[target])
            adherence[target][mode] = {k: _num(v) for k, v in metric.compute().items()}
            counts[target][mode] = metric.counts()
        generation[mode] = _generation_report(result, tokenizer)
        meters[mode] = _meter_counts(feats)
        if clap_metric is not None:
            clap_metric.reset()
            clap_metric.update(scores, captions)
            clap_report[mode] = _num(clap_metric.compute())
    return {"adherence": adherence, "adherence_counts": counts, "generation": generation, "clap": clap_report,
            "time_signatures": meters}


def _meter_counts(features: Sequence[dict[str, Any]]) -> dict[str, int]:
    """How many pieces are in each time signature, most frequent first: where guidance goes wrong, it
    shows here first (a rare metre that no prompt asked for)."""
    from collections import Counter

    return dict(Counter(str(f.get("time_signature")) for f in features).most_common())


def _nll(module, dm, split: str, nll_windows: int, nll_length: int, nll_samples: int, seed: int,
         log) -> dict[str, Any]:
    """Diffusion ELBO on deterministic windows of the split, without text and (text models) with it."""
    from amadeus.datamodule import EvalWindows

    if nll_windows <= 0:
        return {}
    windows = EvalWindows(dm.files(split, required=False), split, "pretrain", module.tokenizer, nll_length,
                          nll_windows)
    log(f"diffusion ELBO on {len(windows)} windows of {nll_length} rows ({nll_samples} masks per size) ...")
    return {"without_text": diffusion_nll(module, windows, text=False, num_samples=nll_samples, seed=seed),
            "with_text": (diffusion_nll(module, windows, text=True, num_samples=nll_samples, seed=seed)
                          if module.text_encoder is not None else None)}


def evaluate(ckpt: str | Path, *, options: SamplingOptions | None = None, data: str | Path | None = None,
             split: str = "test", num: int = 16, max_notes: int = 256, seed: int = 0,
             clap: str | Path | None = None, nll_windows: int = 16, nll_length: int = 128, nll_samples: int = 4,
             device: str = "cpu", adherence: str = "amadeus", style_model: str | Path | None = None,
             stratify: bool = True, log=print) -> dict[str, Any]:
    """Run every metric; returns the report (what `amadeus evaluate` writes as JSON).

    `options`: how both modes sample (default the sampler's; its guidance applies to the text rows, the
    rows without text are the plain model); every piece has at most `max_notes` generated rows and the
    real pieces it is compared with are cut to as many. `adherence`: the feature convention of the
    adherence metrics, one of amadeus.features.FEATURE_CONVENTIONS (see the module docstring).
    `style_model`: where the style classifier is cached (default DATA/style-classifier.json).
    `stratify`: prompts round-robin over styles (see `read_pieces`). Raises ValueError / OSError
    (checkpoint, data) or MetricUnavailable (clap) with a clear message.
    """
    from amadeus.features import FEATURE_CONVENTIONS

    if adherence not in FEATURE_CONVENTIONS:
        raise ValueError(f"adherence convention {adherence!r} unknown; choose from {', '.join(FEATURE_CONVENTIONS)}")
    from amadeus.api import Amadeus

    t0 = time.perf_counter()
    if data is None:
        from amadeus.corpus import ensure_bach_shards

        data = ensure_bach_shards(progress=False)
    model = Amadeus.load(ckpt, device=device)
    module, tokenizer = model.module, model.tokenizer
    text_model = module.text_encoder is not None
    pieces, dm = read_pieces(data, split, num, tokenizer.config_hash, stratify=stratify)
    if not pieces:
        raise ValueError(f"{data}: no pieces with a caption in the {split!r} split")
    if len(pieces) < num:
        log(f"note: the {split!r} split of {data} has {len(pieces)} captioned pieces; evaluating those")
    clap_metric = None
    if clap:  # before generating: a bad checkpoint or a missing soundfont fails fast
        from amadeus.metrics import ClapScore

        clap_metric = ClapScore(clap)  # one model, reset between modes
    n = len(pieces)

    # -- generation: with text (guided) and without, same seeds
    options = replace(options or SamplingOptions(), max_notes=max_notes)
    results = {}
    if text_model:
        log(f"generating {n} pieces from their captions (guidance {options.guidance_for(True):g}) ...")
        results["with_text"] = model.sample(n, text=[p["caption"] for p in pieces], options=options, seed=seed)
    log(f"generating {n} pieces without text ...")
    results["without_text"] = model.sample(n, options=replace(options, guidance=None), seed=seed)
    classifier, styles, style_report = style_targets(data, pieces, tokenizer, max_notes=max_notes,
                                                     style_model=style_model, log=log)
    scored = _adherence(model, pieces, results, clap_metric, convention=adherence, styles=(classifier, styles))

    return {
        "checkpoint": str(ckpt), "data": str(data), "split": split, "device": str(model.device),
        "threads": torch.get_num_threads(),
        "tokenizer_hash": tokenizer.config_hash, "text_conditioned": text_model,
        "settings": {"num": n, **options.as_dict(), "steps": options.steps_for(tokenizer.K),
                     "guidance": options.guidance_for(True) if text_model else None,
                     "plausibility": options.plausibility if text_model else None, "stratify": stratify,
                     "seed": seed, "nll_windows": nll_windows, "nll_length": nll_length, "nll_samples": nll_samples,
                     "adherence": adherence},
        "pieces": [{"id": p["id"], "caption": p["caption"], "seed": seed + i} for i, p in enumerate(pieces)],
        "adherence": scored["adherence"], "adherence_counts": scored["adherence_counts"], "style": style_report,
        "time_signatures": scored["time_signatures"],
        "generation": scored["generation"],
        "data_reference": structure_metrics([p["tokens"] for p in pieces], tokenizer),
        "quality": sample_quality({m: results[m].tokens if m in results else None for m in MODES}, dm, tokenizer,
                                  max_notes=max_notes, seed=seed),
        "nll": _nll(module, dm, split, nll_windows, nll_length, nll_samples, seed, log),
        "clap": scored["clap"],
        "seconds": round(time.perf_counter() - t0, 2),
    }


# ----------------------------------------------------------------------------------------------
# table


def _cell(v: Any, width: int = 8, digits: int = 1) -> str:
    return ("-" if v is None else f"{v:.{digits}f}").rjust(width)


def _quality_table(quality: dict[str, Any]) -> list[str]:
    """Descriptor means and overlapped areas against the held-out pieces, ceiling beside them."""
    if not quality:
        return []
    from amadeus.descriptors import DESCRIPTORS

    columns = [("ceiling", "real vs real")] + [(m, m.replace("_", " ")) for m in MODES if quality.get(m)]
    lines = ["", f"sample quality against {quality['real_pieces']} held-out pieces: descriptor mean, and the "
                 "overlapped area (OA) of its distribution with the held-out one"]
    lines.append("descriptor".ljust(20) + "held-out".rjust(9)
                 + "".join(f"{label[:14]:>15}{'OA':>6}" for _, label in columns))
    for d in DESCRIPTORS:
        row = d.ljust(20) + _cell(quality["ceiling"]["real_mean"][d], 9, 3)
        for key, _ in columns:
            q = quality[key]
            row += _cell(q["mean"][d], 15, 3) + _cell(q["oa"][d], 6, 2)
        lines.append(row)
    lines.append("mean OA".ljust(29) + "".join(" " * 15 + _cell(quality[k]["mean_oa"], 6, 2) for k, _ in columns))
    return lines


def format_report(report: dict[str, Any]) -> str:
    """The report as plain-text tables."""
    lines = []
    n = report["settings"]["num"]
    g = report["settings"]["guidance"]
    lines.append(f"text adherence, % of {n} pieces of the {report['split']!r} split"
                 + (f" (guidance {g})" if report["text_conditioned"] else " (model has no text encoder)")
                 + f", {report['settings'].get('adherence', 'amadeus')} features")
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
    meters = report.get("time_signatures") or {}
    if meters.get("prompts"):
        lines.append("time signatures (pieces): " + "; ".join(
            f"{name.replace('_', ' ')} " + ", ".join(f"{k} {v}" for k, v in meters[name].items())
            for name in ("prompts",) + MODES if meters.get(name)))
    style = report.get("style")
    if style:
        held, prompts = style.get("held_out") or {}, style["prompt_pieces"]
        lines.append(f"CS ceiling: the style classifier ({len(style['classes'])} styles) is right on "
                     f"{_cell(prompts['accuracy'], 0).strip()}% of these {prompts['pieces']} prompt pieces and "
                     f"{_cell(held.get('accuracy'), 0).strip()}% of {held.get('pieces', 0)} held-out pieces "
                     f"(balanced over styles {_cell(held.get('balanced_accuracy'), 0).strip()}%)")
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
    lines += _quality_table(report.get("quality") or {})
    nll = report["nll"]
    if nll:
        names = [k.split("/", 1)[1] for k in nll["without_text"] if k.startswith("nll/")]
        lines.append("")
        first = nll["without_text"]
        kind = "diffusion ELBO" if "elbo_per_note" in first else "exact NLL (chain rule, column order)"
        lines.append(f"{kind} per attribute, nats per note ({first.get('windows', 0)} windows, "
                     f"{first.get('notes', 0)} notes)")
        lines.append("".ljust(14) + "".join(c[:8].rjust(9) for c in names))
        for mode in ("without_text", "with_text"):
            r = nll.get(mode)
            if r:
                lines.append(mode.replace("_", " ").ljust(14) + "".join(_cell(r[f"nll/{c}"], 9, 3) for c in names))
        lines.append("likelihood, nats per note".ljust(30) + "NLL (exact)".rjust(12) + "ELBO".rjust(9))
        for mode in ("without_text", "with_text"):
            r = nll.get(mode)
            if r:
                lines.append(mode.replace("_", " ").ljust(30) + _cell(r.get("nll_per_note"), 12, 3)
                             + _cell(r.get("elbo_per_note"), 9, 3))
    lines.append("")
    clap = report["clap"]
    if isinstance(clap, str):
        lines.append(clap)
    else:
        lines.append("CLAP: " + ", ".join(f"{m.replace('_', ' ')} {_cell(v, 0, 4).strip()}" for m, v in clap.items()))
    return "\n".join(lines)
