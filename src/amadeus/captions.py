"""MidiCaps-style captions: made from features (corpora without text) or read from caption files.

`make_caption(features)` always states the key, time signature, tempo, instruments and main chords;
the sentence template and the mood word vary with a seed (by default a hash of the features, so the
same piece always gets the same caption). `load_captions(path)` reads MidiCaps files (a JSON list,
JSON lines, or a {location: caption} object) into a dict keyed by `location` that also answers to a
file name or stem.
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path
from typing import Any

from amadeus.features import tempo_word

NUMBER_WORDS = ("no", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
                "eleven", "twelve")

TEMPLATES = (
    "{A_mood} {noun} {ensemble} in {key}, {ts}, at {bpm} bpm, built on {chords}.",
    "This {mood} {noun} in {key} is played {ensemble_by}. It is in {ts} time at {a_word} tempo of {bpm} bpm, "
    "and its main chords are {chords}.",
    "Set in {key} and moving at {bpm} bpm ({word}), this {mood} {noun} {ensemble} keeps a {ts} meter and "
    "revolves around {chords}.",
    "A {noun} in {ts} time {ensemble}, in the key of {key} at {bpm} beats per minute ({word}); the harmony "
    "centres on {chords}.",
    "{Ensemble} play {a_mood} {noun} in {key}. The time signature is {ts}, the tempo {bpm} bpm, and the chord "
    "progression is {chords}.",
)

MOODS = {  # (slow, moderate, fast) x mode
    ("slow", "major"): ("calm", "gentle", "serene"),
    ("slow", "minor"): ("solemn", "sombre", "mournful"),
    ("moderate", "major"): ("warm", "graceful", "bright"),
    ("moderate", "minor"): ("wistful", "earnest", "melancholic"),
    ("fast", "major"): ("lively", "joyful", "energetic"),
    ("fast", "minor"): ("urgent", "restless", "dramatic"),
}


def _rng(features: dict[str, Any], rng: int | random.Random | None) -> random.Random:
    if isinstance(rng, random.Random):
        return rng
    if rng is None:  # deterministic per piece
        blob = json.dumps(features, sort_keys=True, default=str).encode()
        rng = int.from_bytes(hashlib.sha256(blob).digest()[:8], "little")
    return random.Random(rng)


def _join(items: list[str]) -> str:
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def _instrument_words(features: dict[str, Any]) -> tuple[str, str, str]:
    """(ensemble phrase after a noun: 'for four voices on piano', 'played by ...' form, subject form)."""
    names = [n.lower() for n in features.get("instruments") or []][:5]
    voices = int(features.get("n_voices") or 0)
    if not names:
        return "with no instruments", "by no instruments", "No instruments"
    listed = _join(names)
    if len(names) == 1 and voices > 1:
        count = NUMBER_WORDS[voices] if voices < len(NUMBER_WORDS) else str(voices)
        subject = f"{count.capitalize()} {listed} voices"
        return f"for {count} voices on {listed}", f"by {count} voices on {listed}", subject
    return f"for {listed}", f"by {listed}", listed[0].upper() + listed[1:]


def make_caption(features: dict[str, Any], rng: int | random.Random | None = None) -> str:
    """A one-or-two-sentence caption stating key, time signature, tempo, instruments and chords.

    `rng` is a seed or a random.Random that picks the template and mood word; None derives a seed
    from the features, so captions are reproducible.
    """
    r = _rng(features, rng)
    bpm = int(round(features.get("tempo") or 120))
    word = features.get("tempo_word") or tempo_word(bpm)
    mode = features.get("key_mode") or "major"
    pace = "slow" if bpm < 76 else "moderate" if bpm <= 120 else "fast"
    mood = r.choice(MOODS[(pace, mode if mode in ("major", "minor") else "major")])
    chords = (features.get("chords") or [])[:4]
    ensemble, ensemble_by, subject = _instrument_words(features)
    a_mood = ("an " if mood[0] in "aeiou" else "a ") + mood
    fields = dict(
        mood=mood, a_mood=a_mood, A_mood=a_mood[0].upper() + a_mood[1:],
        noun=features.get("genre") or r.choice(("piece", "piece", "composition", "tune")),
        ensemble=ensemble, ensemble_by=ensemble_by, Ensemble=subject,
        key=features.get("key") or "no clear key",
        ts=features.get("time_signature") or "4/4",
        bpm=bpm, word=word, a_word=("an " if word[0].lower() in "aeiou" else "a ") + word,
        chords=_join(chords) if chords else "no clear chords",
    )
    text = r.choice(TEMPLATES).format(**fields)
    return text[0].upper() + text[1:]


class Captions(dict):
    """{location: caption} that also finds a caption by file name or stem (when unambiguous)."""

    def __init__(self, items: dict[str, str]) -> None:
        super().__init__(items)
        self._alias: dict[str, str | None] = {}
        for loc in items:
            p = Path(loc)
            for alias in {p.name, p.stem}:
                self._alias[alias] = loc if self._alias.get(alias, loc) == loc else None  # None: ambiguous

    def find(self, location: str | Path) -> str | None:
        """Caption of a location, else of its file name, else of its stem; None if absent/ambiguous."""
        key = str(location)
        if dict.__contains__(self, key):
            return dict.__getitem__(self, key)
        p = Path(key)
        for alias in (p.name, p.stem):
            loc = self._alias.get(alias)
            if loc is not None:
                return dict.__getitem__(self, loc)
        return None

    def __missing__(self, key: str) -> str:
        found = self.find(key)
        if found is None:
            raise KeyError(key)
        return found

    def __contains__(self, key: object) -> bool:
        return isinstance(key, (str, Path)) and self.find(key) is not None

    def get(self, key: str, default: Any = None) -> Any:  # type: ignore[override]
        found = self.find(key)
        return default if found is None else found


def _record(obj: Any, where: str) -> tuple[str, str]:
    if not isinstance(obj, dict):
        raise ValueError(f"{where}: expected an object with 'location' and 'caption', got {type(obj).__name__}")
    missing = [k for k in ("location", "caption") if not isinstance(obj.get(k), str)]
    if missing:
        raise ValueError(f"{where}: missing or non-string {', '.join(repr(k) for k in missing)}")
    return obj["location"], obj["caption"]


def load_captions(path: str | Path) -> Captions:
    """Read MidiCaps captions: JSON list of records, JSON lines, or one {location: caption} object.

    Records need string fields `location` and `caption` (others are ignored). The first caption of a
    repeated location wins. Errors name the file (and line for JSON lines).
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ValueError(f"{path}: no such caption file") from None
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text ({e})") from None
    items: dict[str, str] = {}
    stripped = text.strip()
    if not stripped:
        raise ValueError(f"{path}: empty caption file")
    whole: Any = None
    try:
        whole = json.loads(stripped)
    except json.JSONDecodeError:
        pass  # JSON lines (or broken): parsed line by line below
    if isinstance(whole, list):
        for i, obj in enumerate(whole):
            loc, cap = _record(obj, f"{path}: item {i}")
            items.setdefault(loc, cap)
    elif isinstance(whole, dict) and "location" not in whole:
        for loc, cap in whole.items():
            if not isinstance(cap, str):
                raise ValueError(f"{path}: caption of {loc!r} is not a string")
            items[loc] = cap
    else:
        for lineno, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: invalid JSON ({e.msg})") from None
            loc, cap = _record(obj, f"{path}:{lineno}")
            items.setdefault(loc, cap)
    if not items:
        raise ValueError(f"{path}: no captions")
    return Captions(items)
