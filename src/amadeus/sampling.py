"""Generation: one note per backbone step (KV cache), S denoising steps per note.

Per note (a batch of pieces at once):
  z = backbone(last row, KV cache)                       one backbone step
  C = head.context(z, text prefix)                       once per note
  S times: logits = head.logits(C, tokens, masked)       all slots start masked
           -> temperature, grammar guards + controls (logit masks), top-k / top-p per attribute
           -> draw a value for every masked slot, reveal the next ones of the order (default: the
              token columns' order; "confidence": the most confident ones, ties to the lower slot;
              near-certain slots are revealed at once, see SamplingOptions.reveal_threshold)
           -> revealed slots are frozen: never re-sampled, returned as drawn.
A piece stops at its own EOS (finished pieces leave the batch and the KV cache), at `max_notes`
generated rows, or where its bar `max_bars` + 1 would begin (that row becomes EOS).

Grammar guards (logit masks computed from the piece so far and the slots already revealed) make every
output decode cleanly: the first row after SOS is NEW_BAR_TS; SOS/PAD never appear; SAME_ONSET keeps
the previous position and NEW_POSITION moves forward, inside the bar; a new bar's position lies inside
its bar length; note rows have every attribute non-zero, EOS / EMPTY_BAR rows (and a NEW_BAR_TS row
with position 0) have zeros; drums get drum sounds (pitch 27-87). When several slots are revealed in
one step and they contradict each other (the model drew them independently), they are accepted in
confidence order and a contradicting one is re-drawn from its logits restricted to what the accepted
ones allow (with the same random number).

`guard_interventions` counts revealed slots where a guard changed the outcome: the model's most likely
value for that slot (argmax of its logits at the step it was revealed) was forbidden by the grammar,
or the drawn value was re-drawn to resolve a same-step contradiction. `control_interventions` counts
slots whose argmax a user control (`amadeus.controls`) forbade. A well-trained model has few of
either; they are reported so that one can see how much the guards steer.

Randomness is counter based: the uniform number for (piece seed, row, pass, slot) is a hash, so a
piece does not depend on what else is in the batch: with seed s, piece i uses seed s + i, and
`generate(num=4, seed=s)` gives the same pieces as four calls `generate(num=1, seed=s + i)`.

Also here: continuation from a prompt (the output starts with exactly the prompt's rows; see
`prompt_from_midi`), regeneration of chosen attributes of an existing piece (`regenerate`), and
classifier-free guidance with a text prefix (logits l_u + g (l_c - l_u) over the values the conditional
model finds plausible, `guide`; g = 1 is plain conditional).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from amadeus.controls import Controls, parse_controls
from amadeus.grammar import Grammar, NoteTables, is_ts_change
from amadeus.model.diffusion import confidence_reveal
from amadeus.tokenizer import (
    ATTRIBUTES,
    COL_METRIC,
    COL_PITCH,
    COL_POSITION,
    METRIC_EMPTY_BAR,
    METRIC_EOS,
    METRIC_NEW_BAR,
    METRIC_SOS,
    METRIC_TS_OFFSET,
    NoteTokenizer,
)

# Fixed reveal orders (SamplingOptions.order): the slots a denoising step reveals are the next masked
# ones of the order, whatever the confidences. "columns": the token columns' order. "harmony": what a
# note is (metric, position), who plays it and over which chord, before its pitch, so that the pitch
# is drawn knowing the chord and the voice.
REVEAL_ORDERS = {
    "columns": ATTRIBUTES,
    "harmony": ("metric", "position", "instrument", "chord", "tempo", "velocity", "pitch", "duration"),
}
REGENERABLE = ("chord", "tempo", "instrument", "pitch", "duration", "velocity")
_M32 = 0xFFFFFFFF


@dataclass
class SampleResult:
    """Generated token matrices (one [N, K] int64 array per piece, SOS ... EOS) and statistics."""

    tokens: list[np.ndarray]
    seeds: list[int]
    notes: int = 0  # generated note rows (prompt excluded)
    rows: int = 0  # generated rows (notes + empty-bar rows), i.e. backbone steps per piece, summed
    seconds: float = 0.0
    guard_interventions: int = 0
    control_interventions: int = 0
    conflicts: int = 0  # same-step contradictions resolved (included in guard_interventions)
    head_passes: int = 0  # denoiser passes (batched), summed over notes
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def notes_per_s(self) -> float:
        return self.notes / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("tokens")
        d["notes_per_s"] = self.notes_per_s
        return d


DEFAULT_STEPS = 3
"""Denoising steps per note when none are asked for (SamplingOptions.steps = None)."""

DEFAULT_ORDER = "columns"
"""SamplingOptions.order when none is asked for: the slots a step reveals follow the token columns
(metric, position, chord, ..., pitch, duration), not the head's confidence. On the demo recipe's models it
keeps the corpus' rhythm, which the confidence order loses (README "Sample quality")."""


class PerAttribute(Mapping[str, float]):
    """An immutable, hashable {attribute: value} sampler setting ("*": every attribute it does not name),
    so that a per-attribute default can be the default of the frozen SamplingOptions."""

    __slots__ = ("_values",)

    def __init__(self, values: Mapping[str, float]) -> None:
        self._values = dict(values)

    def __getitem__(self, key: str) -> float:
        return self._values[key]

    def __iter__(self):
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __hash__(self) -> int:
        return hash(tuple(sorted(self._values.items())))

    def __repr__(self) -> str:
        return f"PerAttribute({self._values!r})"


# Measured against held-out chorales on several training runs (README "Sample quality"): the pitch and
# the chord truncated, the rhythm attributes nearly free.
DEFAULT_TEMPERATURE = PerAttribute({"pitch": 0.8, "*": 1.0})
DEFAULT_TOP_P = PerAttribute({"pitch": 0.85, "chord": 0.7, "*": 0.95})


def setting_text(value: float | Mapping[str, float], sep: str = " ") -> str:
    """A sampler setting as a command line writes it: "0.9", or "pitch=0.85 chord=0.7 *=0.95" (`sep`
    between the attributes: " " for `amadeus generate`'s help, "/" for benchmarks/quality.py's lists)."""
    if isinstance(value, Mapping):
        return sep.join(f"{k}={v:g}" for k, v in value.items())
    return f"{value:g}"


def plain_setting(value: Any) -> Any:
    """A setting as JSON can hold it (a mapping becomes a dict)."""
    return dict(value) if isinstance(value, Mapping) else value


PLAUSIBILITY = 0.1
"""SamplingOptions.plausibility: guidance may only re-weight values with at least this share of the
conditional model's top probability (the adaptive plausibility constraint of contrastive decoding)."""

TEXT_GUIDANCE = 1.5
"""The guidance scale the commands (generate, evaluate, demo, benchmarks) use with a caption, chosen by
measurement on held-out folk captions (README "Text adherence"); the library's default stays 1.0 (plain
conditional) so that `generate(text=...)` alone is the conditional model."""


