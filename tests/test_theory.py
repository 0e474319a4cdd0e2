"""amadeus.theory: the parsers on examples, and each musical fact defined in one place only."""

from __future__ import annotations

import ast
import importlib
import pkgutil
from pathlib import Path

import pytest

import amadeus
from amadeus import theory
from amadeus.theory import (
    CHORD_QUALITIES,
    CHORD_SUFFIX_ALIASES,
    CHORD_SUFFIXES,
    DRUM_PROGRAM,
    GM_PROGRAM_NAMES,
    INSTRUMENT_ALIASES,
    PITCH_CLASS_NAMES,
    instrument_program,
    key_name,
    parse_chord,
    parse_key,
    parse_pitch_name,
    pitch_class,
    split_chord,
)

SRC = Path(amadeus.__file__).parent


def test_pitch_spelling():
    assert [pitch_class(n[0], n[1:]) for n in PITCH_CLASS_NAMES] == list(range(12))
    assert pitch_class("F", "#") == pitch_class("f", "sharp") == pitch_class("G", "♭") == 6
    assert pitch_class("B", " flat") == pitch_class("A", "-sharp") == 10 and pitch_class("C", "b") == 11
    assert parse_pitch_name("C4") == 60 and parse_pitch_name("F#3") == 54 and parse_pitch_name("Bb5") == 82
    assert parse_pitch_name("Cb4") == 59 and parse_pitch_name("c-1") == 0
    assert parse_pitch_name("H4") is None and parse_pitch_name("C") is None


def test_keys():
    assert parse_key("F# minor") == (6, "minor") == parse_key("in the key of F sharp minor") == parse_key("F#m")
    assert parse_key("Bb major") == (10, "major") == parse_key("Bb") == parse_key("B-flat major")
    assert parse_key("e-flat minor") == (3, "minor") == parse_key("Ebm") == parse_key("eb aeolian")
    assert parse_key("D") == (2, "major") and parse_key("A minor") == (9, "minor") == parse_key("am")
    assert parse_key("a major work in G minor") == (7, "minor")  # the article is not a key
    assert parse_key("no key here") is None and parse_key("") is None and parse_key(None) is None
    assert parse_key("Q") is None and parse_key("C lydian") is None
    for tonic in range(12):
        for mode in ("major", "minor"):
            assert parse_key(key_name(tonic, mode)) == (tonic, mode)
    assert key_name(1, "major") == "Db major" and key_name(1, "minor") == "C# minor"


def test_chords():
    assert parse_chord("Bbm") == (10, "min") and parse_chord("F#dim7") == (6, "dim7")
    assert parse_chord("C/E") == (0, "maj") and parse_chord("G7") == (7, "7")
    assert parse_chord("CM") == (0, "maj") and parse_chord("CM7") == (0, "maj7") and parse_chord("C-7") == (0, "m7")
    assert parse_chord("Dø") == (2, "m7b5") and parse_chord("E°") == (4, "dim") and parse_chord("F♯MIN") == (6, "min")
    assert parse_chord("C9") == (0, "9") and parse_chord("Dm6") == (2, "m6")  # extended: kept as written
    assert parse_chord("And") is None and parse_chord("Bass") is None and parse_chord("am") is None
    assert parse_chord("Cfoo") is None and parse_chord(None) is None
    assert split_chord("F#m7/C#") == (6, "m7", 1) and split_chord("Bb") == (10, "", None)
    assert split_chord("H7") is None
    for quality, suffix in CHORD_SUFFIXES.items():  # every name amadeus writes, it reads back
        assert CHORD_SUFFIX_ALIASES[suffix] == quality
        for root, name in enumerate(PITCH_CLASS_NAMES):
            assert parse_chord(name + suffix) == (root, quality)
    assert set(CHORD_SUFFIX_ALIASES.values()) == set(CHORD_QUALITIES)


def test_instruments():
    assert instrument_program("piano") == 0 == instrument_program("Acoustic Grand Piano")
    assert instrument_program("double bass") == 43 == instrument_program("DoubleBass") == instrument_program("Contrabass")
    assert instrument_program("acoustic guitar (nylon)") == 24 and instrument_program("40") == 40
    assert instrument_program("drums") == instrument_program("drum kit") == instrument_program("percussion") == DRUM_PROGRAM
    assert instrument_program("synthesizer") == instrument_program("synth") == 80
    for program, name in enumerate(GM_PROGRAM_NAMES):
        assert instrument_program(name) == program
    for name in INSTRUMENT_ALIASES:  # every alias resolves (synonyms point at names of the table)
        assert 0 <= instrument_program(name) <= DRUM_PROGRAM
    with pytest.raises(ValueError, match="did you mean piano"):
        instrument_program("pianoo")
    with pytest.raises(ValueError, match="0-127"):
        instrument_program("200")


# every module-level table of music facts; only amadeus.theory may assign these names
FACT_NAMES = {
    "PITCH_CLASS_NAMES", "NATURAL_PITCH_CLASSES", "ACCIDENTALS", "MAJOR_TONICS", "MINOR_TONICS",
    "MAJOR_SCALE", "MINOR_SCALE", "CHORD_QUALITIES", "CHORD_INTERVALS", "CHORD_SUFFIXES",
    "CHORD_SUFFIX_ALIASES", "GM_PROGRAM_NAMES", "INSTRUMENT_ALIASES", "DRUM_PROGRAM", "DRUM_PITCHES",
    # the names these tables had before they moved here
    "NOTE_CLASSES", "_NATURAL_PC", "_ACCIDENTAL", "_SUFFIX_ALIASES", "_CHORD_SUFFIX", "_INSTRUMENT_SYNONYMS",
    "_GM_BY_NAME", "_KEY_RE", "_CHORD_RE",
}
# literals that belong to one of those tables: seeing one elsewhere means a copy of the table
FACT_LITERALS = {"Acoustic Grand Piano", "Gunshot", "m7b5", "dim7", "sus4", "Bb", "F#", "contrabass"}


def _modules() -> list[Path]:
    return sorted(p for p in SRC.rglob("*.py") if p.name != "theory.py")


def test_each_fact_is_defined_once():
    for path in _modules():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in tree.body:
            targets = node.targets if isinstance(node, ast.Assign) else [node.target] \
                if isinstance(node, (ast.AnnAssign, ast.AugAssign)) else []
            names = {t.id for t in targets if isinstance(t, ast.Name)}
            assert not names & FACT_NAMES, f"{path.name} defines {names & FACT_NAMES}; import it from amadeus.theory"
        docstrings = {id(n.body[0].value) for n in ast.walk(tree)
                      if isinstance(n, (ast.Module, ast.FunctionDef, ast.ClassDef)) and n.body
                      and isinstance(n.body[0], ast.Expr)}
        copies = {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and id(n) not in docstrings
                  and n.value in FACT_LITERALS}
        assert not copies, f"{path.name} spells {copies}: a copy of a table of amadeus.theory?"


def test_modules_share_the_one_definition():
    public = {n for n in FACT_NAMES if hasattr(theory, n)}
    seen = 0
    for info in pkgutil.walk_packages(amadeus.__path__, "amadeus."):
        try:
            module = importlib.import_module(info.name)
        except ImportError:  # an optional extra that is not installed
            continue
        for name in public:
            if module is not theory and hasattr(module, name):
                assert getattr(module, name) is getattr(theory, name), f"{info.name}.{name}"
                seen += 1
    assert seen >= 5  # tokenizer, captions, controls, metrics and sampling import from theory
