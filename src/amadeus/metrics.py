"""Evaluation metrics (torchmetrics), usable from a Lightning callback and from the CLI.

Text adherence (the columns of the MidiCaps / Text2Midi results tables): `TextAdherence`
compares the features of a generated piece (amadeus.features) with those stated by its caption
(`amadeus.captions.parse_caption`) or stored with its target.

Structure of generated token matrices: `SyntaxErrorRate`, `PitchClassEntropy`,
`GrooveConsistency`, and generation speed `NotesPerSecond`.

Likelihood: `DiffusionNLL` accumulates the masked-diffusion ELBO per attribute
(`amadeus.model.diffusion.diffusion_elbo_nll`) over batches.

Audio-text: `ClapScore`, only with a local CLAP checkpoint (nothing is downloaded).
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from symusic import Score
from torchmetrics import Metric

from amadeus.captions import instrument_present, instrument_words, parse_caption
from amadeus.features import extract_features, tempo_bin
from amadeus.theory import parse_chord, parse_key
from amadeus.grammar import cut_at_eos, is_bar_start, note_rows, ts_per_row
from amadeus.syntax import SYNTAX_ERRORS, syntax_errors
from amadeus.tokenizer import (
    ATTRIBUTES,
    COL_INSTRUMENT,
    COL_METRIC,
    COL_PITCH,
    COL_POSITION,
    DRUM_INSTRUMENT,
    NoteTokenizer,
    load_score,
)

# ================================================================================================
# text adherence

ADHERENCE_METRICS = ("TB", "TBT", "CK", "CKD", "CTS", "CI", "CM_top3", "CS")


def _target_tempo_bins(target: dict[str, Any]) -> set[int] | None:
    if target.get("tempo") is not None:
        return {tempo_bin(float(target["tempo"]))}
    if target.get("tempo_bin") is not None:
        return {int(target["tempo_bin"])}
    if target.get("tempo_bins"):
        return {int(b) for b in target["tempo_bins"]}
    return None


def keys_match_with_duplicates(a: tuple[int, str], b: tuple[int, str]) -> bool:
    """CKD: same key, its relative (C major ~ A minor) or its parallel (C major ~ C minor)."""
    if a[0] == b[0]:
        return True  # same tonic: identical or parallel
    if a[1] == b[1]:
        return False
    major, minor = (a, b) if a[1] == "major" else (b, a)
    return (minor[0] + 3) % 12 == major[0]


def _ts_norm(ts: Any) -> tuple[int, int] | None:
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(ts or ""))
    return (int(m.group(1)), int(m.group(2))) if m else None


def adherence_scores(piece: dict[str, Any], target: dict[str, Any]) -> dict[str, float]:
    """Per-piece scores in [0, 1] for the metrics the target allows (see TextAdherence)."""
    out: dict[str, float] = {}
    bins = _target_tempo_bins(target)
    if bins:
        pb = tempo_bin(float(piece["tempo"])) if piece.get("tempo") is not None else None
        out["TB"] = float(pb in bins)
        near = bins if len(bins) > 1 else {b + d for b in bins for d in (-1, 0, 1)}  # a range is tolerance enough
        out["TBT"] = float(pb in near)
    tk = parse_key(target.get("key"))
    if tk:
        pk = parse_key(piece.get("key"))
        out["CK"] = float(pk == tk)
        out["CKD"] = float(pk is not None and keys_match_with_duplicates(pk, tk))
    tts = _ts_norm(target.get("time_signature"))
    if tts:
        out["CTS"] = float(_ts_norm(piece.get("time_signature")) == tts)
    tins = [t for t in target.get("instruments") or [] if instrument_words(t)]
    if tins:
        have = piece.get("instruments") or []
        out["CI"] = sum(instrument_present(t, have) for t in dict.fromkeys(tins)) / len(dict.fromkeys(tins))
    tch = list(dict.fromkeys(c for c in map(parse_chord, target.get("chords") or []) if c))[:3]
    if tch:
        top3 = {c for c in map(parse_chord, (piece.get("chords") or [])[:3]) if c}
        out["CM_top3"] = sum(c in top3 for c in tch) / len(tch)
    if target.get("style"):
        out["CS"] = float(piece.get("style") == target["style"])
    if piece.get("n_notes", 1) == 0:  # nothing generated: every scored field is a miss
        out = {name: 0.0 for name in out}
    return out


class TextAdherence(Metric):
    """Text-adherence percentages: TB, TBT, CK, CKD, CTS, CI, CM_top3, CS.

    Each generated piece's features (amadeus.features.extract_features) are compared with its
    target (a dict, e.g. the features stored with the test piece, or `parse_caption(caption)`):
    - TB: tempo bin (MidiCaps bins, TEMPO_WORDS) equal to the target's; TBT: within one bin. A
      target bpm gives one bin; a tempo word may give several (a hit on any counts). A word that
      spans several bins ("moderate tempo": 80-120 bpm overlaps 3 bins) is a tolerance already, so
      its TBT is its TB: the neighbours of a range are not added a second time.
    - CK: same key (tonic pitch class and mode, so enharmonic spellings match).
      CKD: also counts the relative (C major ~ A minor) and parallel (C major ~ C minor) keys.
    - CTS: same time signature ('n/d', the piece's most used one).
    - CI: share of the target's (distinct) instruments played in the piece (`instrument_present`).
    - CM_top3: the target's first 3 distinct chords (its top chords, as listed by the caption or
      features) - share of them among the piece's 3 most used chords (by time, features 'chords');
      chords compare by root pitch class and quality.
    - CS: style adherence: the piece's `style` (predicted by amadeus.style's classifier, set by the
      caller) equals the target's `style` (the prompt piece's corpus style).
    Per-piece scores in [0, 1] are averaged over the pieces whose target states the field (a missing
    field is not scored; `counts()` says how many were); a piece without notes scores 0.
    compute() -> {metric: percent} (nan where nothing was scored).
    """

    full_state_update = False
    higher_is_better = True

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        n = len(ADHERENCE_METRICS)
        self.add_state("hits", torch.zeros(n, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("scored", torch.zeros(n, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, pieces: Sequence[Score | str | Path | dict], targets: Sequence[dict[str, Any] | str]) -> None:
        """pieces: Scores, MIDI paths or already extracted feature dicts; targets: dicts (keys: tempo
        (bpm) or tempo_bin / tempo_bins, key, time_signature, instruments, chords) or caption strings
        (read with parse_caption)."""
        if len(pieces) != len(targets):
            raise ValueError(f"TextAdherence: {len(pieces)} pieces but {len(targets)} targets")
        hits = torch.zeros_like(self.hits)
        scored = torch.zeros_like(self.scored)
        for piece, target in zip(pieces, targets):
            target = parse_caption(target) if isinstance(target, str) else target
            feats = piece if isinstance(piece, dict) else extract_features(piece)
            for name, value in adherence_scores(feats, target).items():
                i = ADHERENCE_METRICS.index(name)
                hits[i] += value
                scored[i] += 1
        self.hits += hits.to(self.hits.device)
        self.scored += scored.to(self.scored.device)

    def compute(self) -> dict[str, torch.Tensor]:
        pct = 100.0 * self.hits / self.scored  # nan where nothing was scored
        return {name: pct[i].float() for i, name in enumerate(ADHERENCE_METRICS)}

    def counts(self) -> dict[str, int]:
        """How many pieces each metric scored."""
        return {name: int(self.scored[i]) for i, name in enumerate(ADHERENCE_METRICS)}


# ================================================================================================
# structure of token matrices


def _as_numpy(tokens: np.ndarray | torch.Tensor) -> np.ndarray:
    tok = tokens.detach().cpu().numpy() if isinstance(tokens, torch.Tensor) else np.asarray(tokens)
    if tok.ndim != 2:
        raise ValueError(f"token matrix must be [N, K], got shape {tok.shape}")
    return tok.astype(np.int64)


def _iter_matrices(tokens: Any) -> list[np.ndarray]:
    """A [B, N, K] tensor/array or a list of [N, K] matrices -> list of int64 numpy [N, K]."""
    if isinstance(tokens, (torch.Tensor, np.ndarray)) and tokens.ndim == 3:
        return [_as_numpy(t) for t in tokens]
    if isinstance(tokens, (torch.Tensor, np.ndarray)):
        return [_as_numpy(tokens)]
    return [_as_numpy(t) for t in tokens]


def _until_eos(tok: np.ndarray) -> np.ndarray:
    """Rows before the first EOS, padding rows (all zero) dropped."""
    tok = cut_at_eos(tok)
    return tok[tok.any(axis=1)]


class SyntaxErrorRate(Metric):
    """Share (%) of rows of generated token matrices that break the grammar (docs/interfaces.md).

    Kinds: SYNTAX_ERRORS. compute() -> {'any': % of rows with at least one error, kind: % of rows}.
    Rows are every non-padding row (all-zero rows are padding); rows after the first EOS count as
    'after_eos' errors (a decoder would have to ignore them).
    """

    full_state_update = False
    higher_is_better = False

    def __init__(self, tokenizer: NoteTokenizer | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.tokenizer = tokenizer or NoteTokenizer()
        self.add_state("errors", torch.zeros(len(SYNTAX_ERRORS), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("any_errors", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("rows", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, tokens: Any) -> None:
        """tokens: [B, N, K] tensor/array or a list of [N, K] matrices."""
        for tok in _iter_matrices(tokens):
            flags, n = syntax_errors(tok, self.tokenizer)
            self.errors += torch.as_tensor(flags.sum(axis=0), dtype=torch.float64, device=self.errors.device)
            self.any_errors += float(flags.any(axis=1).sum())
            self.rows += n

    def compute(self) -> dict[str, torch.Tensor]:
        rows = self.rows.clamp(min=1)
        out = {"any": (100.0 * self.any_errors / rows).float()}
        out.update({k: (100.0 * self.errors[i] / rows).float() for i, k in enumerate(SYNTAX_ERRORS)})
        return out


def _pieces_to_tokens(pieces: Any, tokenizer: NoteTokenizer | None) -> list[np.ndarray]:
    if isinstance(pieces, (Score, str, Path)):
        pieces = [pieces]
    if isinstance(pieces, (torch.Tensor, np.ndarray)):
        return _iter_matrices(pieces)
    out = []
    for p in pieces:
        if isinstance(p, (Score, str, Path)):
            out.append((tokenizer or NoteTokenizer()).encode(p))
        else:
            out.append(_as_numpy(p))
    return out


def pitch_class_entropy(pitches: np.ndarray) -> float:
    """Entropy (bits) of the pitch-class histogram; nan without notes (0 .. log2 12 = 3.585)."""
    hist = np.bincount(np.asarray(pitches, dtype=np.int64) % 12, minlength=12).astype(np.float64)
    if hist.sum() == 0:
        return math.nan
    p = hist[hist > 0] / hist.sum()
    return float(-(p * np.log2(p)).sum())


class PitchClassEntropy(Metric):
    """Mean over pieces of the pitch-class entropy (bits) of their pitched (non-drum) notes, as MusPy.

    update(pieces): Scores / MIDI paths, or token matrices ([B, N, K] or a list of [N, K]); pieces
    without pitched notes are not counted.
    """

    full_state_update = False

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_state("total", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("pieces", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, pieces: Any) -> None:
        for pitches in _pitched_notes(pieces):
            h = pitch_class_entropy(pitches)
            if not math.isnan(h):
                self.total += h
                self.pieces += 1

    def compute(self) -> torch.Tensor:
        return (self.total / self.pieces).float()


def _pitched_notes(pieces: Any) -> list[np.ndarray]:
    """MIDI pitches of the non-drum notes of each piece (Scores, paths or token matrices)."""
    if isinstance(pieces, (Score, str, Path)):
        pieces = [pieces]
    if isinstance(pieces, (torch.Tensor, np.ndarray)):
        pieces = _iter_matrices(pieces)
    out = []
    for p in pieces:
        if isinstance(p, (Score, str, Path)):
            score, _ = load_score(p)
            arrs = [tr.notes.numpy()["pitch"] for tr in score.tracks if not tr.is_drum and len(tr.notes)]
            out.append(np.concatenate(arrs).astype(np.int64) if arrs else np.zeros(0, np.int64))
        else:
            tok = _until_eos(_as_numpy(p))
            rows = note_rows(tok) & (tok[:, COL_INSTRUMENT] != DRUM_INSTRUMENT)
            out.append(tok[rows, COL_PITCH] - 1)
    return out


def onset_patterns(tok: np.ndarray, tokenizer: NoteTokenizer) -> tuple[np.ndarray, np.ndarray]:
    """Per-bar onset patterns of a token matrix: (pattern [bars, max_len] bool, bar_len [bars]).

    Bars come from EMPTY_BAR / NEW_BAR / NEW_BAR_TS rows; every note sets its grid position.
    """
    tok = _until_eos(_as_numpy(tok))
    m, pos = tok[:, COL_METRIC], tok[:, COL_POSITION]
    bar_row = is_bar_start(m)
    n_bars = int(bar_row.sum())
    if n_bars == 0:
        return np.zeros((0, 0), bool), np.zeros(0, np.int64)
    bar = np.cumsum(bar_row) - 1  # [N]
    ts = ts_per_row(m, tokenizer.default_ts, len(tokenizer.config.time_signatures))[bar_row]  # per bar
    bar_len = tokenizer.config.bar_lengths()[ts]
    pattern = np.zeros((n_bars, int(bar_len.max())), bool)
    rows = note_rows(tok) & (bar >= 0) & (pos > 0) & (pos - 1 < bar_len[np.maximum(bar, 0)])
    pattern[bar[rows], pos[rows] - 1] = True
    return pattern, bar_len


def groove_consistency(tok: np.ndarray, tokenizer: NoteTokenizer) -> float:
    """1 - mean Hamming distance of consecutive bars' onset patterns (MusPy's definition).

    The distance of two bars is the share of grid positions (over the longer bar) where exactly one
    of them has an onset. nan with fewer than 2 bars.
    """
    pattern, bar_len = onset_patterns(tok, tokenizer)
    if len(pattern) < 2:
        return math.nan
    diff = (pattern[1:] != pattern[:-1]).sum(axis=1)  # [bars-1]
    span = np.maximum(bar_len[1:], bar_len[:-1])
    return float(1.0 - np.mean(diff / span))


class GrooveConsistency(Metric):
    """Mean over pieces of `groove_consistency` (1.0 = every bar has the same onset pattern).

    update(pieces): token matrices ([B, N, K] or a list of [N, K]) or Scores / paths (encoded with
    the tokenizer); pieces with fewer than 2 bars are not counted.
    """

    full_state_update = False
    higher_is_better = None

    def __init__(self, tokenizer: NoteTokenizer | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.tokenizer = tokenizer or NoteTokenizer()
        self.add_state("total", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("pieces", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, pieces: Any) -> None:
        for tok in _pieces_to_tokens(pieces, self.tokenizer):
            g = groove_consistency(tok, self.tokenizer)
            if not math.isnan(g):
                self.total += g
                self.pieces += 1

    def compute(self) -> torch.Tensor:
        return (self.total / self.pieces).float()


class NotesPerSecond(Metric):
    """Generation speed: notes generated / wall-clock seconds spent, accumulated over calls."""

    full_state_update = False
    higher_is_better = True

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_state("notes", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("seconds", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, notes: int | Any, seconds: float) -> None:
        """notes: a count, or token matrices whose note rows are counted (up to EOS)."""
        if not isinstance(notes, (int, np.integer)):
            notes = sum(int(note_rows(_until_eos(t)).sum()) for t in _iter_matrices(notes))
        if seconds < 0:
            raise ValueError(f"NotesPerSecond: negative duration {seconds}")
        self.notes += float(notes)
        self.seconds += float(seconds)

    def compute(self) -> torch.Tensor:
        return (self.notes / self.seconds).float()


class DiffusionNLL(Metric):
    """Per-attribute masked-diffusion ELBO (nats per note), accumulated over batches.

    update(terms [N, K]): the ELBO terms of N notes (`amadeus.model.diffusion.diffusion_elbo_nll`, or a
    decoder's `elbo_nll`). compute() -> {'nll/<attribute>': nats per note, 'nll/total': their sum}.
    """

    full_state_update = False
    higher_is_better = False

    def __init__(self, attribute_names: Sequence[str] = ATTRIBUTES, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.attribute_names = tuple(attribute_names)
        self.add_state("nll", torch.zeros(len(self.attribute_names), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("notes", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, terms: torch.Tensor) -> None:
        if terms.ndim != 2 or terms.shape[1] != len(self.attribute_names):
            raise ValueError(f"DiffusionNLL: terms must be [N, {len(self.attribute_names)}], got {tuple(terms.shape)}")
        self.nll += terms.sum(dim=0).to(self.nll)
        self.notes += terms.shape[0]

    def compute(self) -> dict[str, torch.Tensor]:
        per = self.nll / self.notes
        out = {f"nll/{name}": per[i].float() for i, name in enumerate(self.attribute_names)}
        out["nll/total"] = per.sum().float()
        return out


# ================================================================================================
# CLAP (audio-text similarity), local checkpoints only

CLAP_MISSING = "CLAP needs a local checkpoint (--clap PATH); none given"
SOUNDFONT_CANDIDATES = (
    "/usr/share/sounds/sf3/MuseScore_General.sf3",
    "/usr/share/sounds/sf2/MuseScore_General.sf2",
    "/usr/share/sounds/sf3/default-GM.sf3",
)


class MetricUnavailable(RuntimeError):
    """A metric that cannot run here (no local checkpoint, no soundfont); the message says why."""


class ClapScore(Metric):
    """CLAP text-audio cosine similarity (Text2Midi's protocol), from a local checkpoint only.

    Each piece is rendered to 48 kHz mono audio with symusic's Synthesizer and a local soundfont,
    cut into `chunk_seconds` chunks; each chunk's audio embedding is compared with the caption's
    text embedding (transformers ClapModel); chunks scoring below `min_similarity` are discarded and
    compute() is the mean over all kept chunks. Without a checkpoint path: MetricUnavailable with
    CLAP_MISSING (nothing is ever downloaded).
    """

    full_state_update = False
    higher_is_better = True

    def __init__(self, checkpoint: str | Path | None = None, soundfont: str | Path | None = None,
                 chunk_seconds: float = 20.0, min_similarity: float = 0.01, sample_rate: int = 48000,
                 **kwargs: Any) -> None:
        if not checkpoint:
            raise MetricUnavailable(CLAP_MISSING)
        path = Path(checkpoint).expanduser()
        if not (path / "config.json").is_file():
            raise MetricUnavailable(f"CLAP checkpoint {str(path)!r}: not a local Hugging Face model directory "
                                    "(no config.json)")
        sf = Path(soundfont) if soundfont else next((Path(p) for p in SOUNDFONT_CANDIDATES if Path(p).is_file()), None)
        if sf is None or not sf.is_file():
            raise MetricUnavailable(f"CLAP needs a soundfont to render audio; none found at "
                                    f"{soundfont or ', '.join(SOUNDFONT_CANDIDATES)}")
        super().__init__(**kwargs)
        from transformers import ClapModel, ClapProcessor

        try:
            model = ClapModel.from_pretrained(path, local_files_only=True).eval()
            self._processor = ClapProcessor.from_pretrained(path, local_files_only=True)
        except (OSError, ValueError) as e:
            raise MetricUnavailable(f"CLAP checkpoint {str(path)!r}: cannot load ({e})") from e
        model.requires_grad_(False)
        object.__setattr__(self, "_model", model)  # not a submodule: kept out of the metric's state_dict
        self.soundfont, self.sample_rate = str(sf), int(sample_rate)
        self.chunk, self.min_similarity = int(chunk_seconds * sample_rate), float(min_similarity)
        self.add_state("total", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("chunks", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def _render(self, piece: Score | str | Path) -> np.ndarray:
        from symusic import Synthesizer

        score, _ = load_score(piece)
        audio = np.asarray(Synthesizer(self.soundfont, sample_rate=self.sample_rate).render(score, stereo=False))
        return audio.reshape(-1).astype(np.float32)

    @torch.no_grad()
    def update(self, pieces: Sequence[Score | str | Path], captions: Sequence[str]) -> None:
        if len(pieces) != len(captions):
            raise ValueError(f"ClapScore: {len(pieces)} pieces but {len(captions)} captions")
        for piece, caption in zip(pieces, captions):
            audio = self._render(piece)
            chunks = [audio[i:i + self.chunk] for i in range(0, max(len(audio), 1), self.chunk)]
            chunks = [c for c in chunks if len(c) > self.sample_rate // 10] or [np.zeros(self.sample_rate, np.float32)]
            words = self._processor.tokenizer([caption], return_tensors="pt", padding=True)
            sound = self._processor.feature_extractor(chunks, sampling_rate=self.sample_rate, return_tensors="pt")
            text = _embedding(self._model.get_text_features(input_ids=words["input_ids"],
                                                            attention_mask=words["attention_mask"]))  # [1, D]
            audio_emb = _embedding(self._model.get_audio_features(
                **{k: v for k, v in sound.items() if k in ("input_features", "is_longer")}))  # [chunks, D]
            sim = F.cosine_similarity(audio_emb, text.expand_as(audio_emb), dim=-1)  # [chunks]
            kept = sim[sim >= self.min_similarity]
            self.total += float(kept.sum())
            self.chunks += len(kept)

    def compute(self) -> torch.Tensor:
        return (self.total / self.chunks).float()


def _embedding(out: Any) -> torch.Tensor:
    """Projected embedding from get_*_features (a tensor in transformers 4, an output object in 5)."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output
