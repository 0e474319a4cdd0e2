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
Every generated piece is scored (amadeus.metrics.adherence_scores: TB TBT CK CKD CTS CI CM_top3 CS) twice:
against the features stored with the prompt's source piece (key, tempo, time signature,
instruments, chords: the shard's features JSON) and against the fields the caption states
(amadeus.captions.parse_caption). A model without a text encoder gets the baseline rows only.

Two conventions for the generated pieces' tempo, time signature and key (`adherence`, the command's
--adherence): "amadeus" (default: the longest-held tempo and time signature, Krumhansl-Kessler key
profiles, as the stored features) and "midicaps" (MidiCaps' pipeline: the first tempo event, the first
time signature, music21's key analysis; the stored-feature targets then take these three fields from
the prompt piece's tokens by the same rules), for comparisons with published MidiCaps tables.

Every adherence percentage carries a 95 % interval (amadeus.intervals: a percentile bootstrap over the
prompt pieces), and the difference with - without text a paired one (`adherence_ci95`,
`adherence_difference`); `adherence_info` names the prompts' split and where the sampler settings were
chosen (`chosen_on`, default CHOSEN_ON).

Style adherence CS, when the data has styles (the music21 corpus: the shard's features `style` or the
corpus' captions.jsonl beside the shards): the share of generated pieces whose style, as predicted by
amadeus.style's classifier (fitted on the training split's first `max_notes` rows, cut as the generated
pieces are; cached in the shard folder), is the prompt piece's style; CS_no_metre the same with a
classifier that does not read the time signature (so that it does not repeat CTS). Their ceilings are
reported beside them (report["style"]): each classifier's accuracy on the held-out pieces, and on the
prompt pieces themselves cut to the generated length.

Sample quality (amadeus.descriptors): per-piece descriptors (consonance, scale consistency, polyphony,
rhythm, range ...) of the generated pieces against the reference split's pieces (`reference_split`:
test to report, validation to choose settings on; cut to the same number of rows), as distributions with
the reference's kernel widths: overlapped area and KL per descriptor, undefined values counted, mean OA
with a bootstrap interval over both sets, the furthest and the degenerate pieces (above 1.5 x the
corpus' most notes at once or onsets per beat), beside the real-vs-real ceiling (as many training
pieces, same cut, against the same reference).

Unconditional metrics: the masked-diffusion ELBO per attribute (amadeus.metrics.DiffusionNLL, nats per
note: the negative log-likelihood averaged over random reveal orders of the attributes, a bound on the
model's likelihood as a mixture over orders; it does not bound the column-order NLL note by note) and the
exact NLL in column order, on deterministic windows of the split, without text (and with each window's
caption when the model reads text); syntax-error rate, pitch-class entropy, groove consistency and
notes/s of the generated pieces, next to the same structure metrics of the source pieces for reference.

CLAP only with --clap PATH (a local checkpoint); nothing is ever downloaded.
The command line (flags, checks, printing) is `amadeus.commands.evaluate`; the tables
`amadeus.evaluation_tables`.
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
)
from amadeus.descriptors import RESAMPLES
from amadeus.intervals import METHOD as INTERVAL_METHOD
from amadeus.sampling.options import SamplingOptions

SPLITS = ("train", "validation", "test")
HELD_OUT = ("validation", "test")  # the reference splits generated music can be compared with
QUALITY_REFERENCE = "test"  # reports compare with the test split; settings are chosen against validation
CHOSEN_ON = {"sampler": "validation", "guidance": "validation"}
"""Where the sampler's current defaults were chosen by measurement: steps, order and truncation against the
23 validation chorales, guidance and plausibility on the captions of validation folk tunes (the demo's
models; docs/results.md). Whoever chooses them again updates this, and every report says it (`chosen_on`)."""
LIMIT_PIECES = 2000  # training pieces (at most) whose maxima set the degenerate-piece limits
_REAL_CACHE: dict[tuple, dict[str, Any]] = {}
CLAP_NOT_COMPUTED = "CLAP: not computed (needs a local checkpoint, --clap PATH)"
MODES = ("with_text", "without_text")
SCORED = ADHERENCE_METRICS + ("CS_no_metre",)  # CS again, by a classifier that does not read the metre
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


