"""ABC tune books as music21's corpus holds them: tunes, header fields, tempo, dance and region.

Pure text handling (no music21, no symusic): `amadeus.corpus.music21` turns the tunes into pieces.
"""
from __future__ import annotations

import re
from typing import Mapping

# dances named by ABC R: fields or titles -> default tempo in quarter notes per minute
DANCE_TEMPO = {"reel": 200, "jig": 168, "slip jig": 168, "slide": 180, "hornpipe": 144, "clog": 144,
               "strathspey": 128, "highland fling": 128, "polka": 152, "waltz": 144, "march": 120,
               "walkaround": 120, "gavotte": 120, "set dance": 144, "schottische": 128, "quickstep": 152,
               "minuet": 120, "country dance": 160, "air": None}
DANCE_ALIASES = {"double jig": "jig", "single jig": "jig", "slipjig": "slip jig", "fling": "highland fling",
                 "slow air": "air", "jigg": "jig", "hornpipes": "hornpipe", "reels": "reel", "jigs": "jig"}
SONG_BEAT, TUNE_BEAT = 76.0, 96.0  # default beats per minute of songs and airs / of dance tunes

# Essen `O:` words -> style of the song (first match in this order wins; else "European folk song")
ESSEN_REGIONS = (("china", "Chinese"), ("asien", "Chinese"), ("yunnan", "Chinese"), ("irland", "Irish"),
                 ("lothringen", "Lorraine"), ("luxemburg", "Luxembourg"), ("deutschland", "German"),
                 ("oesterreich", "Austrian"), ("schweiz", "Swiss"), ("tirol", "Austrian"),
                 ("steiermark", "Austrian"), ("niederlande", "Dutch"), ("frankreich", "French"),
                 ("ungarn", "Hungarian"), ("polen", "Polish"), ("schweden", "Swedish"),
                 ("jugoslawien", "Yugoslav"), ("rumaenien", "Romanian"), ("udssr", "Russian"),
                 ("mexiko", "Mexican"), ("amerika", "American"), ("mitteleuropa", "German"))



def split_abc(text: str) -> list[str]:
    """The tunes of an ABC file, each starting at its `X:` line, with the file header's fields.

    Fields before the first `X:` (the file header: L:, M:, Q:, R:, O:, %%MIDI ...) apply to every
    tune that does not set them itself; they are inserted after its `X:` line. A `K:` in the file
    header would end the tune header early and is left out.
    """
    parts = re.split(r"(?m)^(?=X:)", text.replace("\r\n", "\n").replace("\r", "\n"))
    header = [ln for ln in parts[0].splitlines()
              if re.match(r"[A-JL-WYZa-jl-wyz]:|%%", ln) and not ln.startswith("K:")]
    tunes = []
    for part in parts[1:]:
        if not part.strip():
            continue
        first, _, rest = part.partition("\n")
        own = set(abc_fields(part))
        inherited = [ln for ln in header if ln.startswith("%%") or ln[0] not in own]
        tunes.append("\n".join([first, *inherited, rest]) if inherited else part)
    return tunes


_ORNAMENT = re.compile(r"\{[^}]*\}|![^!\n]*!|[~TMPRHJLSOuv]+(?=[\^_=]*[A-Ga-gz\[(\.])|\.(?=[\^_=]*[A-Ga-g])")


def strip_ornaments(tune: str) -> str:
    """A tune without grace notes ({...}), decorations (!trill!, ~ rolls, T trills, mordents, bowings)
    and staccato dots, in the music lines only (not in fields, chord symbols or annotations).

    abc2midi plays ornaments as runs of very short notes and staccato as shortened ones, off every
    rhythmic grid; the corpus keeps the written notes and leaves the ornaments to the player.
    """
    out, body = [], False
    for line in tune.split("\n"):
        if not body or re.match(r"[A-Za-z]:|%", line):
            body = body or line.startswith("K:")
            out.append(line)
            continue
        parts = re.split(r'("[^"]*"|\[[A-Za-z]:[^\]]*\])', line)  # chord symbols, inline fields: kept
        out.append("".join(p if i % 2 else _ORNAMENT.sub("", p) for i, p in enumerate(parts)))
    return "\n".join(out)


