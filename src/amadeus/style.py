"""Style classifier: which style of the corpus (Irish jig, Bach chorale, German folk song ...) a piece is.

The style adherence CS of `amadeus evaluate` asks whether a piece generated from "An Irish jig in D
major ..." is a jig; this module answers with a small multinomial logistic regression (numpy only,
class-balanced, L2) on a fixed vector per piece (`piece_vector`, FEATURE_NAMES):
- the piece descriptors of amadeus.descriptors (consonance, scale consistency, polyphony, rhythm ...);
- the pitch-class histogram relative to the Krumhansl-Schmuckler tonic (amadeus.features.estimate_key)
  and the mode, so that a style is recognised in every key;
- the melodic-interval histogram of the top line (|interval| 0 .. 11, 12+ semitones);
- the onset phase inside the quarter note (12 steps: straight, dotted, triplet and compound feels);
- the note-length histogram (quarters) and the first time signature (METERS, else "other").
Tempo and instruments are left out on purpose: in the corpus they come from per-collection defaults,
and CS should judge the music, not the instrument token.

The training data are the *train* split of a shard folder, decoded from their tokens as generated
pieces are and, with `max_rows`, cut like them (the first `max_rows` rows: `amadeus evaluate` passes its
generation length, so the classifier judges 128-row openings as it will see them, not whole pieces); each
piece's style comes from its features JSON (`style`) or, for shards that do not store it, from the
corpus' captions.jsonl beside the shards (amadeus.corpus.music21 writes ROOT/midi/captions.jsonl next to
ROOT/shards; the manifest's `source` names that folder). Styles with fewer than `min_pieces` training
pieces are left out. `exclude=METRE_FEATURES` fits it without the time-signature features, so that CS
does not repeat CTS (a jig told from a reel by its 6/8 alone). `corpus_style_classifier(data)` fits once
and caches the model as JSON (in the shard folder by default, one file per set of options, keyed by the
manifest's shards), with its accuracy on the held-out (validation + test) pieces: the ceiling of CS.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
from symusic import Score

STYLE_FILE = "style-classifier.json"
STYLE_FORMAT = 2  # bump when piece_vector or the fit changes: cached classifiers are refitted
METERS = ("2/4", "3/4", "4/4", "2/2", "3/2", "4/2", "3/8", "6/8", "9/8", "12/8")
LENGTH_EDGES = (0.25, 0.34, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0)  # note lengths in quarters (upper bin edges)
PHASE_STEPS = 12  # onset phase inside a quarter note


def _feature_names() -> tuple[str, ...]:
    from amadeus.descriptors import DESCRIPTORS

    return (tuple(DESCRIPTORS) + tuple(f"pc_{i}" for i in range(12)) + ("minor",)
            + tuple(f"interval_{i}" for i in range(13)) + tuple(f"phase_{i}" for i in range(PHASE_STEPS))
            + tuple(f"length_{i}" for i in range(len(LENGTH_EDGES) + 1))
            + tuple(f"meter_{m}" for m in METERS) + ("meter_other",))


FEATURE_NAMES = _feature_names()
METRE_FEATURES = tuple(f for f in FEATURE_NAMES if f.startswith("meter_"))  # the first time signature, one-hot


def _histogram(values: np.ndarray, bins: int, weights: np.ndarray | None = None) -> np.ndarray:
    h = np.bincount(values, weights=weights, minlength=bins)[:bins].astype(np.float64)
    return h / h.sum() if h.sum() > 0 else h


def piece_vector(score: Score) -> np.ndarray:
    """The classifier's input for one piece: float64 [len(FEATURE_NAMES)] (nan where a descriptor is
    undefined; histograms are shares, all zero without notes)."""
    from amadeus.descriptors import describe
    from amadeus.features import estimate_key
    from amadeus.tokenizer import DRUM_INSTRUMENT, note_table

    t = note_table(score)
    tpq = float(score.ticks_per_quarter)
    pitched = t["instrument"] != DRUM_INSTRUMENT
    pitch, on, dur = t["pitch"][pitched], t["time"][pitched] / tpq, t["duration"][pitched] / tpq
    key = estimate_key(pitch, np.maximum(dur, 1e-3)) if len(pitch) else None
    tonic = key[0] if key else 0
    pcs = _histogram((pitch - tonic) % 12, 12, np.maximum(dur, 1e-3))
    order = np.lexsort((pitch, on))
    top = pitch[order][np.append(on[order][1:] != on[order][:-1], True)] if len(on) else pitch
    intervals = _histogram(np.minimum(np.abs(np.diff(top)), 12), 13)
    phase = _histogram(np.round(np.unique(on) * PHASE_STEPS).astype(np.int64) % PHASE_STEPS, PHASE_STEPS)
    lengths = _histogram(np.searchsorted(np.asarray(LENGTH_EDGES), dur + 1e-6), len(LENGTH_EDGES) + 1)
    sigs = sorted((ts.time, ts.numerator, ts.denominator) for ts in score.time_signatures)
    meter = f"{sigs[0][1]}/{sigs[0][2]}" if sigs else "4/4"
    meters = np.zeros(len(METERS) + 1)
    meters[METERS.index(meter) if meter in METERS else len(METERS)] = 1.0
    desc = describe(score)
    return np.concatenate([[desc[d] for d in desc], pcs, [float(bool(key) and key[1] == "minor")], intervals,
                           phase, lengths, meters]).astype(np.float64)


@dataclass
class StyleClassifier:
    """Multinomial logistic regression on standardized `piece_vector`s: predict(scores) -> styles."""

    classes: list[str]
    features: list[str]  # the FEATURE_NAMES it reads (all but the excluded ones), in order
    mean: np.ndarray  # [F] training means (also what an undefined descriptor is replaced with)
    scale: np.ndarray  # [F] training standard deviations (1 where constant)
    weights: np.ndarray  # [F, C]
    bias: np.ndarray  # [C]
    info: dict[str, Any] = field(default_factory=dict)  # training counts, held-out accuracy, cache key

    @classmethod
    def fit(cls, vectors: np.ndarray, styles: Sequence[str], *, exclude: Sequence[str] = (), l2: float = 1e-3,
            steps: int = 500, lr: float = 0.5) -> "StyleClassifier":
        """Fit on [N, len(FEATURE_NAMES)] vectors and their N style labels (at least two styles), reading
        every feature but `exclude`; classes are weighted equally (a rare style counts as much as a common
        one). Full-batch gradient descent with Nesterov momentum on the convex, L2-regularised cross-entropy."""
        features = [f for f in FEATURE_NAMES if f not in set(exclude)]
        x = _columns(np.asarray(vectors, np.float64), features)
        classes = sorted(set(styles))
        if len(classes) < 2 or len(x) != len(styles):
            raise ValueError(f"a style classifier needs pieces of at least two styles, got {classes}")
        mean = np.nanmean(np.where(np.isfinite(x), x, np.nan), axis=0)
        mean = np.where(np.isfinite(mean), mean, 0.0)
        x = np.where(np.isfinite(x), x, mean)
        scale = x.std(axis=0)
        scale = np.where(scale > 1e-9, scale, 1.0)
        z = (x - mean) / scale
        y = np.array([classes.index(s) for s in styles])
        counts = np.bincount(y, minlength=len(classes))
        w_sample = (len(y) / (len(classes) * counts))[y] / len(y)  # [N], sums to 1
        onehot = np.eye(len(classes))[y]
        w, b = np.zeros((z.shape[1], len(classes))), np.zeros(len(classes))
        vw, vb = np.zeros_like(w), np.zeros_like(b)
        for _ in range(steps):
            lw, lb = w + 0.9 * vw, b + 0.9 * vb
            p = _softmax(z @ lw + lb)
            g = (p - onehot) * w_sample[:, None]
            vw = 0.9 * vw - lr * (z.T @ g + l2 * lw)
            vb = 0.9 * vb - lr * g.sum(axis=0)
            w, b = w + vw, b + vb
        info = {"train_pieces": {c: int(n) for c, n in zip(classes, counts)}, "l2": l2, "steps": steps}
        return cls(classes, features, mean, scale, w, b, info)

    def predict_vectors(self, vectors: np.ndarray) -> list[str]:
        """Styles of [N, F] piece vectors."""
        x = np.atleast_2d(np.asarray(vectors, np.float64))
        if not len(x):
            return []
        x = _columns(x, self.features)
        x = np.where(np.isfinite(x), x, self.mean)
        return [self.classes[i] for i in np.argmax(((x - self.mean) / self.scale) @ self.weights + self.bias, axis=1)]

    def predict(self, scores: Iterable[Score]) -> list[str]:
        """The predicted style of each Score."""
        return self.predict_vectors(np.array([piece_vector(s) for s in scores]).reshape(-1, len(FEATURE_NAMES)))

    def accuracy(self, vectors: np.ndarray, styles: Sequence[str]) -> dict[str, Any]:
        """{"pieces", "accuracy" (%), "balanced_accuracy" (% mean over styles), "per_style" {style: %}}
        on the pieces whose style the classifier knows."""
        known = [i for i, s in enumerate(styles) if s in self.classes]
        pred = self.predict_vectors(np.asarray(vectors)[known]) if known else []
        truth = [styles[i] for i in known]
        per = {c: [p == t for p, t in zip(pred, truth) if t == c] for c in self.classes}
        per_style = {c: 100.0 * float(np.mean(v)) for c, v in per.items() if v}
        return {"pieces": len(known),
                "accuracy": 100.0 * float(np.mean([p == t for p, t in zip(pred, truth)])) if known else math.nan,
                "balanced_accuracy": float(np.mean(list(per_style.values()))) if per_style else math.nan,
                "per_style": per_style}

    def to_dict(self) -> dict[str, Any]:
        return {"format": STYLE_FORMAT, "features": list(self.features), "classes": self.classes,
                "mean": self.mean.tolist(), "scale": self.scale.tolist(), "weights": self.weights.tolist(),
                "bias": self.bias.tolist(), "info": self.info}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "StyleClassifier":
        if d.get("format") != STYLE_FORMAT or not set(d.get("features", [])) <= set(FEATURE_NAMES):
            raise ValueError("style classifier: made by another version (format or features differ)")
        return cls(list(d["classes"]), list(d["features"]), np.asarray(d["mean"]), np.asarray(d["scale"]), np.asarray(d["weights"]),
                   np.asarray(d["bias"]), dict(d.get("info") or {}))

    def save(self, path: str | os.PathLike) -> Path:
        """Write the JSON (atomically) and return its path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(_finite(self.to_dict())))
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "StyleClassifier":
        return cls.from_dict(json.loads(Path(path).read_text()))


