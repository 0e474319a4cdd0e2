"""The music21 corpus: ABC splitting, style / metadata / tempo rules, grouped splits, and a small build
end to end (hand-written ABC files laid out like music21's corpus)."""
from __future__ import annotations

import json

import pytest

from amadeus.corpus.abc import (abc_fields, beat_quarters, dance_kind, essen_style, parse_abc_tempo, split_abc,
                                strip_ornaments)
from amadeus.corpus.music21 import abc_metadata, build_music21_corpus, build_music21_shards, format_music21_report
from amadeus.corpus.splits import assign_splits, split_for_key

BOOK = """% a book of tunes
L:1/8
M:6/8
R:jig

X:1
T:The Kesh
K:G
GAG GAB|ABA ABd|edd gdd|edB dBA|

X:2
T:The Kesh, a fifth higher
K:D
ded def|efe efa|baa d'aa|baf afe|

X:3
T:Drowsy Maggie
R:reel
M:C|
Q:1/4=200
K:Edor
E2BE dEBE|E2BE AFDF|E2BE dEBE|BABc dAFD|
"""

SONGS = """X:1
T:Der Kuckuck
O:Europa, Mitteleuropa, Deutschland, Rheinland
M:3/4
L:1/4
K:C
C E G|c2 G|E2 C|G,3|

X:2
T:Shan ge
O:China, Shaanxi
M:2/4
L:1/8
K:G
GAG GAB|ABA ABd|edd gdd|edB dBA|
"""


def test_split_abc_gives_each_tune_the_file_header():
    tunes = split_abc(BOOK)
    assert len(tunes) == 3
    assert all(t.startswith("X:") for t in tunes)
    first = abc_fields(tunes[0])
    assert first["T"] == ["The Kesh"] and first["L"] == ["1/8"] and first["M"] == ["6/8"] and first["K"] == ["G"]
    third = abc_fields(tunes[2])
    assert third["R"] == ["reel"]  # the tune's own field, not the file header's
    assert third["M"][-1] == "C|" and third["Q"] == ["1/4=200"]
    assert "% a book" not in tunes[0]  # comments of the file header stay out
    assert split_abc("no tunes here") == [] and len(split_abc(SONGS)) == 2


@pytest.mark.parametrize("q, unit, bpm", [
    ("1/4=120", 1 / 8, 120.0), ("3/8=112", 1 / 8, 168.0), ("1/2=100", 1 / 8, 200.0), ("C=120", 1 / 8, 60.0),
    ("C=120", 1 / 4, 120.0), ("C2=60", 1 / 8, 60.0), ("120", 1 / 8, 120.0), ('"Allegro" 1/4=140', 1 / 8, 140.0),
    ("1/8 3/8=60", 1 / 8, 120.0), ("1/4 =50", 1 / 8, 50.0), ("", 1 / 8, None), (None, 1 / 8, None),
    ('"Allegro"', 1 / 8, None), ("x=1", 1 / 8, None),
])
def test_abc_tempo_forms(q, unit, bpm):
    assert parse_abc_tempo(q, unit) == bpm