def abc_fields(tune: str) -> dict[str, list[str]]:
    """Header fields of one tune (lines up to the first K:), e.g. {"T": ["Title", "Subtitle"], "M": ["6/8"]}."""
    fields: dict[str, list[str]] = {}
    for line in tune.splitlines():
        m = re.match(r"([A-Za-z]):\s*(.*?)\s*$", line)
        if not m:
            continue
        fields.setdefault(m.group(1).upper() if m.group(1) in "tT" else m.group(1), []).append(m.group(2))
        if m.group(1) == "K":
            break
    return fields


def abc_fraction(text: str) -> float | None:
    """The value of "n/d", or None."""
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    return int(m.group(1)) / int(m.group(2)) if m and int(m.group(2)) else None


def parse_abc_tempo(q: str | None, unit: float = 1 / 8) -> float | None:
    """Quarter notes per minute of an ABC `Q:` field; None when it states no number.

    Forms: "1/4=120", "3/8=112" (dotted quarter: 168 quarters), "1/8 3/8=60" (beat lengths add up),
    "C=120" / "C2=60" (C is the unit note length L, as abc2midi reads it), "120" (quarters), with an
    optional quoted text ("Allegro" 1/4=140).
    """
    if not q:
        return None
    q = re.sub(r'"[^"]*"', " ", q).strip()
    m = re.fullmatch(r"(.*?)=\s*(\d+(?:\.\d+)?)", q)
    if m is None:
        bare = re.fullmatch(r"(\d+(?:\.\d+)?)", q)
        return float(bare.group(1)) if bare and float(bare.group(1)) > 0 else None
    beat, bpm = m.group(1).strip(), float(m.group(2))
    c = re.fullmatch(r"C(\d*)", beat)
    if c:
        length = unit * (int(c.group(1)) if c.group(1) else 1)
    else:
        lengths = [abc_fraction(x) for x in beat.split()]
        if not lengths or any(x is None for x in lengths):
            return None
        length = sum(lengths)
    return bpm * length * 4 if bpm > 0 and length > 0 else None


def abc_metre(fields: Mapping[str, list[str]]) -> tuple[int, int]:
    """(numerator, denominator) of a tune's `M:` field (C = 4/4, C| = 2/2; 4/4 when absent or unreadable)."""
    m = (fields.get("M") or ["4/4"])[0].strip()
    if m in ("C", ""):
        return 4, 4
    if m == "C|":
        return 2, 2
    f = re.fullmatch(r"\(?(\d+)(?:\+\d+)*\)?\s*/\s*(\d+)", m)
    return (int(f.group(1)), int(f.group(2))) if f else (4, 4)


def beat_quarters(numerator: int, denominator: int) -> float:
    """Quarter notes per beat of a metre: a dotted beat in compound metres (6/8, 9/8, 12/8), else the
    denominator's note."""
    if denominator >= 8 and numerator % 3 == 0 and numerator > 3:
        return 1.5 * 8 / denominator
    return 4 / denominator


def dance_kind(fields: Mapping[str, list[str]]) -> str | None:
    """The dance of a tune from its `R:` field, else from the words of its first title; None if none."""
    for text in [*(fields.get("R") or [])[:1], *(fields.get("T") or [])[:1]]:
        words = re.sub(r"[^a-z ]", " ", re.sub(r"([a-z])([A-Z])", r"\1 \2", text).lower()).split()
        for n in (2, 1):  # two-word names first ("slip jig", "highland fling")
            for j in range(len(words) - n + 1):
                w = " ".join(words[j:j + n])
                w = DANCE_ALIASES.get(w, w)
                if w in DANCE_TEMPO:
                    return w
    return None


def essen_style(origin: str | None) -> tuple[str, str | None]:
    """(style, region) of an Essen folk song from its `O:` field ("Europa, Mitteleuropa, Deutschland")."""
    text = (origin or "").lower()
    for word, adjective in ESSEN_REGIONS:
        if word in text:
            parts = [p.strip() for p in (origin or "").split(",") if p.strip()]
            return f"{adjective} folk song", parts[-1] if parts else None
    return "European folk song", (origin or "").strip() or None
