"""How the sampler samples: `SamplingOptions`, its defaults, and the one rule for per-attribute settings.

torch-free on purpose: the commands (and the studio) build and validate their settings here before any
model is loaded, and `amadeus corpus` / `amadeus preprocess` share the command layer without importing
torch.

Per-attribute settings (temperature, top_p, top_k) follow one rule, whoever gives them (the API's
keywords, `amadeus generate`'s repeated flags, the studio's sliders): a number sets every attribute; a
mapping changes the attributes it names and keeps the defaults' values for the others, and its "*" entry
sets every attribute that has no value of its own (neither in the mapping nor in the defaults). Flags
repeated on a command line apply left to right (`merge_setting`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import Any, Iterator, Mapping, Sequence

from amadeus.grammar import ATTRIBUTES

# Fixed reveal orders (SamplingOptions.order): the slots a denoising step reveals are the next masked
# ones of the order, whatever the confidences. "columns": the token columns' order. "harmony": what a
# note is (metric, position), who plays it and over which chord, before its pitch, so that the pitch
# is drawn knowing the chord and the voice.
REVEAL_ORDERS = {
    "columns": ATTRIBUTES,
    "harmony": ("metric", "position", "instrument", "chord", "tempo", "velocity", "pitch", "duration"),
}

MAX_ONSET_NOTES = 16
"""SamplingOptions.max_onset_notes: above the most notes any embedded corpus starts at one onset (Bach: 15,
before unisons merged; folk songs: 5), far below the 20 to 130 of the pieces an undertrained model piled up."""

DECODE_MODES = ("auto", "eager", "static", "compile")
"""SamplingOptions.decode: how the loop runs the work of a note (amadeus.sampling.batch)."""

DEFAULT_STEPS = 3
"""Denoising steps per note when none are asked for (SamplingOptions.steps = None). Chosen on the 23
validation chorales: the best mean OA with no degenerate piece of S = 2, 3, 4 in either order
(docs/results.md#step-count-and-reveal-order)."""

DEFAULT_ORDER = "columns"
"""SamplingOptions.order when none is asked for: the slots a step reveals follow the token columns
(metric, position, chord, ..., pitch, duration), not the head's confidence: 0.784 against 0.633 mean OA
at S=3 on the validation chorales (docs/results.md#step-count-and-reveal-order)."""

PLAUSIBILITY = 0.1
"""SamplingOptions.plausibility: guidance may only re-weight values with at least this share of the
conditional model's top probability among the values the grammar and the controls allow (the adaptive
plausibility constraint of contrastive decoding). Kept on validation: plain guidance (0) at G = 2 wrote 4 of
96 folk pieces in a metre no prompt asked for (docs/results.md#choosing-the-guidance)."""

TEXT_GUIDANCE = 2.0
"""The guidance scale used with a caption when none is asked for (SamplingOptions.guidance = None);
without a caption the sampler is the plain model (guidance 1). Chosen on the captions of 96 validation
folk tunes: the best sum of CK, CTS, TBT and CS of G = 1, 1.5, 2, 3 (docs/results.md#choosing-the-guidance)."""


class PerAttribute(Mapping[str, float]):
    """An immutable, hashable {attribute: value} sampler setting ("*": every attribute it does not name),
    so that a per-attribute default can be the default of the frozen SamplingOptions."""

    __slots__ = ("_values",)

    def __init__(self, values: Mapping[str, float]) -> None:
        self._values = dict(values)

    def __getitem__(self, key: str) -> float:
        return self._values[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __hash__(self) -> int:
        return hash(tuple(sorted(self._values.items())))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Mapping) and dict(self._values) == dict(other)

    def __repr__(self) -> str:
        return f"PerAttribute({self._values!r})"


# The pitch and the chord truncated, the rhythm attributes nearly free: chosen on held-out chorales; checked
# again on the validation chorales against pitch temperature 0.9 and 1 (docs/results.md#step-count-and-reveal-order).
DEFAULT_TEMPERATURE = PerAttribute({"pitch": 0.8, "*": 1.0})
DEFAULT_TOP_P = PerAttribute({"pitch": 0.85, "chord": 0.7, "*": 0.95})
DEFAULT_TOP_K = 0
PER_ATTRIBUTE = ("temperature", "top_p", "top_k")  # the settings `merge_setting` applies to


def merge_setting(base: float | Mapping[str, float], value: float | Mapping[str, float] | None
                  ) -> float | PerAttribute:
    """`value` over `base` by the package's one rule (module docstring): None keeps `base`; a number
    replaces it; a mapping replaces the attributes it names ("*" and "default" both name the others)."""
    if value is None:
        return base
    if not isinstance(value, Mapping):
        return value
    named = {("*" if k == "default" else k): v for k, v in value.items()}
    if isinstance(base, Mapping):
        start = dict(base)
    else:  # a number set every attribute: say so per attribute, so that no default can creep back
        start = {a: base for a in ATTRIBUTES} | {"*": base}
    return PerAttribute({**start, **named})


def per_attribute(value: float | Mapping[str, float], default: float, names: Sequence[str],
                  what: str) -> list[float]:
    """A number or {attribute: value} -> one value per attribute of `names` (`default` for an attribute
    the mapping does not give and that has no "*")."""
    if isinstance(value, Mapping):
        unknown = sorted(set(value) - set(names) - {"*", "default"})
        if unknown:
            raise ValueError(f"{what}: unknown attributes {unknown}; known: {', '.join(names)}")
        other = float(value.get("*", value.get("default", default)))
        return [float(value.get(n, other)) for n in names]
    return [float(value)] * len(names)


def setting_text(value: float | Mapping[str, float], sep: str = " ") -> str:
    """A sampler setting as a command line writes it: "0.9", or "pitch=0.85 chord=0.7 *=0.95" (`sep`
    between the attributes: " " for `amadeus generate`'s help, "/" for benchmarks/quality.py's lists).
    Attributes that only repeat the "*" value are left out."""
    if isinstance(value, Mapping):
        other = value.get("*")
        items = [(k, v) for k, v in value.items() if k == "*" or other is None or v != other]
        items.sort(key=lambda kv: kv[0] == "*")  # "*" last
        return sep.join(f"{k}={v:g}" for k, v in items)
    return f"{value:g}"


def plain_setting(value: Any) -> Any:
    """A setting as JSON can hold it (a mapping becomes a dict)."""
    return dict(value) if isinstance(value, Mapping) else value


def _check_truncation(temps: list[float], top_p: list[float], top_k: list[float]) -> None:
    if any(not math.isfinite(t) or t < 0 for t in temps):
        raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temps}")
    if any(not 0.0 < p <= 1.0 for p in top_p):
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if any(k < 0 or k != int(k) for k in top_k):
        raise ValueError(f"top_k must be a whole number >= 0 (0 = off), got {top_k}")


