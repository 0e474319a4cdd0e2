"""Training-free attribute control: user constraints -> allowed values per attribute, and a checker.

A control is a string ``NAME=VALUE[@bars=A-B]`` (the CLI's ``--control``, the API's ``controls=``):

    instrument=piano,violin      allowed instruments (GM names, common aliases, "drums", or GM program 0-127)
    tempo=96 | tempo=90-110      tempo in bpm (nearest bins of the tokenizer's tempo ladder)
    time_signature=3/4           every bar in 3/4 (must be one of the tokenizer's signatures)
    pitch=48-72 | pitch=C3-C5    pitch range of pitched (non-drum) notes; one value fixes the pitch
    key=D | key=Bm | key=F# major  pitched notes stay in the major / natural-minor scale
    velocity=60-100 | velocity=80  MIDI velocity range (bins whose decoded value lies inside)
    duration=0.5-2               duration range in quarter notes
    chord=C,G,Am,F               chord label of the notes of each bar, cycling (N = no chord); this fixes the
                                 chord column the model conditions on, the notes follow what it learned
    density=4-8 | density=6      notes per bar (every complete bar)

Semantics used by `amadeus.sampling`: a control restricts **note rows only** (EOS and empty-bar rows
keep their zeros). An attribute left with exactly one allowed value is *fixed*: the sampler places
it as a revealed slot before the first denoising step (after the note's metric slot, which decides
whether the row is a note at all), excludes it from the confidence ranking and never re-samples it;
the other constraints are allowed sets that mask logits. Time signature and density act on the
metric slot through the grammar guards. `violations` checks a generated token matrix against the
controls, so "100 % of notes obey" is something tests and notebooks can measure.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from amadeus.grammar import cut_at_eos, is_bar_start, is_ts_change, note_rows
from amadeus.theory import (
    CHORD_QUALITIES,
    CHORD_SUFFIXES,
    DRUM_PROGRAM,
    MAJOR_SCALE,
    MINOR_SCALE,
    chord_quality,
    instrument_program,
    parse_key,
    parse_pitch_name,
    split_chord,
)
from amadeus.tokenizer import (
    CHORD_NONE,
    COL_CHORD,
    COL_DURATION,
    COL_INSTRUMENT,
    COL_METRIC,
    COL_PITCH,
    COL_TEMPO,
    COL_VELOCITY,
    DRUM_INSTRUMENT,
    METRIC_TS_OFFSET,
    NoteTokenizer,
)


class ControlError(ValueError):
    """A control string that cannot be honoured; the message names the control and the problem."""


ATTRIBUTE_OF = {  # control name -> token column it restricts
    "instrument": COL_INSTRUMENT, "tempo": COL_TEMPO, "pitch": COL_PITCH, "key": COL_PITCH,
    "velocity": COL_VELOCITY, "duration": COL_DURATION, "chord": COL_CHORD,
}
CONTROL_NAMES = ("instrument", "tempo", "time_signature", "pitch", "key", "velocity", "duration", "chord",
                 "density")
_NAME_ALIASES = {"instruments": "instrument", "program": "instrument", "programs": "instrument",
                 "bpm": "tempo", "ts": "time_signature", "timesig": "time_signature", "meter": "time_signature",
                 "time-signature": "time_signature", "timesignature": "time_signature", "range": "pitch",
                 "chords": "chord", "vel": "velocity", "dynamics": "velocity", "notes_per_bar": "density"}


def instrument_value(name: str) -> int:
    """Instrument column value (1 + GM program, or DRUM_INSTRUMENT) of a name, alias or program number."""
    try:
        program = instrument_program(name)
    except ValueError as e:
        raise ControlError(str(e)) from None
    return DRUM_INSTRUMENT if program == DRUM_PROGRAM else 1 + program


def pitch_value(text: str) -> int:
    """MIDI pitch of "60", "C4" (= 60), "F#3", "Bb5"."""
    t = text.strip()
    if re.fullmatch(r"-?\d+", t):
        p = int(t)
    else:
        p = parse_pitch_name(t)
        if p is None:
            raise ControlError(f"pitch {text!r}: expected a MIDI number 0-127 or a note name like C4, F#3, Bb5")
    if not 0 <= p <= 127:
        raise ControlError(f"pitch {text!r} is outside MIDI 0-127")
    return p


def chord_value(text: str) -> int:
    """Chord column value of "C", "Am", "G7", "F#m7b5", "Bbmaj7", "C/E" (the bass is not kept), or
    "N"/"none" (no chord). A lower-case root is read as upper case ("am" is Am)."""
    t = text.strip()
    if t.lower() in ("n", "none", "nc", "n.c."):
        return CHORD_NONE
    parts = split_chord(t[:1].upper() + t[1:])
    if parts is None:
        raise ControlError(f"chord {text!r}: expected a root note like C, F#, Bb and a suffix like m, 7, maj7")
    root, suffix, _ = parts
    quality = chord_quality(suffix)
    if quality not in CHORD_QUALITIES:
        raise ControlError(f"chord {text!r}: unknown quality {suffix!r} (known: "
                           + ", ".join(repr(s) for s in CHORD_SUFFIXES.values()) + ")")
    return 2 + root * len(CHORD_QUALITIES) + CHORD_QUALITIES.index(quality)


def key_pitch_classes(text: str) -> tuple[int, ...]:
    """Pitch classes of a key: "C", "C major", "Am", "A minor", "F#m"."""
    key = parse_key(text)
    if key is None:
        raise ControlError(f"key {text!r}: expected a root note like C, F#, Bb, then an optional mode "
                           "(e.g. C, C major, Am, A minor)")
    tonic, mode = key
    scale = MAJOR_SCALE if mode == "major" else MINOR_SCALE
    return tuple(sorted((tonic + i) % 12 for i in scale))


def _range(text: str, parse, what: str) -> tuple[Any, Any]:
    """"lo-hi" or a single value -> (lo, hi) using `parse` for each end (note names may contain '-1')."""
    t = text.strip()
    m = re.fullmatch(r"(.+?)\s*(?:-|\.\.|to)\s*(.+)", t)
    if m and not re.fullmatch(r"-?\d+(\.\d+)?", t):
        lo, hi = parse(m.group(1)), parse(m.group(2))
    else:
        lo = hi = parse(t)
    if lo > hi:
        raise ControlError(f"{what} range {text!r}: the low end is above the high end")
    return lo, hi


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ControlError(f"{text!r} is not a number") from None


# --------------------------------------------------------------------------------------- the controls

@dataclass
class Rule:
    """Allowed non-zero values of one attribute, for notes of bars lo..hi (1-based, inclusive; None = all)."""

    column: int
    allowed: np.ndarray  # bool [V_column]; index 0 is False (0 belongs to non-note rows)
    bars: tuple[int, int] | None
    text: str


@dataclass
class Controls:
    """Parsed controls. Build with `parse_controls`; the sampler reads the fields, tests read `violations`."""

    rules: list[Rule] = field(default_factory=list)
    chords: tuple[int, ...] = ()  # chord column value per bar, cycling from `chord_start`
    chord_start: int = 1
    chord_bars: tuple[int, int] | None = None
    time_signature: int | None = None  # index into tokenizer.config.time_signatures
    density: tuple[int, int] | None = None  # notes per complete bar
    specs: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.rules or self.chords or self.time_signature is not None or self.density)

    def scoped(self) -> bool:
        """True when some constraint depends on the bar (then the sampler decides the metric slot first)."""
        return bool(self.chords) or any(r.bars is not None for r in self.rules)

    def static_masks(self, vocab_sizes: Sequence[int]) -> np.ndarray:
        """Allowed values of note rows under the unscoped rules: bool [K, max V] (column 0 all True;
        padding beyond a vocabulary False; index 0 False for columns 1..K-1). The pitch column holds
        the rule for pitched (non-drum) notes; the sampler's `Grammar` adds the scoped rules per bar."""
        K, V = len(vocab_sizes), max(vocab_sizes)
        mask = np.zeros((K, V), dtype=bool)
        for k, v in enumerate(vocab_sizes):
            mask[k, 1 if k else 0 : v] = True
        for r in self.rules:
            if r.bars is None:
                mask[r.column, : len(r.allowed)] &= r.allowed
        return mask

    def chord_for_bar(self, bar: int) -> int | None:
        """Chord column value the progression assigns to bar `bar` (1-based), or None."""
        if not self.chords or bar < self.chord_start:
            return None
        if self.chord_bars is not None and not self.chord_bars[0] <= bar <= self.chord_bars[1]:
            return None
        return self.chords[(bar - self.chord_start) % len(self.chords)]