@dataclass(frozen=True)
class SamplingOptions:
    """How `generate` samples: every setting that is not an input (inputs: number of pieces, seeds,
    controls, prompt, text / prefix, template). Validated on construction; change one with
    `dataclasses.replace(options, steps=2)` or by passing it as a keyword to `generate`.

    temperature, top_p and top_k take one value for every attribute or {attribute: value} ("*" or
    "default" sets the others; an attribute missing from the mapping gets temperature 1, top-p 1 and
    top-k 0 = off).
    """

    max_notes: int = 1024
    """At most this many generated rows per piece (prompt excluded)."""
    max_bars: int | None = None
    """At most this many generated bars per piece: the row that would open the next one becomes EOS."""
    min_notes: int = 0
    """EOS is forbidden before this many generated rows."""
    steps: int | None = None
    """Denoising steps per note (head passes at most), 1..K (the number of attributes); None: DEFAULT_STEPS
    = 3, which with the column order, the reveal threshold and the per-attribute truncation below measured
    closest to the corpus over several training runs (README "Sample quality")."""
    temperature: float | Mapping[str, float] = DEFAULT_TEMPERATURE
    """Logit temperature, global or per attribute; 0 = greedy. Default: pitch 0.8, the others 1."""
    top_p: float | Mapping[str, float] = DEFAULT_TOP_P
    """Nucleus threshold in (0, 1] over the grammatical values, global or per attribute; 1 = off. Default:
    pitch 0.85, chord 0.7, the others 0.95: harmony truncated, rhythm left free (README "Sample quality")."""
    top_k: int | Mapping[str, int] = 0
    """Keep the k most likely values, global or per attribute; 0 = off."""
    guidance: float = 1.0
    """Classifier-free guidance g: logits l_u + g (l_c - l_u); 1 = conditional only (see TEXT_GUIDANCE)."""
    plausibility: float = PLAUSIBILITY
    """Guidance re-weights only the values the conditional model finds plausible: those with at least
    this share of its most likely value's probability; the others keep their conditional logits, ranked
    below every plausible value (see `guide`). 0 = plain guidance over every value."""
    batch_size: int | None = None
    """Pieces decoded together; None or 0: all at once. Does not change the pieces, only the speed."""
    use_cache: bool = True
    """KV cache; False recomputes the whole sequence at every step (the reference path of the tests)."""
    guards: bool = True
    """Grammar guards (logit masks that keep every row decodable); False: vocabularies and controls only."""
    order: str = DEFAULT_ORDER
    """Which masked slots a denoising step reveals: "confidence" (the most confident ones, the paper's
    sampler), a fixed order from REVEAL_ORDERS ("columns", the default, or "harmony"), or a comma-separated
    list naming every attribute once ("metric,position,chord,..."): the next masked ones of that order."""

    reveal_threshold: float = 0.9
    """A masked slot whose drawn value the head itself gives at least this probability (its logits at the
    temperature, before guards and truncation) is revealed at once, outside the step budget (threshold
    decoding, as in Fast-dLLM); the uncertain slots share the S steps (each later step keeps one: the
    order's last, or in confidence order the least confident), and an uncertain metric takes the first step
    alone. A row ends in fewer than S passes when every slot left is sure; in a batch every row waits for
    the slowest. > 1 = off (README "Sample quality")."""

    def __post_init__(self) -> None:
        K = len(ATTRIBUTES)
        if not 0 <= self.plausibility < 1:
            raise ValueError(f"plausibility must be in [0, 1) (0 = off), got {self.plausibility!r}")
        if not self.reveal_threshold > 0:
            raise ValueError(f"reveal_threshold must be > 0 (> 1 = off), got {self.reveal_threshold!r}")
        if self.steps is not None and (not isinstance(self.steps, int) or not 1 <= self.steps <= K):
            raise ValueError(f"steps must be an integer in 1..{K} (the number of attributes), got {self.steps!r}")
        if self.max_notes < 1:
            raise ValueError(f"max_notes must be >= 1, got {self.max_notes}")
        if self.max_bars is not None and self.max_bars < 1:
            raise ValueError(f"max_bars must be >= 1, got {self.max_bars}")
        if self.min_notes < 0:
            raise ValueError(f"min_notes must be >= 0, got {self.min_notes}")
        self.reveal_order(ATTRIBUTES)  # raises for an unknown order
        if self.batch_size is not None and self.batch_size < 0:
            raise ValueError(f"batch_size must be >= 0 (0 or None: all pieces at once), got {self.batch_size}")
        _check_settings(*self.per_attribute(ATTRIBUTES))

    def reveal_order(self, names: Sequence[str]) -> tuple[int, ...] | None:
        """Column indices in reveal order for attributes `names`; None for confidence order."""
        if self.order == "confidence":
            return None
        order = REVEAL_ORDERS.get(self.order) or tuple(a.strip() for a in self.order.split(","))
        if sorted(order) != sorted(names):
            raise ValueError(f"order must be 'confidence', one of {', '.join(REVEAL_ORDERS)} or a comma-separated "
                             f"list of every attribute ({', '.join(names)}) once, got {self.order!r}")
        return tuple(list(names).index(a) for a in order)

    def steps_for(self, K: int) -> int:
        """Denoising steps per note for K attributes (None resolved to DEFAULT_STEPS, at most K)."""
        return min(K, DEFAULT_STEPS) if self.steps is None else self.steps

    def per_attribute(self, names: Sequence[str]) -> tuple[list[float], list[float], list[float]]:
        """(temperatures, top-p, top-k), one value per attribute in `names`."""
        return (per_attribute(self.temperature, 1.0, names, "temperature"),
                per_attribute(self.top_p, 1.0, names, "top_p"),
                per_attribute(self.top_k, 0, names, "top_k"))

    @classmethod
    def build(cls, options: SamplingOptions | None = None, **overrides: Any) -> SamplingOptions:
        """`options` (default: the defaults) with the settings in `overrides` replaced; a keyword that is
        not a setting is a TypeError naming it."""
        if options is not None and not isinstance(options, SamplingOptions):
            raise TypeError(f"options must be a SamplingOptions, got {type(options).__name__}")
        unknown = sorted(set(overrides) - {f.name for f in fields(cls)})
        if unknown:
            raise TypeError(f"unexpected keyword arguments {unknown}; sampling settings: "
                            f"{', '.join(f.name for f in fields(cls))}")
        base = options if options is not None else cls()
        return replace(base, **overrides) if overrides else base


# ----------------------------------------------------------------------------------------------
# counter-based random numbers