def test_dances_styles_and_default_tempi():
    assert dance_kind({"R": ["Double Jig"]}) == "jig"
    assert dance_kind({"R": ["slipjig"]}) == "slip jig"
    assert dance_kind({"R": [" Highland Fling"]}) == "highland fling"
    assert dance_kind({"T": ["AcrobatsHornpipe"]}) == "hornpipe"  # from the title when R: is missing
    assert dance_kind({"R": ["Hornpipe"], "T": ["The Reel of Tulloch"]}) == "hornpipe"  # R: first
    assert dance_kind({"T": ["The Fairy Queen"]}) is None  # 'fairy' is not 'air'
    kesh, maggie = (abc_metadata("oneills1850", "book", t) for t in split_abc(BOOK)[::2])
    assert kesh["style"] == "Irish jig" and kesh["dance"] == "jig" and kesh["region"] == "Ireland"
    assert kesh["tempo"] == 168 and kesh["tempo_source"] == "default" and kesh["program"] == 40
    assert maggie["style"] == "Irish reel" and maggie["tempo"] == 200 and maggie["tempo_source"] == "source"
    plain = abc_metadata("oneills1850", "book", "X:1\nT:Untitled\nM:6/8\nL:1/8\nK:G\nGAG GAB|\n")
    assert plain["style"] == "Irish dance tune" and plain["tempo"] == 96 * 1.5
    assert abc_metadata("ryansMammoth", "x", "X:1\nT:Clog\nR:clog\nK:G\nG|\n")["style"] == "American clog"
    assert abc_metadata("airdsAirs", "x", "X:1\nT:Lament\nM:3/4\nK:G\nG|\n")["style"] == "Scottish air"
    fife = abc_metadata("miscFolk", "americanfifeopus", "X:1\nT:March\nK:D\nD|\n")
    assert fife["style"] == "American fife tune" and fife["program"] == 72
    song, china = (abc_metadata("essenFolksong", "x", t) for t in split_abc(SONGS))
    assert song["style"] == "German folk song" and song["region"] == "Rheinland" and song["program"] == 53
    assert song["tempo"] == 76 and china["style"] == "Chinese folk song"
    assert essen_style("Lothringen") == ("Lorraine folk song", "Lothringen")
    assert essen_style(None)[0] == "European folk song"
    assert beat_quarters(6, 8) == 1.5 and beat_quarters(2, 2) == 2 and beat_quarters(3, 8) == 0.5


def test_ornaments_are_stripped_from_music_lines_only():
    tune = 'X:1\nT:Tune T\nK:G\n"Am"~B2 TA2 {g}f.e !trill!d "^Trill" [K:D] .B|\nw: Lyrics Text\n'
    assert strip_ornaments(tune) == 'X:1\nT:Tune T\nK:G\n"Am"B2 A2 fe d "^Trill" [K:D] B|\nw: Lyrics Text\n'


def test_duplicates_share_a_split_whatever_else_the_corpus_holds():
    records = [{"location": f"a{i}", "style": "big", "melody_key": f"k{i % 40}"} for i in range(200)]
    records += [{"location": "c0", "style": "small", "melody_key": "k3"}]  # the same tune in another style
    split = assign_splits(records)
    by_key: dict[str, set[str]] = {}
    for r in records:
        by_key.setdefault(r["melody_key"], set()).add(split[r["location"]])
    assert all(len(s) == 1 for s in by_key.values())
    assert set(split.values()) == {"train", "validation", "test"}
    assert split == assign_splits(list(reversed(records)))  # deterministic, order-free
    alone = assign_splits(records[-1:])  # the same piece in a corpus of its own: the same split
    assert alone["c0"] == split["c0"] == split["a3"]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    src = tmp_path_factory.mktemp("m21corpus")
    (src / "oneills1850").mkdir()
    (src / "oneills1850" / "book.abc").write_text(BOOK)
    (src / "essenFolksong").mkdir()
    (src / "essenFolksong" / "songs.abc").write_text(SONGS)
    root = tmp_path_factory.mktemp("built")
    report, pre = build_music21_shards(root, ["oneills1850", "essenFolksong"], workers=0, progress=False,
                                       corpus_dir=src)
    return src, root, report, pre