def parse_controls(specs: Sequence[str] | Controls | None, tokenizer: NoteTokenizer) -> Controls:
    """Parse ``NAME=VALUE[@bars=A-B]`` strings (see the module docstring); ControlError on bad input."""
    if isinstance(specs, Controls):
        return specs
    out = Controls(specs=tuple(specs or ()))
    for spec in specs or ():
        if not isinstance(spec, str) or "=" not in spec:
            raise ControlError(f"control {spec!r}: expected NAME=VALUE, e.g. instrument=piano,violin")
        body, _, scope = spec.partition("@")
        name, _, value = body.partition("=")
        name, value = name.strip().lower(), value.strip()
        name = _NAME_ALIASES.get(name, name)
        if name not in CONTROL_NAMES:
            close = difflib.get_close_matches(name, CONTROL_NAMES, n=1)
            raise ControlError(f"control {spec!r}: unknown attribute {name!r}"
                               + (f" (did you mean {close[0]}?)" if close else "")
                               + f"; known: {', '.join(CONTROL_NAMES)}")
        if not value:
            raise ControlError(f"control {spec!r}: empty value")
        bars = _parse_scope(scope, spec) if scope else None
        try:
            if name == "time_signature":
                if bars is not None:
                    raise ControlError("time_signature applies to the whole piece (no @bars scope)")
                out.time_signature = _time_signature(value, tokenizer)
            elif name == "density":
                if bars is not None:
                    raise ControlError("density applies to the whole piece (no @bars scope)")
                lo, hi = _range(value, lambda s: int(_number(s)), "density")
                if lo < 0 or hi < 1:
                    raise ControlError(f"density {value!r}: notes per bar must be >= 0 and the maximum >= 1")
                out.density = (int(lo), int(hi))
            elif name == "chord":
                out.chords = tuple(chord_value(c) for c in value.split(",") if c.strip())
                out.chord_start = bars[0] if bars else 1
                out.chord_bars = bars
            else:
                out.rules.append(Rule(ATTRIBUTE_OF[name], _rule_values(name, value, tokenizer), bars, spec))
        except ControlError as e:
            msg = str(e)
            raise ControlError(msg if spec in msg else f"control {spec!r}: {msg}") from None
    _check_satisfiable(out, tokenizer)
    return out