def _mulmod32(x: torch.Tensor, c: int) -> torch.Tensor:
    """(x * c) mod 2^32 for x in [0, 2^32) without int64 overflow (split c into 16-bit halves)."""
    lo = x * (c & 0xFFFF)
    hi = ((x * (c >> 16)) & 0xFFFF) << 16
    return (lo + hi) & _M32


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash (lowbias32) on int64 tensors holding values in [0, 2^32)."""
    x = x ^ (x >> 16)
    x = _mulmod32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mulmod32(x, 0x846CA68B)
    return x ^ (x >> 16)


def piece_keys(seeds: Sequence[int], device: torch.device) -> torch.Tensor:
    """One 32-bit key per piece from (up to 64-bit) seeds: int64 [B]."""
    lo = torch.tensor([int(v) & _M32 for v in seeds], dtype=torch.long, device=device)
    hi = torch.tensor([(int(v) >> 32) & _M32 for v in seeds], dtype=torch.long, device=device)
    return _mix32(lo ^ _mix32(hi ^ 0x68E31DA4))


def lane_keys(lanes: int, device: torch.device) -> torch.Tensor:
    """Hashes of the lane numbers 0..lanes-1 (a lane = one (pass, slot) pair): int64 [lanes]."""
    return _mix32(_mulmod32(torch.arange(1, lanes + 1, device=device, dtype=torch.long), 0x9E3779B1))


def uniforms(keys: torch.Tensor, rows: torch.Tensor, lanes: torch.Tensor) -> torch.Tensor:
    """u [B, L] in (0, 1), float64: a hash of (piece key [B], row index [B], lane key [L])."""
    x = _mix32(keys ^ _mix32(rows & _M32))  # [B]
    x = _mix32(x[:, None] ^ lanes[None, :])
    return (x.double() + 0.5) / 4294967296.0


# ----------------------------------------------------------------------------------------------
# settings


def per_attribute(value: float | int | Mapping[str, float] | None, default: float, names: Sequence[str],
                  what: str) -> list[float]:
    """A global value or {attribute: value} (missing attributes get `default`) -> one value per attribute."""
    if value is None:
        return [float(default)] * len(names)
    if isinstance(value, Mapping):
        unknown = sorted(set(value) - set(names) - {"*", "default"})
        if unknown:
            raise ValueError(f"{what}: unknown attributes {unknown}; known: {', '.join(names)}")
        base = float(value.get("*", value.get("default", default)))
        return [float(value.get(n, base)) for n in names]
    return [float(value)] * len(names)


def _check_settings(temps: list[float], top_p: list[float], top_k: list[float]) -> None:
    if any(t < 0 for t in temps):
        raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temps}")
    if any(not 0.0 < p <= 1.0 for p in top_p):
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if any(k < 0 or k != int(k) for k in top_k):
        raise ValueError(f"top_k must be a whole number >= 0 (0 = off), got {top_k}")


# ----------------------------------------------------------------------------------------------
# generation state


@dataclass
class _State:
    """Per-piece generation state (tensors [B]); the guards read it as a `grammar.PieceState`."""

    bar: torch.Tensor  # bars started so far (prompt included)
    gen_bars: torch.Tensor  # bars started by generated rows
    ts: torch.Tensor  # current time-signature index (-1 before the first bar)
    pos: torch.Tensor  # position value (1 + step) of the last note in the current bar, 0 if none
    n_in_bar: torch.Tensor  # notes in the current bar
    n_gen: torch.Tensor  # generated rows
    length: torch.Tensor  # rows fed so far (prompt + generated)

    def take(self, idx: torch.Tensor) -> "_State":
        return _State(**{k: v[idx] for k, v in self.__dict__.items()})


# ----------------------------------------------------------------------------------------------
# truncation and drawing


IMPLAUSIBLE = -1e4  # added to the logits of values outside the plausible set: last resort of the guards


def guide(cond: torch.Tensor, uncond: torch.Tensor, scale: float, plausibility: float) -> torch.Tensor:
    """Classifier-free guidance over the last dim: l_u + g (l_c - l_u) on the values whose conditional
    probability is at least `plausibility` times the conditional maximum; every other value keeps its
    conditional logit minus 10^4, below any plausible value, so that it is drawn only when the grammar
    allows no plausible one.

    Why: guidance multiplies a value's probability by (p_c / p_u)^(g - 1). A value that both models find
    unlikely, such as a 1/4 bar in a corpus of 4/4 and 3/4, can have a large ratio (p_c = 0.01, p_u = 0.001)
    and win at g = 3 over a value the caption makes likely. This is the degeneration contrastive decoding
    guards against with the same "adaptive plausibility constraint" (Li et al., 2023). -inf entries (outside
    a vocabulary) stay -inf. `plausibility` 0: plain guidance."""
    finite = torch.isfinite(cond)
    mixed = torch.where(finite, uncond + scale * (cond - uncond), cond)
    if plausibility <= 0:
        return mixed
    logp = torch.log_softmax(cond, -1)
    keep = logp >= logp.amax(-1, keepdim=True) + math.log(plausibility)
    return torch.where(keep, mixed, cond + IMPLAUSIBLE)


def filter_probs(raw: torch.Tensor, allowed: torch.Tensor, temps: torch.Tensor, top_k: torch.Tensor,
                 top_p: torch.Tensor, use_k: bool, use_p: bool) -> torch.Tensor:
    """Probabilities [B, K, V]: logits / T (T = 0: greedy), restricted to `allowed`, then top-k and top-p
    (nucleus over the allowed values; the most likely value is always kept)."""
    x = raw.float()
    greedy = temps <= 0  # [K]
    x = x / torch.where(greedy, torch.ones_like(temps), temps)[:, None]
    x = x.masked_fill(~allowed, float("-inf"))
    if bool(greedy.any()):
        top = x.amax(-1, keepdim=True)
        x = torch.where(greedy[:, None] & (x < top), torch.full_like(x, float("-inf")), x)
    if use_k or use_p:
        srt = x.sort(-1, descending=True).values  # [B, K, V]
        thr = torch.full_like(x[..., :1], float("-inf"))
        if use_k:
            k = top_k.clamp(1, x.shape[-1])  # [K]; 0 = off is mapped to V by the caller
            thr = torch.maximum(thr, srt.gather(-1, (k - 1)[None, :, None].expand(x.shape[0], -1, 1)))
        if use_p:
            ps = torch.softmax(srt, -1)
            keep = (ps.cumsum(-1) - ps) < top_p[:, None]  # [B, K, V]
            thr = torch.maximum(thr, srt.masked_fill(~keep, float("inf")).amin(-1, keepdim=True))
        x = x.masked_fill(x < thr, float("-inf"))
    return torch.softmax(x, -1)


def draw(probs: torch.Tensor, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverse-CDF draw: probs [..., V], u [...] in (0, 1) -> (index [...], its probability [...])."""
    cdf = probs.cumsum(-1)
    target = (u.to(cdf.dtype) * cdf[..., -1])[..., None]
    idx = (cdf < target).sum(-1).clamp_max(probs.shape[-1] - 1)
    return idx, probs.gather(-1, idx[..., None]).squeeze(-1)


# ----------------------------------------------------------------------------------------------
# one note