def _columns(x: np.ndarray, features: Sequence[str]) -> np.ndarray:
    """The columns of full piece vectors [N, len(FEATURE_NAMES)] that `features` name, in their order."""
    if x.shape[-1] != len(FEATURE_NAMES):
        raise ValueError(f"style classifier: vectors of {x.shape[-1]} features, expected {len(FEATURE_NAMES)}")
    return x[..., [FEATURE_NAMES.index(f) for f in features]]


def _softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _finite(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


# ----------------------------------------------------------------------------------------------
# a shard folder's styles and its cached classifier


def captions_styles(data: str | os.PathLike) -> Callable[[str], str | None]:
    """Style lookup by source location from the corpus' captions.jsonl beside a shard folder (the
    manifest's `source` folder, else DATA/../midi); a lookup that finds nothing without one."""
    from amadeus.captions import Captions

    data = Path(data)
    places = []
    manifest = data / "manifest.json"
    if manifest.is_file():
        src = Path(str(json.loads(manifest.read_text()).get("source", "")))
        places.append(src if src.is_dir() else src.parent)
    places.append(data.parent / "midi")
    for place in places:
        path = place / "captions.jsonl"
        if str(place) and path.is_file():
            rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
            styles = Captions({r["location"]: r["style"] for r in rows if r.get("location") and r.get("style")})
            if styles:
                return styles.get
    return lambda location: None


def piece_style(features: Mapping[str, Any], source: str, lookup: Callable[[str], str | None]) -> str | None:
    """A piece's style: its features' `style`, else the captions' style of its source location."""
    return features.get("style") or lookup(source)


def read_styled(data: str | os.PathLike, splits: Sequence[str]) -> tuple[list[np.ndarray], list[str]]:
    """Token matrices and styles of the pieces of `splits` that have a style, in shard order."""
    from amadeus.shards import load_manifest, read_shard

    manifest = load_manifest(data)
    K = _tokenizer(data).K
    lookup = captions_styles(data)
    tokens, styles = [], []
    for split in splits:
        for shard in manifest["shards"]:
            if shard.get("splits", {}).get(split, 1) == 0:
                continue
            rows = read_shard(str(Path(data) / shard["file"]), ["source", "features", "tokens"], split=split)
            for row in rows.to_pylist():
                style = piece_style(json.loads(row["features"] or "{}"), row["source"], lookup)
                if style:
                    tokens.append(np.asarray(row["tokens"], np.int64).reshape(-1, K))
                    styles.append(style)
    return tokens, styles


def _tokenizer(data: str | os.PathLike):
    """The NoteTokenizer of a shard folder (its manifest's config)."""
    from amadeus.tokenizer import NoteTokenizer, TokenizerConfig

    return NoteTokenizer(TokenizerConfig.from_dict(json.loads((Path(data) / "manifest.json").read_text())["tokenizer"]))


def _cache_key(data: Path, options: Mapping[str, Any]) -> str:
    manifest = json.loads((data / "manifest.json").read_text())
    blob = json.dumps([STYLE_FORMAT, manifest.get("tokenizer_hash"), manifest.get("shards"), dict(options)],
                      sort_keys=True, default=str)
    return hashlib.sha1(blob.encode()).hexdigest()


def style_file(data: str | os.PathLike, max_rows: int | None = None, exclude: Sequence[str] = ()) -> Path:
    """Where a shard folder's classifier with these options is cached: DATA/style-classifier[-rowsN][-no-metre
    | -without-K].json (one file per option set, so that two classifiers never overwrite each other)."""
    stem = Path(STYLE_FILE).stem + (f"-rows{max_rows}" if max_rows else "")
    if exclude:
        stem += "-no-metre" if set(exclude) == set(METRE_FEATURES) else f"-without-{len(exclude)}"
    return Path(data) / f"{stem}.json"


def corpus_style_classifier(data: str | os.PathLike, path: str | os.PathLike | None = None, *,
                            max_per_style: int = 400, min_pieces: int = 10, max_rows: int | None = None,
                            exclude: Sequence[str] = (), seed: int = 0,
                            log: Callable[[str], None] = lambda msg: None) -> StyleClassifier | None:
    """The style classifier of a shard folder: loaded from `path` (default `style_file(data, ...)`) when
    it was fitted on these shards with these options, else fitted on the train split (at most
    `max_per_style` pieces per style, drawn with `seed`; styles with fewer than `min_pieces` left out),
    scored on the held-out splits (info["held_out"]) and saved there (a read-only folder keeps it in
    memory only). Pieces are cut to their first `max_rows` rows when given, as generation cuts; the
    features named in `exclude` (e.g. METRE_FEATURES) are not read. None when the shards have fewer
    than two styles."""
    data = Path(data)
    path = Path(path) if path is not None else style_file(data, max_rows, exclude)
    options = {"max_per_style": max_per_style, "min_pieces": min_pieces, "max_rows": max_rows, "seed": seed,
               "exclude": sorted(exclude)}
    key = _cache_key(data, options)
    if path.is_file():
        try:
            model = StyleClassifier.load(path)
            if model.info.get("key") == key:
                return model
        except (ValueError, KeyError, json.JSONDecodeError):
            pass
    tokenizer = _tokenizer(data)
    cut = (lambda t: t) if max_rows is None else (lambda t: t[: max_rows + 1])
    tokens, styles = read_styled(data, ("train",))
    counts = {s: styles.count(s) for s in set(styles)}
    rng = np.random.default_rng(seed)
    pick = [i for s in sorted(counts) if counts[s] >= min_pieces
            for i in sorted(rng.permutation([j for j, x in enumerate(styles) if x == s])[:max_per_style])]
    if len({styles[i] for i in pick}) < 2:
        return None
    log(f"style classifier: fitting on {len(pick)} training pieces of {len({styles[i] for i in pick})} styles ...")
    x = np.array([piece_vector(tokenizer.decode(cut(tokens[i]))) for i in pick])
    model = StyleClassifier.fit(x, [styles[i] for i in pick], exclude=exclude)
    held_tokens, held_styles = read_styled(data, ("validation", "test"))
    held = np.array([piece_vector(tokenizer.decode(cut(t))) for t in held_tokens]).reshape(-1, len(FEATURE_NAMES))
    model.info.update(key=key, options=options, held_out=model.accuracy(held, held_styles))
    try:
        model.save(path)
    except OSError as e:
        log(f"style classifier: not cached ({e})")
    return model