def _rule_values(name: str, value: str, tokenizer: NoteTokenizer) -> np.ndarray:
    """Allowed values (bool [V of the attribute's column]) of an instrument / tempo / pitch / key /
    velocity / duration control; ControlError when none is left."""
    sizes, cfg = tokenizer.vocab_sizes, tokenizer.config
    allowed = np.zeros(sizes[ATTRIBUTE_OF[name]], dtype=bool)
    if name == "instrument":
        for item in value.split(","):
            if item.strip():
                allowed[instrument_value(item)] = True
    elif name == "tempo":
        lo, hi = _range(value, _number, "tempo")
        if lo < cfg.tempo_min or hi > cfg.tempo_max:
            raise ControlError(f"tempo {value}: outside the tokenizer's range "
                               f"{cfg.tempo_min:g}-{cfg.tempo_max:g} bpm")
        a, b = cfg.tempo_index(np.array([lo, hi]))
        allowed[1 + a : 2 + b] = True
    elif name == "pitch":
        lo, hi = _range(value, pitch_value, "pitch")
        allowed[1 + lo : 2 + hi] = True
    elif name == "key":
        pcs = key_pitch_classes(value)
        p = np.arange(128)
        allowed[1:] = np.isin(p % 12, pcs)
    elif name == "velocity":
        lo, hi = _range(value, lambda s: int(_number(s)), "velocity")
        if lo < 1 or hi > 127:
            raise ControlError(f"velocity {value}: MIDI velocities are 1-127")
        vals = cfg.velocity_values()
        if lo == hi:  # one velocity: its bin (decodes to the bin centre)
            allowed[1 + cfg.velocity_index(np.array([lo]))[0]] = True
        else:
            inside = (vals >= lo) & (vals <= hi)
            if not inside.any():
                raise ControlError(f"velocity {value}: no velocity bin decodes inside this range "
                                   f"(bin centres: {vals.tolist()})")
            allowed[1:] = inside
    elif name == "duration":
        lo, hi = _range(value, _number, "duration")
        if lo <= 0:
            raise ControlError(f"duration {value}: durations are positive (in quarter notes)")
        q = tokenizer.config.duration_values() / cfg.resolution
        inside = (q >= lo - 1e-9) & (q <= hi + 1e-9)
        if lo == hi:
            inside = np.zeros_like(inside)
            inside[int(np.argmin(np.abs(q - lo)))] = True
        if not inside.any():
            raise ControlError(f"duration {value}: no duration bin inside this range")
        allowed[1:] = inside
    if not allowed.any():
        raise ControlError("no value allowed")
    return allowed