def _real_sets(dm, tokenizer, max_notes: int, reference_split: str, seed: int) -> dict[str, Any]:
    """The reference pieces' descriptors, the ceiling's (as many training pieces, drawn with `seed`) and the
    corpus maxima of EXTREMES over at most LIMIT_PIECES training pieces; cached per (data, options)."""
    from amadeus.descriptors import corpus_limits, describe_set

    files = tuple(str(f) for split in SPLITS for f in dm.files(split, required=False))
    key = (files, tokenizer.config_hash, max_notes, reference_split, seed)
    if key not in _REAL_CACHE:
        def describe(tokens: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
            return describe_set(tokenizer.decode(t[: max_notes + 1]) for t in tokens)

        reference, train = read_tokens(dm, tuple(reference_split.split("+"))), read_tokens(dm, ("train",))
        order = np.random.default_rng(seed).permutation(len(train))
        real = describe(reference) if reference else None
        ceiling = describe([train[i] for i in order[: len(reference)]]) if reference and len(train) else None
        limits = corpus_limits(*[d for d in (real, ceiling, describe([train[i] for i in order[:LIMIT_PIECES]]))
                                 if d is not None])
        _REAL_CACHE.clear()  # one data set at a time
        _REAL_CACHE[key] = {"real": real, "ceiling": ceiling, "limits": limits, "pieces": len(reference),
                            "ceiling_pieces": min(len(reference), len(train)),
                            "limit_pieces": min(LIMIT_PIECES, len(train))}
    return _REAL_CACHE[key]


def corpus_limits_of(dm, tokenizer, max_notes: int, seed: int = 0) -> dict[str, float]:
    """The corpus maxima of amadeus.descriptors.EXTREMES (most notes at once, most onsets in one beat) over
    the test pieces and up to LIMIT_PIECES training pieces of `dm`, cut to `max_notes` rows: what
    `degenerate` compares generated pieces with."""
    return _real_sets(dm, tokenizer, max_notes, QUALITY_REFERENCE, seed)["limits"]


def sample_quality(generated: dict[str, Sequence[np.ndarray] | None], dm, tokenizer, *, max_notes: int,
                   seed: int = 0, reference_split: str = QUALITY_REFERENCE, resamples: int = RESAMPLES,
                   chosen_on: str | None = None) -> dict[str, Any]:
    """Descriptors of each mode's generated token matrices against the reference pieces (the
    `reference_split`: "test" to report, "validation" to choose settings on; "validation+test" only to
    compare with figures measured before issue 22, which used both), and the real-vs-real
    ceiling (as many training pieces against the same reference); real pieces are cut to the first
    `max_notes` rows, as generation is. The kernel widths are the reference's (amadeus.descriptors).

    Returns {"reference_split", "chosen_on", "real_pieces", "ceiling_pieces", "limits" (the corpus maxima
    behind `degenerate`: reference, ceiling and up to LIMIT_PIECES training pieces), "ceiling":
    compare(...), mode: compare(...) | None}; see amadeus.descriptors.compare for the fields (mean_oa,
    mean_oa_ci95, oa, kl, undefined, furthest, degenerate ...). {} when the split has no pieces.
    """
    from amadeus.descriptors import compare, describe_set

    if not set(reference_split.split("+")) <= set(HELD_OUT):
        raise ValueError(f"reference_split {reference_split!r}: choose from {', '.join(HELD_OUT)} "
                         "(or validation+test, to compare with figures measured on both)")
    sets = _real_sets(dm, tokenizer, max_notes, reference_split, seed)
    if sets["real"] is None:
        return {}
    real, limits = sets["real"], sets["limits"]
    out: dict[str, Any] = {"reference_split": reference_split, "chosen_on": chosen_on,
                           "real_pieces": sets["pieces"], "ceiling_pieces": sets["ceiling_pieces"],
                           "limit_pieces": sets["limit_pieces"], "limits": limits,
                           "ceiling": (compare(sets["ceiling"], real, limits=limits, resamples=resamples, seed=seed)
                                       if sets["ceiling"] is not None else None)}
    for mode, tokens in generated.items():
        described = describe_set(tokenizer.decode(t[: max_notes + 1]) for t in tokens) if tokens is not None else None
        out[mode] = (compare(described, real, limits=limits, resamples=resamples, seed=seed)
                     if described is not None else None)
    return _finite(out)


def _finite(obj: Any) -> Any:
    """Nested dicts with every nan / inf float replaced by None (JSON numbers only)."""
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return _num(obj) if isinstance(obj, float) else obj


def _generation_report(result, tokenizer) -> dict[str, Any]:
    speed = NotesPerSecond()
    speed.update(int(result.notes), float(result.seconds))
    return {"notes": int(result.notes), "seconds": round(float(result.seconds), 4),
            "notes_per_s": _num(speed.compute()), "guard_interventions": int(result.guard_interventions),
            **structure_metrics(result.tokens, tokenizer)}


def style_targets(data: str | Path, pieces: list[dict], tokenizer, *, max_notes: int, style_model: str | Path | None,
                  log=print) -> tuple[dict[str, Any], list[str | None], dict[str, Any] | None]:
    """({"CS": classifier, "CS_no_metre": classifier without the time-signature features} or {}, each
    prompt piece's style or None, the style report) for CS: {} when the data has no styles. Both
    classifiers are fitted on the training pieces' first `max_notes` rows, cut as the generated pieces are.
    A style the classifier does not know (too few training pieces) is not scored. The report: classes, each
    classifier's held-out accuracy and accuracy on the prompt pieces cut to `max_notes` rows (CS's ceilings)."""
    from amadeus.style import METRE_FEATURES, captions_styles, corpus_style_classifier, piece_style, piece_vector

    if not is_local(data):
        return {}, [None] * len(pieces), None
    lookup = captions_styles(data)
    styles = [piece_style(p["features"], p["source"], lookup) for p in pieces]
    if not any(styles):
        return {}, [None] * len(pieces), None
    models = {}
    for name, exclude in (("CS", ()), ("CS_no_metre", METRE_FEATURES)):
        path = None if style_model is None else Path(style_model).with_name(
            Path(style_model).stem + ("-no-metre" if exclude else "") + Path(style_model).suffix)
        model = corpus_style_classifier(data, path, max_rows=max_notes, exclude=exclude, log=log)
        if model is not None:
            models[name] = model
    if "CS" not in models:
        return {}, [None] * len(pieces), None
    styles = [s if s in models["CS"].classes else None for s in styles]
    vectors = np.array([piece_vector(tokenizer.decode(p["tokens"][: max_notes + 1])) for p in pieces])
    report = {"classes": models["CS"].classes, "rows": max_notes}
    for name, model in models.items():
        report[name] = {"held_out": model.info.get("held_out"), "prompt_pieces": model.accuracy(vectors, styles),
                        "train_pieces": model.info.get("train_pieces"), "features": len(model.features)}
    return models, styles, _finite(report)


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


def _piece_scores(feats: Sequence[dict[str, Any]], targets: Sequence[dict[str, Any]]) -> np.ndarray:
    """[pieces, SCORED] per-piece adherence scores (amadeus.metrics.adherence_scores, nan where the
    target does not state the field), CS_no_metre from the features' `style_no_metre`."""
    from amadeus.intervals import score_matrix
    from amadeus.metrics import adherence_scores

    rows = []
    for f, t in zip(feats, targets):
        r = adherence_scores(f, t)
        if "CS" in r and f.get("style_no_metre") is not None:
            r["CS_no_metre"] = 0.0 if f.get("n_notes", 1) == 0 else float(f["style_no_metre"] == t["style"])
        rows.append(r)
    return score_matrix(rows, SCORED)


def _adherence(model, pieces: list[dict], results: dict[str, Any], clap_metric, *, convention: str = "amadeus",
               styles: tuple[dict[str, Any], list[str | None]] = ({}, []), seed: int = 0) -> dict[str, Any]:
    """Adherence of each mode's pieces to the stored features and to the caption fields (tempo, time
    signature and key by `convention`; CS and CS_no_metre with the style classifiers), with bootstrap
    intervals and the paired difference with - without text; their generation statistics and (when
    asked) CLAP: the report's adherence, adherence_ci95, adherence_difference, counts, generation, clap."""
    from amadeus.features import adherence_features
    from amadeus.intervals import mean_intervals, paired_difference

    tokenizer = model.tokenizer
    captions = [p["caption"] for p in pieces]
    adherence: dict[str, dict[str, Any]] = {t: {m: None for m in MODES} for t in TARGETS}
    counts: dict[str, dict[str, Any]] = {t: {m: None for m in MODES} for t in TARGETS}
    ci: dict[str, dict[str, Any]] = {t: {m: None for m in MODES} for t in TARGETS}
    scored: dict[str, dict[str, np.ndarray]] = {t: {} for t in TARGETS}
    generation: dict[str, Any] = {m: None for m in MODES}
    meters: dict[str, Any] = {m: None for m in MODES}
    clap_report: dict[str, Any] | str = CLAP_NOT_COMPUTED if clap_metric is None else {m: None for m in MODES}
    classifiers, piece_styles = styles
    targets = _targets(pieces, piece_styles or [None] * len(pieces), convention, tokenizer)
    meters["prompts"] = _meter_counts(targets["features"])
    for mode, result in results.items():
        scores = [tokenizer.decode(t) for t in result.tokens]
        feats = [adherence_features(s, convention) for s in scores]
        for name, field in (("CS", "style"), ("CS_no_metre", "style_no_metre")):
            if name in classifiers:
                for f, style in zip(feats, classifiers[name].predict(scores)):
                    f[field] = style
        for target in TARGETS:
            x = scored[target][mode] = _piece_scores(feats, targets[target])
            with np.errstate(invalid="ignore"):
                means = 100.0 * np.nansum(x, axis=0) / np.isfinite(x).sum(axis=0)
            adherence[target][mode] = {n: _num(v) for n, v in zip(SCORED, means)}
            counts[target][mode] = {n: int(c) for n, c in zip(SCORED, np.isfinite(x).sum(axis=0))}
            ci[target][mode] = mean_intervals(x, SCORED, seed=seed)
        generation[mode] = _generation_report(result, tokenizer)
        meters[mode] = _meter_counts(feats)
        if clap_metric is not None:
            clap_metric.reset()
            clap_metric.update(scores, captions)
            clap_report[mode] = _num(clap_metric.compute())
    difference = {t: (paired_difference(scored[t]["with_text"], scored[t]["without_text"], SCORED, seed=seed)
                      if len(scored[t]) == 2 else None) for t in TARGETS}
    return {"adherence": adherence, "adherence_counts": counts, "adherence_ci95": ci,
            "adherence_difference": difference, "generation": generation, "clap": clap_report,
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


def _generate(model, pieces: list[dict], options: SamplingOptions, seed: int, text_model: bool, log) -> dict[str, Any]:
    """Each mode's SampleResult: with text (guided, when the model reads text) and without, same seeds."""
    n, results = len(pieces), {}
    if text_model:
        log(f"generating {n} pieces from their captions (guidance {options.guidance_for(True):g}) ...")
        results["with_text"] = model.sample(n, text=[p["caption"] for p in pieces], options=options, seed=seed)
    log(f"generating {n} pieces without text ...")
    results["without_text"] = model.sample(n, options=replace(options, guidance=None), seed=seed)
    return results


def evaluate(ckpt: str | Path, *, options: SamplingOptions | None = None, data: str | Path | None = None,
             split: str = "test", num: int = 16, max_notes: int = 256, seed: int = 0,
             clap: str | Path | None = None, nll_windows: int = 16, nll_length: int = 128, nll_samples: int = 4,
             device: str = "cpu", adherence: str = "amadeus", style_model: str | Path | None = None,
             stratify: bool = True, reference_split: str | None = None, chosen_on: Any = None,
             log=print) -> dict[str, Any]:
    """Run every metric; returns the report (what `amadeus evaluate` writes as JSON).

    `options`: how both modes sample (default the sampler's; its guidance applies to the text rows, the
    rows without text are the plain model); every piece has at most `max_notes` generated rows and the
    real pieces it is compared with are cut to as many. `adherence`: the feature convention of the
    adherence metrics, one of amadeus.features.FEATURE_CONVENTIONS (see the module docstring).
    `style_model`: where the style classifier is cached (default DATA/style-classifier.json).
    `stratify`: prompts round-robin over styles (see `read_pieces`). `reference_split`: the real pieces
    the sample quality compares with (default: `split` when it is validation or test, else test).
    `chosen_on`: where the sampler settings were chosen, recorded in the report (default CHOSEN_ON, where
    the defaults were). Raises ValueError / OSError
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

    options = replace(options or SamplingOptions(), max_notes=max_notes)
    results = _generate(model, pieces, options, seed, text_model, log)
    classifiers, styles, style_report = style_targets(data, pieces, tokenizer, max_notes=max_notes,
                                                      style_model=style_model, log=log)
    scored = _adherence(model, pieces, results, clap_metric, convention=adherence, styles=(classifiers, styles),
                        seed=seed)
    chosen_on = dict(CHOSEN_ON) if chosen_on is None else chosen_on
    reference_split = reference_split or (split if split in HELD_OUT else QUALITY_REFERENCE)

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
        "adherence": scored["adherence"], "adherence_counts": scored["adherence_counts"],
        "adherence_ci95": scored["adherence_ci95"], "adherence_difference": scored["adherence_difference"],
        "adherence_info": {"reference_split": split, "chosen_on": chosen_on, "intervals": INTERVAL_METHOD},
        "style": style_report,
        "time_signatures": scored["time_signatures"],
        "generation": scored["generation"],
        "data_reference": structure_metrics([p["tokens"] for p in pieces], tokenizer),
        "quality": sample_quality({m: results[m].tokens if m in results else None for m in MODES}, dm, tokenizer,
                                  max_notes=max_notes, seed=seed, reference_split=reference_split,
                                  chosen_on=chosen_on),
        "nll": _nll(module, dm, split, nll_windows, nll_length, nll_samples, seed, log),
        "clap": scored["clap"],
        "seconds": round(time.perf_counter() - t0, 2),
    }