@dataclass(frozen=True)
class SamplingOptions:
    """How `generate` samples: every setting that is not an input (inputs: number of pieces, seeds,
    controls, prompt, text / prefix, template). Validated on construction (a ValueError names the
    setting); change one with `dataclasses.replace(options, steps=2)` or by passing it as a keyword to
    `generate`. temperature, top_p and top_k take a number or {attribute: value}, merged over the
    defaults by `merge_setting` (module docstring).
    """

    max_notes: int = 1024
    """At most this many generated rows per piece (prompt excluded)."""
    max_bars: int | None = None
    """At most this many generated bars per piece: the row that would open the next one becomes EOS."""
    min_notes: int = 0
    """EOS is forbidden before this many generated rows."""
    max_onset_notes: int | None = MAX_ONSET_NOTES
    """At most this many notes start at one onset (one note row and the SAME_ONSET rows after it); None: no
    limit. A safety net for a model stuck on one chord; raise it for music denser than the embedded corpora."""
    steps: int | None = None
    """Denoising steps per note (head passes at most), 1..K (the number of attributes); None: DEFAULT_STEPS."""
    temperature: float | Mapping[str, float] = DEFAULT_TEMPERATURE
    """Logit temperature, global or per attribute; 0 = greedy. Default: pitch 0.8, the others 1."""
    top_p: float | Mapping[str, float] = DEFAULT_TOP_P
    """Nucleus threshold in (0, 1] over the grammatical values, global or per attribute; 1 = off. Default:
    pitch 0.85, chord 0.7, the others 0.95: harmony truncated, rhythm left free."""
    top_k: int | Mapping[str, int] = DEFAULT_TOP_K
    """Keep the k most likely values, global or per attribute; 0 = off."""
    guidance: float | None = None
    """Classifier-free guidance g: logits l_u + g (l_c - l_u); 1 = the conditional model alone. None: the
    default, TEXT_GUIDANCE with a caption (or prefix) and 1 without (`guidance_for`)."""
    plausibility: float = PLAUSIBILITY
    """Guidance re-weights only the values the conditional model finds plausible: those with at least
    this share of its most likely value's probability; the others keep their conditional logits, ranked
    below every plausible value (see `amadeus.sampling.step.guide`). 0 = plain guidance over every value."""
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
    the slowest. > 1 = off."""
    decode: str = "auto"
    """How the loop runs the work of a note; the notes are the same whichever (up to float rounding, as for
    batch_size). "eager": op by op, and the host looks at the device wherever that saves work (a pass once
    every slot is revealed, finished pieces dropped from the batch). "static": fixed shapes, the same work
    every note (the KV cache preallocated, finished pieces kept in the batch and masked) and the host looks
    at the device once per two notes; on CUDA each note is captured once as a CUDA graph and replayed.
    "compile": "static" with the note compiled by torch.compile first (fused kernels; compiling takes
    minutes). "auto": "static" on CUDA, "eager" on the CPU (faster there: docs/decoders.md, "Decoding on the device"). "static" and
    "compile" need use_cache."""

    def __post_init__(self) -> None:
        for name in PER_ATTRIBUTE:
            value = getattr(self, name)
            if isinstance(value, Mapping):
                default = next(f.default for f in fields(self) if f.name == name)
                object.__setattr__(self, name, merge_setting(default, value))
        K = len(ATTRIBUTES)
        if not 0 <= self.plausibility < 1:
            raise ValueError(f"plausibility must be in [0, 1) (0 = off), got {self.plausibility!r}")
        if not self.reveal_threshold > 0:
            raise ValueError(f"reveal_threshold must be > 0 (> 1 = off), got {self.reveal_threshold!r}")
        if self.steps is not None and (isinstance(self.steps, bool) or not isinstance(self.steps, int)
                                       or not 1 <= self.steps <= K):
            raise ValueError(f"steps must be an integer in 1..{K} (the number of attributes), got {self.steps!r}")
        if self.guidance is not None and (not math.isfinite(self.guidance) or self.guidance < 0):
            raise ValueError(f"guidance must be a number >= 0 (1 = the conditional model alone), got {self.guidance!r}")
        if self.max_notes < 1:
            raise ValueError(f"max_notes must be >= 1, got {self.max_notes}")
        if self.max_bars is not None and self.max_bars < 1:
            raise ValueError(f"max_bars must be >= 1, got {self.max_bars}")
        if self.min_notes < 0:
            raise ValueError(f"min_notes must be >= 0, got {self.min_notes}")
        if self.max_onset_notes is not None and self.max_onset_notes < 1:
            raise ValueError(f"max_onset_notes must be >= 1 (None: no limit), got {self.max_onset_notes}")
        self.reveal_order(ATTRIBUTES)  # raises for an unknown order
        if self.decode not in DECODE_MODES:
            raise ValueError(f"decode must be one of {', '.join(DECODE_MODES)}, got {self.decode!r}")
        if self.decode in ("static", "compile") and not self.use_cache:
            raise ValueError(f"decode={self.decode!r} needs use_cache (the static KV cache); use decode='eager'")
        if self.batch_size is not None and self.batch_size < 0:
            raise ValueError(f"batch_size must be >= 0 (0 or None: all pieces at once), got {self.batch_size}")
        _check_truncation(*self.per_attribute(ATTRIBUTES))

    def reveal_order(self, names: Sequence[str]) -> tuple[int, ...] | None:
        """Column indices in reveal order for attributes `names`; None for confidence order."""
        if self.order == "confidence":
            return None
        order = REVEAL_ORDERS.get(self.order) or tuple(a.strip() for a in self.order.split(","))
        if sorted(order) != sorted(names):
            raise ValueError(f"order must be 'confidence', one of {', '.join(REVEAL_ORDERS)} or a comma-separated "
                             f"list of every attribute ({', '.join(names)}) once, got {self.order!r}")
        return tuple(list(names).index(a) for a in order)

    def decode_for(self, device_type: str) -> str:
        """The decode mode to run on a device of this type ("cuda", "cpu", ...): `decode`, "auto" resolved."""
        if self.decode != "auto":
            return self.decode
        return "static" if device_type == "cuda" and self.use_cache else "eager"

    def steps_for(self, K: int) -> int:
        """Denoising steps per note for K attributes (None resolved to DEFAULT_STEPS, at most K)."""
        return min(K, DEFAULT_STEPS) if self.steps is None else self.steps

    def guidance_for(self, conditioned: bool) -> float:
        """The guidance scale to sample with: the one asked for, else TEXT_GUIDANCE with a caption (or
        prefix) and 1 without. An explicit scale other than 1 without a caption is a ValueError."""
        if self.guidance is None:
            return TEXT_GUIDANCE if conditioned else 1.0
        if self.guidance != 1.0 and not conditioned:
            raise ValueError("guidance needs a text or a prefix to guide towards")
        return float(self.guidance)

    def per_attribute(self, names: Sequence[str]) -> tuple[list[float], list[float], list[float]]:
        """(temperatures, top-p, top-k), one value per attribute in `names`."""
        return (per_attribute(self.temperature, 1.0, names, "temperature"),
                per_attribute(self.top_p, 1.0, names, "top_p"),
                per_attribute(self.top_k, 0, names, "top_k"))

    def as_dict(self) -> dict[str, Any]:
        """The settings as JSON can hold them."""
        return {f.name: plain_setting(getattr(self, f.name)) for f in fields(self)}

    @classmethod
    def build(cls, options: SamplingOptions | None = None, **overrides: Any) -> SamplingOptions:
        """`options` (default: the defaults) with the settings in `overrides` replaced; a keyword that is
        not a setting is a TypeError naming it."""
        if options is not None and not isinstance(options, SamplingOptions):
            raise TypeError(f"options must be a SamplingOptions, got {type(options).__name__}")
        names = [f.name for f in fields(cls)]
        unknown = sorted(set(overrides) - set(names))
        if unknown:
            raise TypeError(f"unexpected keyword arguments {unknown}; sampling settings: {', '.join(names)}")
        base = options if options is not None else cls()
        return replace(base, **overrides) if overrides else base