class _NoteSampler:
    """Samples the next row for a batch of pieces from the head's context C."""

    def __init__(self, head, grammar: Grammar, steps: int, temps, top_p, top_k, guidance: float,
                 order: Sequence[int] | None = None, threshold: float = 2.0, plausibility: float = 0.0):
        self.head, self.g, self.steps, self.threshold = head, grammar, steps, threshold
        self.plausibility = plausibility
        dev = grammar.v.device
        # added to the confidence (in [0, 2]) when choosing the slots to reveal: 0 = confidence order;
        # 4 per rank of a fixed order (column indices, first revealed first) = that order, whatever the
        # confidences
        K = grammar.K
        self.priority = torch.zeros(K, device=dev)
        if order is not None:
            self.priority[torch.tensor(order, device=dev)] = torch.arange(K, 0, -1, dtype=torch.float32, device=dev) * 4.0
        self.temps = torch.tensor(temps, dtype=torch.float32, device=dev)
        V = grammar.V
        self.top_k = torch.tensor([int(k) if k > 0 else V for k in top_k], dtype=torch.long, device=dev)
        self.top_p = torch.tensor(top_p, dtype=torch.float32, device=dev)
        self.use_k = any(0 < k < V for k in top_k)
        self.use_p = any(p < 1.0 for p in top_p)
        self.guidance = guidance
        sizes = grammar.tok.vocab_sizes
        offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        idx = offsets[:, None] + np.minimum(np.arange(V)[None, :], np.array(sizes)[:, None] - 1)
        self.pad_index = torch.as_tensor(idx, dtype=torch.long, device=dev)  # [K, V] into the concatenated logits
        self.passes = 0
        self.guard_count = torch.zeros((), dtype=torch.long, device=dev)
        self.control_count = torch.zeros((), dtype=torch.long, device=dev)
        self.conflict_count = torch.zeros((), dtype=torch.long, device=dev)

    def raw_logits(self, C: torch.Tensor, tok: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
        """Padded logits [B, K, V] (-inf outside each vocabulary); with guidance C holds [cond; uncond]."""
        B = tok.shape[0]
        guided = C.shape[0] == 2 * B
        if guided:
            tok, masked = torch.cat([tok, tok]), torch.cat([masked, masked])
        flat = torch.cat(self.head.logits(C, tok, masked), -1).float()  # [B', sum V]
        self.passes += 1
        padded = flat[:, self.pad_index].masked_fill(~self.g.vocab_valid, float("-inf"))  # [B', K, V]
        if guided:
            return guide(padded[:B], padded[B:], self.guidance, self.plausibility)
        return padded

    def _belief(self, raw: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The head's own probability [B, K] of each drawn value: its logits at the temperature, before
        guards, controls and truncation (a value the grammar forces is sure only if the head expected it)."""
        t = torch.where(self.temps > 0, self.temps, torch.ones_like(self.temps))[:, None]
        return torch.softmax(raw / t, -1).gather(-1, y[..., None]).squeeze(-1)

    def _count(self, raw, allowed, ctrl, newly):
        """Add interventions for the newly revealed slots (argmax of the raw logits forbidden)."""
        am = raw.argmax(-1)  # [B, K]
        forbidden = ~allowed.gather(-1, am[..., None]).squeeze(-1) & newly
        by_control = ~ctrl.gather(-1, am[..., None]).squeeze(-1) & (am > 0)
        by_control[:, :2] = False
        self.control_count += (forbidden & by_control).sum()
        self.guard_count += (forbidden & ~by_control).sum()

    def sample(self, C: torch.Tensor, tables: NoteTables, ctrl_static: torch.Tensor, bar: torch.Tensor,
               tok: torch.Tensor, rev: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """One row per piece. tok/rev [B, K]: slots fixed before step 1 (template rows). u [B, 1+S, K]."""
        g = self.g
        B = tok.shape[0]
        tok, rev = tok.clone(), rev.clone()
        ctrl = ctrl_static
        note_forced = None
        if g.metric_first:
            # decide the metric first: it says whether this row is a note and in which bar it lies,
            # which the fixed controls need (they apply to the notes of their bars only)
            zero_ts = torch.zeros(B, dtype=torch.bool, device=tok.device)
            if bool((~rev[:, COL_METRIC]).any()):
                raw = self.raw_logits(C, tok, ~rev)
                allowed = g.allowed(tables, ctrl, tok, rev)
                probs = filter_probs(raw, allowed, self.temps, self.top_k, self.top_p, self.use_k, self.use_p)
                y, _ = draw(probs[:, COL_METRIC], u[:, 0, COL_METRIC])
                newly = torch.zeros_like(rev)
                newly[:, COL_METRIC] = ~rev[:, COL_METRIC]
                self._count(raw, allowed, ctrl, newly)
                tok[:, COL_METRIC] = torch.where(rev[:, COL_METRIC], tok[:, COL_METRIC], y)
                rev[:, COL_METRIC] = True
                # a NEW_BAR_TS row is a note or an empty bar: decided by the position's mass at 0 given
                # the metric just drawn (the logits recomputed with it revealed, not the all-masked ones)
                allowed = g.allowed(tables, ctrl, tok, rev)
                if bool(is_ts_change(tok[:, COL_METRIC]).any()):  # the only rows where p0 is used
                    raw = self.raw_logits(C, tok, ~rev)
                p0 = filter_probs(raw, allowed, self.temps, self.top_k, self.top_p, self.use_k,
                                  self.use_p)[:, COL_POSITION, 0]
                zero_ts = ~rev[:, COL_POSITION] & (u[:, 0, COL_POSITION] < p0)
            m = tok[:, COL_METRIC]
            zero_ts |= rev[:, COL_POSITION] & (tok[:, COL_POSITION] == 0)
            empty = (m == METRIC_EOS) | (m == METRIC_EMPTY_BAR) | (is_ts_change(m) & zero_ts)
            tok[:, 1:] = torch.where(empty[:, None], torch.zeros_like(tok[:, 1:]), tok[:, 1:])
            rev[:, 1:] |= empty[:, None]
            note_forced = ~empty
            ctrl = g.row_controls(bar + g.starts_bar[m.clamp(0, g.Vm - 1)].long())
            fixed = g._fixed_columns(ctrl) & ~rev  # [B, K]
            value = ctrl[..., 1:].float().argmax(-1) + 1
            tok = torch.where(fixed, value, tok)
            rev |= fixed

        masked = ~rev
        for s in range(self.steps):
            if not bool(masked.any()):
                break
            raw = self.raw_logits(C, tok, masked)
            allowed = g.allowed(tables, ctrl, tok, ~masked, note_forced)
            probs = filter_probs(raw, allowed, self.temps, self.top_k, self.top_p, self.use_k, self.use_p)
            y, q = draw(probs, u[:, 1 + s])
            # near-certain slots (drawn value's probability >= the threshold) are revealed now and cost
            # none of the step budget; of the uncertain ones, the most confident go now and each later
            # step keeps one, so the least confident (usually the pitch) is drawn last, given the rest
            sure = torch.zeros_like(masked)  # a threshold above 1 (off): no softmax to compute
            if self.threshold <= 1:
                sure = masked & (self._belief(raw, y) >= self.threshold)
            uncertain = (masked & ~sure).sum(1)  # [B]
            left = self.steps - s
            count = (uncertain - left + 1).clamp_min(1)
            if s == 0:
                # the metric (what the row is: note, new bar, time-signature change, EOS) goes first and
                # wins any conflict: were the position drawn first, a position past the end of the bar
                # would leave a time-signature change as the only grammatical metric. Every other
                # attribute depends on it, so an uncertain metric is revealed alone (with the sure slots)
                open_metric = masked[:, COL_METRIC] & ~sure[:, COL_METRIC]
                q = q.clone()
                q[:, COL_METRIC] = torch.where(masked[:, COL_METRIC], 2.0, q[:, COL_METRIC])
                if left > 1:
                    count = torch.where(open_metric, torch.ones_like(count), count)
            newly = confidence_reveal(q + self.priority, masked & ~sure, count) | sure
            self._count(raw, allowed, ctrl, newly)
            tok = torch.where(newly, y, tok)
            revealed = ~masked | newly
            if bool((newly.sum(1) > 1).any()):  # several slots in one step: they may contradict each other
                ok = g.consistent(tables, ctrl, tok, revealed)
                if not bool(ok.all()):
                    tok = self._resolve(raw, q + self.priority, tables, ctrl, tok, masked, newly, ~ok, u[:, 1 + s],
                                        note_forced)
            masked = masked & ~newly
        return tok

    def _resolve(self, raw, q, tables, ctrl, tok, masked, newly, bad, u, note_forced) -> torch.Tensor:
        """Rows `bad`: accept the newly revealed slots in confidence order, re-drawing any that the
        already accepted ones forbid (same uniform as the first draw)."""
        g = self.g
        idx = bad.nonzero().squeeze(1)
        t, mk, nw = tok[idx].clone(), masked[idx], newly[idx]
        order = q[idx].masked_fill(~nw, -1e9).sort(dim=-1, descending=True, stable=True).indices  # [b, K]
        accepted = ~mk  # revealed before this step
        sub_tables = tables.take(idx)
        sub_ctrl = ctrl[idx] if ctrl.shape[0] == tok.shape[0] else ctrl
        sub_forced = note_forced[idx] if note_forced is not None else None
        rows = torch.arange(len(idx), device=tok.device)
        for r in range(int(nw.sum(1).max())):
            k = order[:, r]
            live = nw[rows, k]
            allowed = g.allowed(sub_tables, sub_ctrl, t, accepted, sub_forced)
            probs = filter_probs(raw[idx], allowed, self.temps, self.top_k, self.top_p, self.use_k, self.use_p)
            y, _ = draw(probs[rows, k], u[idx, k])
            change = live & (y != t[rows, k])
            self.conflict_count += change.sum()
            self.guard_count += change.sum()
            t[rows, k] = torch.where(change, y, t[rows, k])
            accepted = accepted.clone()
            accepted[rows, k] |= live
        out = tok.clone()
        out[idx] = t
        return out


class _ARNoteSampler(_NoteSampler):
    """The autoregressive decoders (flat, nested, parallel): the attributes of a row are drawn one at a
    time in column order, each from its logits given the attributes already drawn (`head.attribute_logits`),
    with the grammar guards and controls applied as an allowed-value mask before each draw (`Grammar.allowed`
    given the decided slots; the controls of the row's bar once the metric is known). Attribute k uses the
    uniform of lane (pass 1, slot k); temperature / top-k / top-p per attribute as for Amadeus."""

    def sample(self, C: torch.Tensor, tables: NoteTables, ctrl_static: torch.Tensor, bar: torch.Tensor,
               tok: torch.Tensor, rev: torch.Tensor, u: torch.Tensor, advance=None) -> torch.Tensor:
        """One row per piece; `advance(tok[:, :k + 1]) -> C` feeds the drawn attributes to a flat backbone."""
        g = self.g
        B, K = tok.shape
        tok, rev = tok.clone(), rev.clone()
        ctrl = ctrl_static
        for k in range(K):
            lg = self.head.attribute_logits(C, torch.cat([tok, tok]) if C.shape[0] == 2 * B else tok, k).float()
            if C.shape[0] == 2 * B:
                lg = guide(lg[:B], lg[B:], self.guidance, self.plausibility)
            self.passes += 1
            raw = lg.new_full((B, 1, g.V), float("-inf"))
            raw[:, 0, : lg.shape[-1]] = lg
            allowed = g.allowed(tables, ctrl, tok, rev)[:, k: k + 1]
            probs = filter_probs(raw, allowed, self.temps[k: k + 1], self.top_k[k: k + 1], self.top_p[k: k + 1],
                                 self.use_k, self.use_p)
            y, _ = draw(probs[:, 0], u[:, 1, k])
            am = lg.argmax(-1)
            forbidden = ~allowed[:, 0].gather(1, am[:, None]).squeeze(1)
            by_control = ~ctrl[:, k].gather(1, am[:, None]).squeeze(1) & (am > 0) & (k >= 2)
            self.control_count += (forbidden & by_control).sum()
            self.guard_count += (forbidden & ~by_control).sum()
            tok[:, k], rev[:, k] = y, True
            if k == COL_METRIC:  # the row's bar is known now: its controls apply
                ctrl = g.row_controls(bar + g.starts_bar[y.clamp(0, g.Vm - 1)].long())
            if advance is not None and k < K - 1:
                C = advance(tok[:, : k + 1])
        return tok


# ----------------------------------------------------------------------------------------------
# prompts


def _as_tokens(x: Any, tokenizer: NoteTokenizer, what: str) -> np.ndarray:
    """A prompt / template as a token matrix starting with SOS, cut before its first EOS."""
    if isinstance(x, (str, Path)) or type(x).__name__.startswith("Score"):
        x = tokenizer.encode(x)
    tok = np.asarray(x, dtype=np.int64)
    if tok.ndim != 2 or tok.shape[1] != tokenizer.K:
        raise ValueError(f"{what} must be a token matrix [N, {tokenizer.K}], got shape {tok.shape}")
    bad = (tok < 0) | (tok >= np.asarray(tokenizer.vocab_sizes))
    if bad.any():
        r, k = map(int, np.argwhere(bad)[0])
        raise ValueError(f"{what}: row {r} attribute {tokenizer.attribute_names[k]} = {tok[r, k]} is outside "
                         f"its vocabulary (size {tokenizer.vocab_sizes[k]})")
    eos = np.nonzero(tok[:, COL_METRIC] == METRIC_EOS)[0]
    if len(eos):
        tok = tok[: eos[0]]
    if len(tok) == 0 or tok[0, COL_METRIC] != METRIC_SOS:
        tok = np.concatenate([tokenizer.sos_row()[None], tok])
    if (tok[1:, COL_METRIC] == METRIC_SOS).any():
        raise ValueError(f"{what}: SOS appears after the first row")
    return tok


def prompt_from_midi(tokenizer: NoteTokenizer, source: Any, bars: int | None = None,
                     notes: int | None = None) -> np.ndarray:
    """The first `bars` bars (or first `notes` rows after SOS) of a MIDI file / Score / token matrix,
    as a prompt (SOS first, no EOS). Both None: the whole piece."""
    tok = _as_tokens(source, tokenizer, f"prompt {source}" if isinstance(source, (str, Path)) else "prompt")
    if bars is not None:
        if bars < 1:
            raise ValueError(f"prompt bars must be >= 1, got {bars}")
        m = tok[:, COL_METRIC]
        starts = np.nonzero((m == METRIC_EMPTY_BAR) | (m == METRIC_NEW_BAR) | (m >= METRIC_TS_OFFSET))[0]
        if len(starts) > bars:
            tok = tok[: starts[bars]]
    if notes is not None:
        if notes < 1:
            raise ValueError(f"prompt notes must be >= 1, got {notes}")
        tok = tok[: 1 + notes]
    return tok


def _prompt_state(tok: np.ndarray, tokenizer: NoteTokenizer) -> tuple[int, int, int, int]:
    """(bars, current time-signature index, last note position in the bar, notes in the bar)."""
    m = tok[:, COL_METRIC]
    starts = (m == METRIC_EMPTY_BAR) | (m == METRIC_NEW_BAR) | (m >= METRIC_TS_OFFSET)
    bars = int(starts.sum())
    if bars == 0:
        return 0, -1, 0, 0
    ts_rows = np.nonzero(m >= METRIC_TS_OFFSET)[0]
    ts = int(m[ts_rows[-1]] - METRIC_TS_OFFSET) if len(ts_rows) else tokenizer.default_ts
    last = int(np.nonzero(starts)[0][-1])
    bar_rows = tok[last:]
    note = bar_rows[:, COL_PITCH] > 0
    pos = int(bar_rows[note, COL_POSITION][-1]) if note.any() else 0
    return bars, ts, pos, int(note.sum())


# ----------------------------------------------------------------------------------------------
# the generation loop


def _parts(model: Any):
    for name in ("backbone", "head", "tokenizer"):
        if not hasattr(model, name):
            raise TypeError(f"generate needs an object with .backbone, .head and .tokenizer (missing .{name})")
    return model.backbone, model.head, model.tokenizer


@torch.inference_mode()
def generate(
    model: Any,
    num: int = 1,
    *,
    options: SamplingOptions | None = None,
    seed: int | Sequence[int] = 0,
    controls: Sequence[str] | Controls | None = None,
    prompt: Any = None,
    text: str | Sequence[str] | None = None,
    prefix: torch.Tensor | None = None,
    prefix_mask: torch.Tensor | None = None,
    template: Any = None,
    regenerate: Sequence[str] = (),
    regenerate_rows: Any = None,
    **settings: Any,
) -> SampleResult:
    """Sample `num` pieces. Returns token matrices (SOS ... EOS) and statistics.

    model: an AmadeusModule, or any object with .backbone (NoteTransformer), .head
        (AttributeDiffusionHead), .tokenizer and, for `text`, .encode_text(captions).
    options: how to sample (`SamplingOptions`: max_notes, max_bars, min_notes, steps, temperature, top_p,
        top_k, guidance, batch_size, use_cache, guards); each of its fields may also be given as a
        keyword here, which replaces that field (any other keyword is a TypeError).
    seed: piece i uses seed + i (or give one seed per piece). controls: see `amadeus.controls`.
    prompt: a token matrix / Score / MIDI path (or one per piece): the output starts with exactly its
        rows (see `prompt_from_midi` for the first N bars). text / prefix (+ prefix_mask): conditioning,
        mixed with the unconditional logits by `options.guidance`.
    template / regenerate / regenerate_rows: see `regenerate` (re-sample chosen attributes of a piece).
    """
    opts = SamplingOptions.build(options, **settings)
    backbone, head, tokenizer = _parts(model)
    if not isinstance(num, int) or num < 1:
        raise ValueError(f"num must be a positive integer, got {num!r}")
    seeds = _seeds(seed, num)
    ctl = parse_controls(controls, tokenizer)
    if opts.guidance != 1.0 and text is None and prefix is None:
        raise ValueError("guidance needs a text or a prefix to guide towards")
    prompts = _prompts(prompt, num, tokenizer)
    max_notes, tmpl = opts.max_notes, None
    decoder = getattr(model, "decoder", "amadeus")
    if template is not None and hasattr(head, "attribute_logits"):
        raise ValueError(f"regenerate is not supported by the {decoder!r} decoder: it draws the attributes "
                         "left to right and cannot condition on the kept attributes that come later; use a "
                         "model trained with decoder='amadeus'")
    if template is not None:
        tmpl = _template(template, tokenizer, regenerate, regenerate_rows)
        prompts = [tokenizer.sos_row()[None]] * num
        max_notes = len(tmpl[0])
    prefix, prefix_mask = _conditioning(model, num, text, prefix, prefix_mask)

    was_training = backbone.training, head.training
    backbone.eval()
    head.eval()
    try:
        result = SampleResult(tokens=[], seeds=seeds, settings=dict(
            num=num, max_notes=max_notes, max_bars=opts.max_bars, min_notes=opts.min_notes,
            steps=opts.steps_for(tokenizer.K), temperature=plain_setting(opts.temperature),
            top_p=plain_setting(opts.top_p), top_k=plain_setting(opts.top_k),
            seed=seed if isinstance(seed, int) else seeds, controls=list(ctl.specs), guidance=opts.guidance,
            plausibility=opts.plausibility, reveal_threshold=opts.reveal_threshold,
            use_cache=opts.use_cache, guards=opts.guards, order=opts.order, decoder=decoder,
            text=text if text is None or isinstance(text, str) else list(text)))
        run = _Run.start(backbone, head, tokenizer, ctl, opts, max_notes, tmpl, result)
        return run.sample(prompts, seeds, prefix, prefix_mask)
    finally:
        backbone.train(was_training[0])
        head.train(was_training[1])


def _seeds(seed: int | Sequence[int], num: int) -> list[int]:
    """One seed per piece: seed + i, or the given list."""
    seeds = [int(seed) + i for i in range(num)] if isinstance(seed, (int, np.integer)) else [int(s) for s in seed]
    if len(seeds) != num:
        raise ValueError(f"got {len(seeds)} seeds for {num} pieces")
    return seeds


def _prompts(prompt: Any, num: int, tokenizer: NoteTokenizer) -> list[np.ndarray]:
    """One prompt token matrix per piece: none (SOS only), one for all, or a list/tuple with one each."""

    def single(x: Any) -> bool:
        return isinstance(x, (str, Path, np.ndarray)) or type(x).__name__.startswith("Score")

    if prompt is None:
        return [tokenizer.sos_row()[None]] * num
    if isinstance(prompt, (list, tuple)) and len(prompt) and single(prompt[0]):
        if len(prompt) != num:
            raise ValueError(f"got {len(prompt)} prompts for {num} pieces")
        return [_as_tokens(p, tokenizer, "prompt") for p in prompt]
    return [_as_tokens(prompt, tokenizer, "prompt")] * num


def _conditioning(model: Any, num: int, text: str | Sequence[str] | None, prefix: torch.Tensor | None,
                  prefix_mask: torch.Tensor | None) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The prefix [num, P, D] (+ mask) to condition on: the encoded captions, or the given prefix."""
    if text is not None:
        if prefix is not None:
            raise ValueError("give text or prefix, not both")
        if getattr(model, "text_encoder", None) is None:
            raise ValueError("this model has no text encoder (trained without text): drop --text")
        captions = [text] * num if isinstance(text, str) else list(text)
        if len(captions) != num:
            raise ValueError(f"got {len(captions)} captions for {num} pieces")
        prefix, prefix_mask = model.encode_text(captions)
    if prefix is not None:
        if prefix.dim() != 3 or prefix.shape[0] not in (1, num):
            raise ValueError(f"prefix must be [num or 1, P, D], got {tuple(prefix.shape)}")
        if prefix.shape[0] == 1:
            prefix = prefix.expand(num, -1, -1)
            prefix_mask = None if prefix_mask is None else prefix_mask.expand(num, -1)
    return prefix, prefix_mask


def _template(template: Any, tokenizer: NoteTokenizer, attributes: Sequence[str], rows: Any):
    """(rows after SOS [T, K], free slots [T, K]) for regeneration."""
    tok = _as_tokens(template, tokenizer, "template")[1:]
    names = tokenizer.attribute_names
    attributes = [attributes] if isinstance(attributes, str) else list(attributes)
    if not attributes:
        raise ValueError(f"regenerate: name the attributes to re-sample (any of {', '.join(REGENERABLE)})")
    bad = [a for a in attributes if a not in REGENERABLE]
    if bad:
        raise ValueError(f"regenerate: cannot re-sample {bad}; choose from {', '.join(REGENERABLE)} "
                         "(metric and position keep the rhythm, and with it the piece's structure)")
    note = tok[:, COL_PITCH] > 0
    chosen = np.ones(len(tok), dtype=bool)
    if rows is not None:
        r = np.asarray(rows)
        chosen = r.astype(bool) if r.dtype == bool else np.isin(np.arange(1, len(tok) + 1), r)
        if len(chosen) != len(tok):
            raise ValueError(f"regenerate_rows: a mask must have one entry per row after SOS ({len(tok)})")
    free = np.zeros(tok.shape, dtype=bool)
    cols = [names.index(a) for a in attributes]
    free[np.ix_(note & chosen, cols)] = True
    return tok, free


@dataclass
class _Run:
    """What the batches of one `generate` call share: the networks, the grammar, the per-note sampler
    (which also counts interventions), the limits, the regeneration template and the result."""

    backbone: Any
    head: Any
    tokenizer: NoteTokenizer
    grammar: Grammar
    sampler: _NoteSampler
    options: SamplingOptions
    max_notes: int  # options.max_notes, or the template's length when regenerating
    template: tuple[torch.Tensor, torch.Tensor] | None  # (rows [T, K], free slots [T, K]) on the device
    result: SampleResult  # filled batch by batch

    @classmethod
    def start(cls, backbone: Any, head: Any, tokenizer: NoteTokenizer, controls: Controls,
              options: SamplingOptions, max_notes: int, template: Any, result: SampleResult) -> _Run:
        """Build the grammar and the note sampler on the backbone's device."""
        dev = next(backbone.parameters()).device
        grammar = Grammar(tokenizer, controls, dev, guards=options.guards)
        temps, tps, tks = options.per_attribute(tokenizer.attribute_names)
        kind = _ARNoteSampler if hasattr(head, "attribute_logits") else _NoteSampler
        sampler = kind(head, grammar, options.steps_for(tokenizer.K), temps, tps, tks,
                       float(options.guidance), options.reveal_order(tokenizer.attribute_names),
                       options.reveal_threshold, options.plausibility)
        if template is not None:
            template = (torch.as_tensor(template[0], device=dev), torch.as_tensor(template[1], device=dev))
        return cls(backbone, head, tokenizer, grammar, sampler, options, max_notes, template, result)

    def sample(self, prompts: list[np.ndarray], seeds: list[int], prefix: torch.Tensor | None,
               prefix_mask: torch.Tensor | None) -> SampleResult:
        """Decode every piece, `batch_size` at a time, into `self.result`."""
        result, sampler = self.result, self.sampler
        dev = self.grammar.v.device
        start = time.perf_counter()
        num = len(prompts)
        bs = self.options.batch_size or num
        for lo in range(0, num, bs):
            hi = min(num, lo + bs)
            pre = None if prefix is None else prefix[lo:hi].to(dev)
            pre_mask = None if prefix_mask is None else prefix_mask[lo:hi].to(dev)
            result.tokens.extend(_Batch(self, prompts[lo:hi], seeds[lo:hi], pre, pre_mask).decode())
        result.seconds = time.perf_counter() - start
        result.guard_interventions = int(sampler.guard_count)
        result.control_interventions = int(sampler.control_count)
        result.conflicts = int(sampler.conflict_count)
        result.head_passes = sampler.passes
        return result


class _Batch:
    """One batch of pieces being decoded, one row per piece per step.

    Layout: `buf` [B, P + max_notes + 1, K] holds the prompts left-padded to a common length P
    (`valid` marks real rows) and then one generated row per step in the same column `col` for every
    piece still running. `ids` are the running pieces; their grammar state, random keys, KV-cache rows
    and conditioning rows (`rid`) are kept compact (finished pieces are dropped from all of them).
    """

    def __init__(self, run: _Run, prompts: list[np.ndarray], seeds: list[int], prefix: torch.Tensor | None,
                 prefix_mask: torch.Tensor | None):
        self.run, self.prompts = run, prompts
        dev = self.dev = run.grammar.v.device
        B, K = len(prompts), run.tokenizer.K
        lens = torch.tensor([len(p) for p in prompts], device=dev)
        self.P = P = int(lens.max())
        self.cap_rows = getattr(run.backbone, "max_rows", run.backbone.cfg.max_notes)
        self.flat = hasattr(run.backbone, "step")  # one backbone step per attribute (the flat decoder)
        if P > self.cap_rows:
            raise ValueError(f"prompt of {P} rows exceeds the model's max_notes={self.cap_rows}")
        total = P + run.max_notes + 1
        self.buf = torch.zeros(B, total, K, dtype=torch.long, device=dev)
        self.valid = torch.zeros(B, total, dtype=torch.bool, device=dev)
        for b, p in enumerate(prompts):
            self.buf[b, P - len(p): P] = torch.as_tensor(p, device=dev)
            self.valid[b, P - len(p): P] = True
        self.state = _initial_state(prompts, run.tokenizer, lens)
        self.keys = piece_keys(seeds, dev)
        self.min_rows = torch.full((B,), int(run.options.min_notes), device=dev)
        self.end = torch.full((B,), total, dtype=torch.long, device=dev)  # column after each piece's last row
        self.guided = run.sampler.guidance != 1.0
        self.pre, self.pre_mask = self._prefix_rows(prefix, prefix_mask)
        self.ids = torch.arange(B, device=dev)  # running pieces (rows of buf)
        self.rid = torch.arange(2 * B if self.guided else B, device=dev)  # their conditioning rows
        self.cache = None
        if run.options.use_cache:
            extra = 0 if self.pre is None else self.pre.shape[1]
            self.cache = run.backbone.new_cache(len(self.rid), capacity=total + extra)
        self.col = P
        self.lanes = lane_keys((1 + run.sampler.steps) * K, dev)
        self.eos_row = torch.as_tensor(run.tokenizer.eos_row(), device=dev)

    def _prefix_rows(self, prefix: torch.Tensor | None, prefix_mask: torch.Tensor | None):
        """Conditioning rows [B(, x2 with guidance: conditional then unconditional = fully masked prefix)]."""
        if prefix is None or not self.guided:
            return prefix, prefix_mask
        real = prefix_mask if prefix_mask is not None else torch.ones(prefix.shape[:2], dtype=torch.bool,
                                                                       device=self.dev)
        return torch.cat([prefix, prefix]), torch.cat([real, torch.zeros_like(real)])

    def _rows2(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, x]) if self.guided else x

    def _conditioning(self) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """The running pieces' conditioning rows (prefix, mask), or None."""
        return (None if self.pre is None else self.pre[self.rid],
                None if self.pre_mask is None else self.pre_mask[self.rid])

    def _latent(self, first: bool) -> torch.Tensor:
        """z [A(x2), d] at the last filled column for the running pieces (the whole prompt if `first`)."""
        backbone, ids, col = self.run.backbone, self.ids, self.col
        if self.cache is not None and not first:
            if self.flat:  # the row's other attributes went in while it was drawn (`_advance`)
                return backbone.step(self._rows2(self.buf[ids, col - 1, -1]), self.buf.shape[-1] - 1, self.cache)
            return backbone(self._rows2(self.buf[ids, col - 1: col]), cache=self.cache).z[:, -1]
        notes, nm = self._rows2(self.buf[ids, :col]), self._rows2(self.valid[ids, :col])
        p, pm = self._conditioning()
        out = backbone(notes, prefix=p, prefix_mask=pm, cache=self.cache,
                       notes_mask=None if bool(nm.all()) else nm)
        return out.z[:, -1]

    def _advance(self, partial: torch.Tensor) -> torch.Tensor:
        """Flat decoder: z [A(x2), d] after the first j attributes `partial` [A, j] of the row being drawn."""
        backbone, ids, col = self.run.backbone, self.ids, self.col
        if self.cache is not None:
            return backbone.step(self._rows2(partial[:, -1]), partial.shape[1] - 1, self.cache)
        notes, nm = self._rows2(self.buf[ids, :col]), self._rows2(self.valid[ids, :col])
        p, pm = self._conditioning()
        return backbone(notes, prefix=p, prefix_mask=pm, notes_mask=None if bool(nm.all()) else nm,
                        partial=self._rows2(partial)).z[:, -1]

    def _fixed_slots(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Slots fixed before the first denoising step (tok, revealed) [A, K]: the template's kept slots."""
        A, K = len(self.ids), self.run.tokenizer.K
        if self.run.template is None:
            return (torch.zeros(A, K, dtype=torch.long, device=self.dev),
                    torch.zeros(A, K, dtype=torch.bool, device=self.dev))
        t_rows, t_free = self.run.template
        j = self.state.n_gen.clamp_max(len(t_rows) - 1)
        rev = ~t_free[j]
        return torch.where(rev, t_rows[j], torch.zeros_like(t_rows[j])), rev

    def _sample_row(self, z: torch.Tensor) -> torch.Tensor:
        """The next row [A, K] of every running piece."""
        run, state = self.run, self.state
        u = uniforms(self.keys, state.n_gen, self.lanes).view(len(self.ids), 1 + run.sampler.steps, -1)
        C = run.head.context(z, *self._conditioning())
        tables = run.grammar.note_tables(state, self.min_rows)
        tok, rev = self._fixed_slots()
        ctrl = run.grammar.ctrl_static.expand(len(self.ids), -1, -1)
        if self.flat:
            return run.sampler.sample(C, tables, ctrl, state.bar, tok, rev, u, advance=self._advance)
        return run.sampler.sample(C, tables, ctrl, state.bar, tok, rev, u)

    def _append(self, row: torch.Tensor) -> torch.Tensor:
        """Write the rows at column `col` and advance the grammar state; returns is_eos [A]."""
        g, state, max_bars = self.run.grammar, self.state, self.run.options.max_bars
        m = row[:, COL_METRIC]
        new_bar = g.starts_bar[m.clamp(0, g.Vm - 1)]
        if max_bars is not None:  # the row that would open bar max_bars + 1 becomes EOS
            over = new_bar & (state.gen_bars >= max_bars)
            row = torch.where(over[:, None], self.eos_row, row)
            m = row[:, COL_METRIC]
            new_bar = new_bar & ~over
        self.buf[self.ids, self.col] = row
        self.valid[self.ids, self.col] = True
        is_note = row[:, COL_PITCH] > 0
        nb = new_bar.long()
        self.state = _State(
            bar=state.bar + nb, gen_bars=state.gen_bars + nb,
            ts=torch.where(m >= METRIC_TS_OFFSET, m - METRIC_TS_OFFSET, state.ts),
            pos=torch.where(is_note, row[:, COL_POSITION], state.pos * (1 - nb)),
            n_in_bar=state.n_in_bar * (1 - nb) + is_note.long(),
            n_gen=state.n_gen + 1, length=state.length + 1)
        is_eos = m == METRIC_EOS
        self.run.result.rows += len(self.ids) - int(is_eos.sum())
        self.run.result.notes += int(is_note.sum())
        self.col += 1
        return is_eos

    def _retire(self, is_eos: torch.Tensor) -> None:
        """Drop the pieces that ended (EOS, max_notes, the model's context) from the running set."""
        st = self.state
        done = is_eos | (st.n_gen >= self.run.max_notes) | (st.length >= self.cap_rows)
        if not bool(done.any()):
            return
        self.end[self.ids[done]] = torch.where(is_eos[done], self.col - 1, self.col)
        keep = (~done).nonzero().squeeze(1)
        keep2 = torch.cat([keep, keep + len(self.ids)]) if self.guided else keep
        self.ids, self.rid, self.keys = self.ids[keep], self.rid[keep2], self.keys[keep]
        self.min_rows, self.state = self.min_rows[keep], st.take(keep)
        if self.cache is not None:
            self.cache.select(keep2)

    def decode(self) -> list[np.ndarray]:
        """Run every piece to its end; returns their token matrices (prompt, generated rows, EOS)."""
        z = self._latent(first=True)
        while len(self.ids):
            self._retire(self._append(self._sample_row(z)))
            if len(self.ids):
                z = self._latent(first=False)
        eos = self.run.tokenizer.eos_row()[None]
        return [np.concatenate([self.buf[b, self.P - len(p): int(self.end[b])].cpu().numpy(), eos])
                for b, p in enumerate(self.prompts)]


def _initial_state(prompts: list[np.ndarray], tokenizer: NoteTokenizer, lens: torch.Tensor) -> _State:
    """The grammar state after each prompt (bars, time signature, last position, notes in the bar)."""
    dev = lens.device
    st = [_prompt_state(p, tokenizer) for p in prompts]
    zeros = torch.zeros(len(prompts), dtype=torch.long, device=dev)
    return _State(bar=torch.tensor([s[0] for s in st], device=dev), gen_bars=zeros.clone(),
                  ts=torch.tensor([s[1] for s in st], device=dev), pos=torch.tensor([s[2] for s in st], device=dev),
                  n_in_bar=torch.tensor([s[3] for s in st], device=dev), n_gen=zeros.clone(), length=lens.clone())


def regenerate(model: Any, piece: Any, attributes: Sequence[str], rows: Any = None, num: int = 1,
               **kwargs: Any) -> SampleResult:
    """Re-sample `attributes` (any of chord, tempo, instrument, pitch, duration, velocity) of the note
    rows of an existing piece (a token matrix, Score or MIDI path), keeping everything else: e.g.
    re-voice velocities or re-orchestrate instruments. rows: None (every note) or the row numbers
    (1 = first row after SOS) / a boolean mask over the rows after SOS. Other options as `generate`."""
    return generate(model, num, template=piece, regenerate=attributes, regenerate_rows=rows, **kwargs)