def _parse_scope(scope: str, spec: str) -> tuple[int, int]:
    m = re.fullmatch(r"\s*(?:bars?\s*=?\s*)?(\d+)(?:\s*-\s*(\d+))?\s*", scope)
    if not m:
        raise ControlError(f"control {spec!r}: scope must look like @bars=3-6 or @bars=2")
    lo = int(m.group(1))
    hi = int(m.group(2)) if m.group(2) else lo
    if lo < 1 or hi < lo:
        raise ControlError(f"control {spec!r}: bars are numbered from 1 and the range must not be empty")
    return lo, hi


def _time_signature(value: str, tokenizer: NoteTokenizer) -> int:
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", value)
    if not m:
        raise ControlError(f"time signature {value!r}: expected n/d such as 3/4 or 6/8")
    n, d = int(m.group(1)), int(m.group(2))
    sigs = tokenizer.config.time_signatures
    if (n, d) not in sigs:
        why = ("the denominator must be 1, 2, 4, 8 or 16" if d not in (1, 2, 4, 8, 16) or n < 1 else
               f"bars longer than {tokenizer.config.max_bar_quarters} quarters are not supported")
        raise ControlError(f"impossible time signature {n}/{d}: {why}")
    return sigs.index((n, d))


def _check_satisfiable(c: Controls, tokenizer: NoteTokenizer) -> None:
    """Reject combinations no note can satisfy (e.g. only drums allowed and a key: fine; empty sets: not)."""
    mask = c.static_masks(tokenizer.vocab_sizes)
    inst = mask[COL_INSTRUMENT]
    if not inst[1:].any():
        raise ControlError("the instrument controls leave no instrument allowed")
    pitched = inst[1:DRUM_INSTRUMENT].any()
    if pitched and not mask[COL_PITCH, 1:].any():
        raise ControlError("the pitch/key controls leave no pitch allowed")
    for col in (COL_TEMPO, COL_VELOCITY, COL_DURATION):
        if not mask[col, 1:].any():
            raise ControlError(f"the {tokenizer.attribute_names[col]} controls contradict each other")
    if c.density and c.density[0] > c.density[1]:
        raise ControlError("density: the minimum is above the maximum")


# --------------------------------------------------------------------------------------- checking

def violations(controls: Controls, tokenizer: NoteTokenizer, tokens: np.ndarray,
               start_row: int = 0) -> dict[str, int]:
    """Count note rows of `tokens` (from `start_row`, e.g. after a prompt) that break each control.

    Keys: the control specs (plus "time_signature"/"density" entries). Density counts complete bars
    only (the bar cut by EOS or the length limit is not complete) and reports bars, not notes.
    """
    tok = cut_at_eos(np.asarray(tokens, dtype=np.int64))
    m = tok[:, COL_METRIC]
    bar = np.cumsum(is_bar_start(m))  # 1-based bar of each row (0 before the first bar)
    note = note_rows(tok)
    rows = np.arange(len(tok))
    scope_rows = rows >= start_row
    out: dict[str, int] = {}
    drums = tok[:, COL_INSTRUMENT] == DRUM_INSTRUMENT
    for r in controls.rules:
        sel = note & scope_rows
        if r.bars is not None:
            sel &= (bar >= r.bars[0]) & (bar <= r.bars[1])
        if r.column == COL_PITCH:
            sel &= ~drums
        vals = tok[sel, r.column]
        ok = (vals < len(r.allowed)) & r.allowed[np.clip(vals, 0, len(r.allowed) - 1)]
        out[r.text] = out.get(r.text, 0) + int((~ok).sum())
    if controls.chords:
        sel = note & scope_rows
        want = np.array([controls.chord_for_bar(int(b)) or -1 for b in bar[sel]], dtype=np.int64)
        has = want >= 0
        out["chord"] = int((tok[sel, COL_CHORD][has] != want[has]).sum())
    if controls.time_signature is not None:
        ts_rows = scope_rows & is_ts_change(m)
        out["time_signature"] = int((m[ts_rows] - METRIC_TS_OFFSET != controls.time_signature).sum())
    if controls.density is not None:
        lo, hi = controls.density
        counts = np.bincount(bar[note], minlength=int(bar.max(initial=0)) + 1)[1:]
        first_bar = int(bar[start_row]) if start_row < len(bar) else len(counts)
        complete = counts[first_bar: max(first_bar, len(counts) - 1)]  # the last bar may be cut
        out["density"] = int(((complete < lo) | (complete > hi)).sum())
    return out