def test_small_build_end_to_end(built):
    src, root, report, pre = built
    assert report.pieces == 5 and not report.skipped and not report.cached
    rows = [json.loads(line) for line in (root / "midi" / "captions.jsonl").read_text().splitlines()]
    assert [r["location"] for r in rows] == ["essenFolksong/songs_0001.mid", "essenFolksong/songs_0002.mid",
                                             "oneills1850/book_0001.mid", "oneills1850/book_0002.mid",
                                             "oneills1850/book_0003.mid"]
    assert all((root / "midi" / r["location"]).is_file() for r in rows)
    for r in rows:
        assert r["style"] and r["style"] in r["caption"] and r["split"] in ("train", "validation", "test")
        assert {"key", "time_signature", "tempo", "instruments", "chords", "title", "tempo_source"} <= set(r)
    kesh = rows[2]
    assert kesh["style"] == "Irish jig" and kesh["instruments"] == ["Violin"] and kesh["time_signature"] == "6/8"
    assert kesh["tempo"] == 168 and kesh["tempo_source"] == "default" and rows[4]["tempo_source"] == "source"
    # the Kesh in G, the Kesh in D and the Chinese song (same notes, another key): one content, one split
    same = [r for r in rows if r["location"] in ("oneills1850/book_0001.mid", "oneills1850/book_0002.mid",
                                                 "essenFolksong/songs_0002.mid")]
    assert len({r["content_key"] for r in same}) == 1 and len({r["melody_key"] for r in same}) == 1
    assert len({r["split"] for r in same}) == 1
    assert all(r["split"] == split_for_key(r["melody_key"]) for r in rows)  # the one rule of every corpus
    assert report.moved == {"compared": 0, "moved": 0, "moves": {}}  # a first build
    stamp = json.loads((root / "midi" / "corpus.json").read_text())
    assert stamp["pieces"] == 5 and set(stamp["styles"]) == {"Irish jig", "Irish reel", "German folk song",
                                                            "Chinese folk song"}
    assert report.fidelity == 100.0
    table = format_music21_report(report)
    assert "| Irish jig | 2 |" in table and "5 pieces in 4 styles" in table
    # shards: the corpus' splits, not the content hash
    manifest = json.loads((root / "shards" / "manifest.json").read_text())
    assert manifest["counts"]["pieces"] == 5
    expected = {sp: sum(r["split"] == sp for r in rows) for sp in ("train", "validation", "test")}
    assert manifest["counts"]["splits"] == expected


def test_second_build_is_cached_and_unknown_collections_fail(built):
    src, root, report, _ = built
    again = build_music21_corpus(root / "midi", ["oneills1850", "essenFolksong"], workers=0, progress=False,
                                 corpus_dir=src)
    assert again.cached and again.pieces == 5 and again.styles == json.loads(json.dumps(report.styles))
    with pytest.raises(ValueError, match="unknown music21 collection"):
        build_music21_corpus(root / "x", ["nope"], progress=False)


def test_corpus_command_builds_a_subset_and_rejects_bad_names(built, tmp_path, capsys):
    from amadeus.cli import main as cli_main

    src, *_ = built
    out = tmp_path / "cli"
    assert cli_main(["corpus", "music21", str(out), "--collections", "oneills1850", "--source", str(src),
                     "--workers", "0", "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "| Irish jig | 2 |" in printed and "shards:" in printed
    assert (out / "shards" / "manifest.json").is_file()
    assert cli_main(["corpus", "music21", str(out), "--collections", "nope", "--quiet"]) == 2
    assert "unknown music21 collection" in capsys.readouterr().err
    assert cli_main(["corpus", "bach", "--collections", "oneills1850"]) == 2


def test_folk_corpus_is_the_tune_books(built, tmp_path, capsys):
    """`amadeus corpus folk` builds the ABC collections only (those the source folder has), into its own
    folder; --collections belongs to the music21 corpus."""
    from amadeus.cli import main as cli_main
    from amadeus.corpus import FOLK_COLLECTIONS, MUSIC21_COLLECTIONS, default_folk_dir
    from amadeus.datamodule import MusicDataModule

    assert set(FOLK_COLLECTIONS) == {n for n, c in MUSIC21_COLLECTIONS.items() if c.kind == "abc"}
    assert "bach" not in FOLK_COLLECTIONS and "palestrina" not in FOLK_COLLECTIONS
    src, *_ = built
    out = tmp_path / "folk"
    assert cli_main(["corpus", "folk", str(out), "--source", str(src), "--workers", "0", "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "5 pieces in 4 styles" in printed and "collections: " + ", ".join(FOLK_COLLECTIONS) in printed
    assert json.loads((out / "shards" / "manifest.json").read_text())["counts"]["pieces"] == 5
    assert cli_main(["corpus", "folk", str(out), "--collections", "oneills1850"]) == 2
    assert "--collections applies to the music21 corpus" in capsys.readouterr().err
    assert MusicDataModule(corpus="folk")._embedded()[0] == default_folk_dir() / "shards"

