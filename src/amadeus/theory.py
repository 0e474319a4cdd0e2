"""Music theory: the musical facts amadeus uses, each defined once, and one parser per kind of name.

Pitch spelling, keys, scales, chord qualities and their suffix spellings, General MIDI program names,
instrument aliases and the drum sound range live here; the tokenizer, features, captions, controls,
metrics and the sampler import them. The parsers are shared the same way:

    pitch_class("F", "#") -> 6            parse_pitch_name("Bb5") -> 82 (scientific pitch notation)
    parse_key("F# minor") -> (6, "minor")  key_name(6, "minor") -> "F# minor"
    parse_chord("Bbm") -> (10, "min")      split_chord("C/E") -> (0, "", 4)
    instrument_program("double bass") -> 43, instrument_program("drums") -> DRUM_PROGRAM

The parsers return None for text that names nothing (captions are free text); `instrument_program`
raises ValueError with a suggestion, as an unknown instrument is always a user's mistake. How these
facts become token values (chord ids, instrument column values) is the tokenizer's grammar, not here.
"""

from __future__ import annotations

import difflib
import re

# --------------------------------------------------------------------------------- pitch spelling

# one spelling per pitch class for chord roots and note names (sharps for C#/F#, flats elsewhere,
# the usual lead-sheet choice); the index is the pitch class
PITCH_CLASS_NAMES = ("C", "C#", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B")
# pitch class of each natural note letter (the white keys from C)
NATURAL_PITCH_CLASSES = {"C": 0, "D": 2, "E": 4, "F": 5, "G": 7, "A": 9, "B": 11}
# semitone offset of each accidental spelling (symbols and English words; lower case)
ACCIDENTALS = {"": 0, "#": 1, "♯": 1, "sharp": 1, "b": -1, "♭": -1, "flat": -1}

_ACCIDENTAL_RE = r"(#|♯|b|♭)"
_PITCH_NAME_RE = re.compile(rf"([A-Ga-g]){_ACCIDENTAL_RE}?(-?\d)")


def accidental_offset(accidental: str | None) -> int:
    """Semitones of an accidental as written: '#', '♯', 'sharp', ' sharp', '-flat', 'b', '♭', '' or None."""
    return ACCIDENTALS[(accidental or "").strip(" -").lower()]


def pitch_class(letter: str, accidental: str | None = "") -> int:
    """Pitch class (0 = C ... 11 = B) of a spelled note: pitch_class('F', '#') -> 6, ('B', 'flat') -> 10."""
    return (NATURAL_PITCH_CLASSES[letter.upper()] + accidental_offset(accidental)) % 12


def ascii_accidental(accidental: str | None) -> str:
    """The ASCII spelling ('#', 'b' or '') of an accidental as written ('♯', ' sharp', '-flat', ...)."""
    return {1: "#", -1: "b", 0: ""}[accidental_offset(accidental)]


def parse_pitch_name(text: str) -> int | None:
    """MIDI pitch of a note in scientific pitch notation ('C4' -> 60, 'F#3' -> 54, 'Bb5' -> 82); None if
    the text is not one. The octave changes at C, so 'Cb4' is 59 and 'B#3' is 60."""
    m = _PITCH_NAME_RE.fullmatch(text.strip())
    if not m:
        return None
    return 12 * (int(m.group(3)) + 1) + NATURAL_PITCH_CLASSES[m.group(1).upper()] + accidental_offset(m.group(2))


# --------------------------------------------------------------------------------------- keys

# key names spell the tonic as its key signature does (fewest accidentals: Db major, C# minor)
MAJOR_TONICS = ("C", "Db", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B")
MINOR_TONICS = ("C", "C#", "D", "Eb", "E", "F", "F#", "G", "G#", "A", "Bb", "B")
# the diatonic scales a key= control allows (natural minor: the key signature's notes)
MAJOR_SCALE = (0, 2, 4, 5, 7, 9, 11)
MINOR_SCALE = (0, 2, 3, 5, 7, 8, 10)

_KEY_ACCIDENTAL_RE = r"(#|♯|b|♭|[ -](?i:sharp|flat))"
# a key stated in free text: an upper-case tonic, so that the article in 'a major work' is not a key
KEY_PATTERN = re.compile(rf"\b([A-G]){_KEY_ACCIDENTAL_RE}?\s*((?i:major|minor))\b")
# a key named on its own: 'D', 'Bm', 'f# minor', 'e-flat minor', 'C ionian'
_KEY_ALONE_RE = re.compile(rf"([A-Ga-g]){_KEY_ACCIDENTAL_RE}?\s*((?i:maj|major|ionian|m|min|minor|aeolian))?")
_MODE_OF = {"": "major", "maj": "major", "major": "major", "ionian": "major",
            "m": "minor", "min": "minor", "minor": "minor", "aeolian": "minor"}


def key_name(tonic: int, mode: str) -> str:
    """e.g. key_name(7, "major") -> "G major" (tonics spelled as MAJOR_TONICS / MINOR_TONICS)."""
    return f"{(MAJOR_TONICS if mode == 'major' else MINOR_TONICS)[tonic % 12]} {mode}"


def parse_key(text: str | None) -> tuple[int, str] | None:
    """(tonic pitch class, 'major' | 'minor') of a key, or None if the text names none.

    A key on its own may omit the mode or abbreviate it ('D', 'Bm', 'F#m', 'A minor', 'e-flat minor');
    otherwise the first '<tonic> major|minor' in the text counts ('in the key of F sharp minor').
    """
    if not text:
        return None
    text = str(text)
    m = _KEY_ALONE_RE.fullmatch(text.strip())
    if m:
        return pitch_class(m.group(1), m.group(2)), _MODE_OF[(m.group(3) or "").lower()]
    m = KEY_PATTERN.search(text)
    if not m:
        return None
    return pitch_class(m.group(1), m.group(2)), m.group(3).lower()


# --------------------------------------------------------------------------------------- chords

# the chord qualities the chord column knows (their order is the chord-id order; do not reorder)
CHORD_QUALITIES = ("maj", "min", "dim", "aug", "7", "maj7", "m7", "m7b5", "dim7", "sus2", "sus4")
# the intervals (semitones above the root) of each quality: the templates of chord detection
CHORD_INTERVALS = {
    "maj": (0, 4, 7), "min": (0, 3, 7), "dim": (0, 3, 6), "aug": (0, 4, 8),
    "7": (0, 4, 7, 10), "maj7": (0, 4, 7, 11), "m7": (0, 3, 7, 10), "m7b5": (0, 3, 6, 10),
    "dim7": (0, 3, 6, 9), "sus2": (0, 2, 7), "sus4": (0, 5, 7),
}
# how chord names spell each quality ("G", "Em", "D7"): the names amadeus writes
CHORD_SUFFIXES = {"maj": "", "min": "m", "dim": "dim", "aug": "aug", "7": "7", "maj7": "maj7",
                  "m7": "m7", "m7b5": "m7b5", "dim7": "dim7", "sus2": "sus2", "sus4": "sus4"}
# every spelling of a quality that people write (lead sheets, jazz symbols, words): the names amadeus
# reads; looked up as written first, then in lower case ('M7' is maj7, but 'MIN' is min)
CHORD_SUFFIX_ALIASES = {
    "": "maj", "maj": "maj", "M": "maj", "major": "maj",
    "m": "min", "min": "min", "-": "min", "minor": "min",
    "dim": "dim", "°": "dim", "o": "dim", "aug": "aug", "+": "aug",
    "7": "7", "dom7": "7", "maj7": "maj7", "M7": "maj7", "Δ7": "maj7", "Δ": "maj7",
    "m7": "m7", "min7": "m7", "-7": "m7", "m7b5": "m7b5", "ø": "m7b5", "ø7": "m7b5",
    "dim7": "dim7", "°7": "dim7", "o7": "dim7", "sus2": "sus2", "sus4": "sus4", "sus": "sus4",
}

# root, suffix as written, optional bass; upper-case letters only, so 'a' or 'Bass' in text are not chords
_CHORD_RE = re.compile(rf"^([A-G]){_ACCIDENTAL_RE}?([A-Za-z0-9°ø+Δ#♯♭-]*?)(?:/([A-G]){_ACCIDENTAL_RE}?)?$")
_EXTENDED_SUFFIX_RE = re.compile(r"(m|min|maj)?(add)?\d{1,2}")


def split_chord(name: str) -> tuple[int, str, int | None] | None:
    """'F#m7/C#' -> (root pitch class 6, suffix 'm7' as written, bass pitch class 1 or None); None if the
    text is not shaped like a chord name. The suffix is not checked (see chord_quality)."""
    m = _CHORD_RE.match(name)
    if not m:
        return None
    bass = pitch_class(m.group(4), m.group(5)) if m.group(4) else None
    return pitch_class(m.group(1), m.group(2)), m.group(3), bass


def chord_quality(suffix: str) -> str | None:
    """The quality a chord suffix spells: a CHORD_QUALITIES entry ('m' -> 'min', 'Δ7' -> 'maj7'), the
    suffix itself for extended chords ('9', 'add9', 'm6': only the same spelling matches), or None."""
    quality = CHORD_SUFFIX_ALIASES.get(suffix) or CHORD_SUFFIX_ALIASES.get(suffix.lower())
    if quality is None and _EXTENDED_SUFFIX_RE.fullmatch(suffix):
        return suffix
    return quality


def parse_chord(name: str | None) -> tuple[int, str] | None:
    """'Em' / 'D7' / 'Bbmaj7' / 'F#m7b5' / 'C/G' -> (root pitch class, quality); None if not a chord.

    Qualities are CHORD_QUALITIES where the spelling maps to one; other suffixes (e.g. '9', 'add9') are
    kept verbatim, so they only match the same spelling. A bass note does not change the quality.
    """
    parts = split_chord(str(name or "").strip())
    if parts is None:
        return None
    quality = chord_quality(parts[1])
    return None if quality is None else (parts[0], quality)


# ------------------------------------------------------------------------------------ instruments

# the 128 General MIDI programs; the index is the program number (0-based)
GM_PROGRAM_NAMES = (
    "Acoustic Grand Piano", "Bright Acoustic Piano", "Electric Grand Piano", "Honky-tonk Piano",
    "Electric Piano 1", "Electric Piano 2", "Harpsichord", "Clavinet", "Celesta", "Glockenspiel",
    "Music Box", "Vibraphone", "Marimba", "Xylophone", "Tubular Bells", "Dulcimer", "Drawbar Organ",
    "Percussive Organ", "Rock Organ", "Church Organ", "Reed Organ", "Accordion", "Harmonica",
    "Tango Accordion", "Acoustic Guitar (nylon)", "Acoustic Guitar (steel)", "Electric Guitar (jazz)",
    "Electric Guitar (clean)", "Electric Guitar (muted)", "Overdriven Guitar", "Distortion Guitar",
    "Guitar Harmonics", "Acoustic Bass", "Electric Bass (finger)", "Electric Bass (pick)",
    "Fretless Bass", "Slap Bass 1", "Slap Bass 2", "Synth Bass 1", "Synth Bass 2", "Violin", "Viola",
    "Cello", "Contrabass", "Tremolo Strings", "Pizzicato Strings", "Orchestral Harp", "Timpani",
    "String Ensemble 1", "String Ensemble 2", "Synth Strings 1", "Synth Strings 2", "Choir Aahs",
    "Voice Oohs", "Synth Voice", "Orchestra Hit", "Trumpet", "Trombone", "Tuba", "Muted Trumpet",
    "French Horn", "Brass Section", "Synth Brass 1", "Synth Brass 2", "Soprano Sax", "Alto Sax",
    "Tenor Sax", "Baritone Sax", "Oboe", "English Horn", "Bassoon", "Clarinet", "Piccolo", "Flute",
    "Recorder", "Pan Flute", "Blown Bottle", "Shakuhachi", "Whistle", "Ocarina", "Lead 1 (square)",
    "Lead 2 (sawtooth)", "Lead 3 (calliope)", "Lead 4 (chiff)", "Lead 5 (charang)", "Lead 6 (voice)",
    "Lead 7 (fifths)", "Lead 8 (bass + lead)", "Pad 1 (new age)", "Pad 2 (warm)", "Pad 3 (polysynth)",
    "Pad 4 (choir)", "Pad 5 (bowed)", "Pad 6 (metallic)", "Pad 7 (halo)", "Pad 8 (sweep)",
    "FX 1 (rain)", "FX 2 (soundtrack)", "FX 3 (crystal)", "FX 4 (atmosphere)", "FX 5 (brightness)",
    "FX 6 (goblins)", "FX 7 (echoes)", "FX 8 (sci-fi)", "Sitar", "Banjo", "Shamisen", "Koto",
    "Kalimba", "Bagpipe", "Fiddle", "Shanai", "Tinkle Bell", "Agogo", "Steel Drums", "Woodblock",
    "Taiko Drum", "Melodic Tom", "Synth Drum", "Reverse Cymbal", "Guitar Fret Noise", "Breath Noise",
    "Seashore", "Bird Tweet", "Telephone Ring", "Helicopter", "Applause", "Gunshot",
)
# the drum kit is no GM program (it is MIDI channel 10); it is numbered after them, as features'
# instrument_programs does
DRUM_PROGRAM = 128
# the inclusive MIDI range of drum sounds allowed in generated pieces (the GM drum map 35-81, extended
# by the GM2 / GS sounds that real files use)
DRUM_PITCHES = (27, 87)

# everyday instrument names -> the GM program (0-based) or DRUM_PROGRAM they usually mean; a str value
# is another name of this table with the same meaning (a synonym: captions fold these when they match
# instrument words, so 'double bass' finds Contrabass)
INSTRUMENT_ALIASES: dict[str, int | str] = {
    "piano": 0, "grand piano": 0, "acoustic piano": 0, "bright piano": 1, "e-piano": 4, "electric piano": 4,
    "rhodes": 4, "harpsichord": 6, "clavinet": 7, "celesta": 8, "glockenspiel": 9, "music box": 10,
    "vibraphone": 11, "vibes": 11, "marimba": 12, "xylophone": 13, "bells": 14, "tubular bells": 14,
    "dulcimer": 15, "organ": 19, "church organ": 19, "hammond": 16, "rock organ": 18, "accordion": 21,
    "harmonica": 22, "guitar": 24, "nylon guitar": 24, "classical guitar": 24, "acoustic guitar": 25,
    "steel guitar": 25, "electric guitar": 27, "jazz guitar": 26, "clean guitar": 27,
    "distortion guitar": 30, "overdriven guitar": 29, "bass": 33, "electric bass": 33,
    "acoustic bass": 32, "upright bass": 32, "fretless bass": 35, "slap bass": 36, "synth bass": 38,
    "violin": 40, "viola": 41, "cello": 42, "violoncello": 42, "contrabass": 43,
    "tremolo strings": 44, "pizzicato": 45, "pizzicato strings": 45, "harp": 46, "timpani": 47,
    "strings": 48, "string ensemble": 48, "synth strings": 50, "choir": 52, "voice": 53, "oohs": 53,
    "orchestra hit": 55, "trumpet": 56, "trombone": 57, "tuba": 58, "muted trumpet": 59, "horn": 60,
    "french horn": 60, "brass": 61, "brass section": 61, "synth brass": 62, "soprano sax": 64,
    "sax": 65, "saxophone": 65, "alto sax": 65, "tenor sax": 66, "baritone sax": 67, "oboe": 68,
    "english horn": 69, "bassoon": 70, "clarinet": 71, "piccolo": 72, "flute": 73, "recorder": 74,
    "pan flute": 75, "shakuhachi": 77, "whistle": 78, "ocarina": 79, "synth": 80, "lead": 80,
    "synth lead": 80, "pad": 88, "synth pad": 88, "sitar": 104, "banjo": 105, "shamisen": 106,
    "koto": 107, "kalimba": 108, "bagpipe": 109, "fiddle": 110, "steel drums": 114,
    "drums": DRUM_PROGRAM, "drum": DRUM_PROGRAM, "kit": DRUM_PROGRAM,
    # synonyms (in the order captions fold them: 'double bass' before 'bass guitar')
    "double bass": "contrabass", "bass guitar": "bass", "synthesizer": "synth",
    "percussion": "drums", "drum kit": "drums", "drum set": "drums",
}


def _name_key(name: str) -> str:
    """Lookup key of an instrument name: lower case, letters, digits, '+' and '#' only."""
    return re.sub(r"[^a-z0-9+#]", "", name.lower())


def _resolve(value: int | str) -> int:
    """Follow synonyms (str values) of INSTRUMENT_ALIASES to a program."""
    for _ in range(len(INSTRUMENT_ALIASES)):
        if isinstance(value, int):
            return value
        value = INSTRUMENT_ALIASES[value]
    raise AssertionError(f"INSTRUMENT_ALIASES: synonym cycle at {value!r}")


_PROGRAM_OF = {_name_key(n): _resolve(v) for n, v in INSTRUMENT_ALIASES.items()}
_GM_PROGRAM_OF = {_name_key(n): i for i, n in enumerate(GM_PROGRAM_NAMES)}


def instrument_program(name: str) -> int:
    """GM program (0-127) or DRUM_PROGRAM of an instrument: a GM program number ('40'), an alias of
    INSTRUMENT_ALIASES ('violin', 'double bass', 'drums') or a GM name ('Acoustic Guitar (nylon)').

    Case, spaces and punctuation do not matter. Raises ValueError for numbers outside 0-127 and for
    unknown names (suggesting the closest known names).
    """
    text = name.strip()
    if re.fullmatch(r"\d+", text):
        program = int(text)
        if not 0 <= program <= 127:
            raise ValueError(f"instrument {text!r}: GM program numbers are 0-127")
        return program
    key = _name_key(text)
    if key in _PROGRAM_OF:
        return _PROGRAM_OF[key]
    if key in _GM_PROGRAM_OF:
        return _GM_PROGRAM_OF[key]
    close = difflib.get_close_matches(key, list(_PROGRAM_OF) + list(_GM_PROGRAM_OF), n=3, cutoff=0.6)
    hint = (f" (did you mean {', '.join(close)}?)" if close
            else " (use a GM name, an alias such as piano, violin, drums, or a GM program 0-127)")
    raise ValueError(f"unknown instrument name {name!r}{hint}")


def instrument_synonyms() -> dict[str, str]:
    """The synonyms of INSTRUMENT_ALIASES (name -> the name it means), in table order."""
    return {n: v for n, v in INSTRUMENT_ALIASES.items() if isinstance(v, str)}
