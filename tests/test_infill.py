"""Infilling and accompaniment: the reordered sequences (markers, lengths, what each part holds), the sampler's
state after a reordered prompt, and `Amadeus.infill` / `.accompany` / `amadeus generate` on a chorale-like
piece and a multi-track song with drums: everything outside the span (or every kept track) note for note."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from symusic import Score

from amadeus.grammar import COL_METRIC, COL_POSITION, MARKER_MIDDLE, cut_at_eos, is_bar_start, is_marker, note_rows
from amadeus.infill import (InfillError, accompaniment_rows, accompaniment_window, fim_rows, fim_window, find_span,
                            infill_prompt, relayout, top_line)
from amadeus.sampling.prompts import prompt_state
from amadeus.tokenizer import NoteTokenizer
from conftest import chorale_like
from midi_factory import make_score, part, write

pytestmark = pytest.mark.usefixtures("one_thread")
TOK = NoteTokenizer()
LAYOUT = (TOK.default_ts, len(TOK.config.time_signatures))


def song(seed: int = 0, bars: int = 10):
    """Drums, bass, chords and a melody over `bars` bars of 4/4 at 100 bpm."""
    g = np.random.default_rng(seed)
    beat = 480
    drums = [(b * 4 * beat + i * beat, 120, 36 if i % 2 == 0 else 38, 100) for b in range(bars) for i in range(4)]
    roots = [48 + int(g.choice([0, 5, 7, 9])) for _ in range(bars)]
    bass = [(b * 4 * beat + i * 2 * beat, 2 * beat, roots[b], 90) for b in range(bars) for i in range(2)]
    chords = [(b * 4 * beat, 4 * beat, roots[b] + 12 + iv, 70) for b in range(bars) for iv in (0, 4, 7)]
    melody = [(b * 4 * beat + i * beat, beat, 72 + int(g.integers(0, 8)), 85) for b in range(bars) for i in range(4)]
    return make_score([part(melody, 73, name="Flute"), part(chords, 0, name="Piano"), part(bass, 33, name="Bass"),
                       part(drums, 0, is_drum=True, name="Drums")], tempos=[(0, 100.0)], time_signatures=[(0, 4, 4)])


def notes_of(score: Score) -> list[tuple]:
    """Every note of a score (in quarter notes) with its track's program and kind."""
    tpq = score.ticks_per_quarter
    return sorted((t.program, t.is_drum, round(n.time / tpq, 4), round(n.duration / tpq, 4), n.pitch, n.velocity)
                  for t in score.tracks for n in t.notes)


def chorale_tokens() -> np.ndarray:
    return TOK.encode(chorale_like(np.random.default_rng(3), 62, True, 4, bars=9, bpm=90.0))


def test_fim_sequence_holds_the_piece_reordered():
    tok = chorale_tokens()
    span = find_span(tok, 5, 6)
    prompt, middle = fim_rows(tok, span.start, span.end, *LAYOUT)
    assert prompt[0, COL_METRIC] == 1 and is_marker(prompt).sum() == 3 and prompt[-1, COL_POSITION] == MARKER_MIDDLE
    np.testing.assert_array_equal(middle[:-1], tok[span.start:span.end])  # the gap, then EOS
    assert is_bar_start(middle[:1, COL_METRIC])[0]
    # the piece's notes are all there once: suffix + prefix + middle
    rows = np.concatenate([prompt, middle])
    assert note_rows(rows).sum() == note_rows(tok).sum()
    with pytest.raises(InfillError, match="the piece has 9 bars"):
        find_span(tok, 8, 10)
    with pytest.raises(InfillError, match="empty span"):
        find_span(tok, 6, 5)


def test_training_reorderings_keep_the_window_length():
    tok = chorale_tokens()
    rng = np.random.default_rng(0)
    for length in (40, 129):
        window = tok[:length]
        for _ in range(20):
            fim = fim_window(window, rng, *LAYOUT)
            assert fim is not None and fim.shape == window.shape and is_marker(fim).sum() == 3
        acc = accompaniment_window(window, rng, *LAYOUT, 129)
        assert acc.shape == window.shape and is_marker(acc).sum() == 2
    assert accompaniment_window(tok[5:60], rng, *LAYOUT, 129) is None  # not a piece's opening


def test_relayout_and_accompaniment_parts():
    tok = chorale_tokens()
    every = relayout(tok, np.ones(len(tok), bool), *LAYOUT)
    np.testing.assert_array_equal(every, tok[1:-1])  # all notes laid out again: the piece itself
    keep = top_line(tok)
    prompt, parts = accompaniment_rows(tok, keep, *LAYOUT)
    melody = TOK.decode(np.concatenate([[TOK.sos_row()], prompt[2:-1], [TOK.eos_row()]]))
    others = TOK.decode(np.concatenate([[TOK.sos_row()], parts]))
    assert melody.note_num() == keep.sum() and others.note_num() == note_rows(tok).sum() - keep.sum()
    both = sorted(notes_of(melody) + notes_of(others))
    whole = TOK.decode(tok)
    assert [n[2:5] for n in both] == [n[2:5] for n in notes_of(whole)]  # the same notes, split in two


def test_prompt_state_after_a_middle_marker_opens_a_bar():
    tok = chorale_tokens()
    span = find_span(tok, 5, 6)
    prompt, seen = infill_prompt(tok, span, 10_000, *LAYOUT)
    assert seen.before == (1, 4) and seen.after == (7, 9)
    assert prompt_state(prompt, TOK) == (4, TOK.default_ts, 0, 0, 0, 0, 0)  # four bars before; the next row opens bar 5
    small, seen = infill_prompt(tok, span, 40, *LAYOUT)
    assert len(small) < len(prompt) and seen.before[0] > 1 and seen.before[1] == 4
    assert prompt_state(small, TOK)[1:] == (TOK.default_ts, 0, 0, 0, 0, 0)


@pytest.fixture(scope="module")
def model():
    from amadeus.api import Amadeus
    from amadeus.model.config import ModelConfig
    from amadeus.module import AmadeusModule

    torch.manual_seed(0)
    net = ModelConfig(d_model=32, n_layers=1, n_heads=2, head_width=32, head_heads=2, dropout=0.0)
    return Amadeus(AmadeusModule(network=net))


@pytest.mark.parametrize("make", [lambda: chorale_like(np.random.default_rng(1), 60, False, 4, bars=9, bpm=80.0), song])
def test_infill_keeps_everything_outside_the_span(model, make, tmp_path):
    src = make()
    path = write(src, tmp_path / "in.mid")
    out = model.infill(path, (5, 6), num=2, seed=3, steps=2)
    tpq = src.ticks_per_quarter
    span = (4 * 4, 6 * 4)  # quarters of bars 5-6 in 4/4
    outside = [n for n in notes_of(src) if not span[0] <= n[2] < span[1]]
    for score in out:
        got = notes_of(score)
        assert [n for n in got if not span[0] <= n[2] < span[1]] == outside  # note for note
        assert all(span[0] <= n[2] < span[1] for n in got if n not in outside)
        assert [(t.program, t.is_drum, t.name) for t in score.tracks][:len(src.tracks)] == \
            [(t.program, t.is_drum, t.name) for t in src.tracks]
        assert list(score.tempos) == list(src.tempos) and score.ticks_per_quarter == tpq
    assert model.last_result.settings["infill"]["bars"] == [5, 6]
    for rows in model.last_result.tokens:  # the written rows (after the MIDDLE marker) open bar 5, stop before 7
        written = cut_at_eos(rows[np.flatnonzero(is_marker(rows))[-1] + 1:])
        assert is_bar_start(written[:1, COL_METRIC])[0] and is_bar_start(written[:, COL_METRIC]).sum() <= 2
    with pytest.raises(InfillError, match="has 9 bars|has 10 bars"):
        model.infill(path, (8, 12))


def test_accompaniment_keeps_the_kept_tracks_note_for_note(model, tmp_path):
    src = song(1)
    path = write(src, tmp_path / "song.mid")
    out = model.accompany(path, ["Flute", "4"], num=1, seed=2, steps=2, add_instruments="violin,cello")
    kept = {(t.name, t.program, t.is_drum): notes_of_track(t) for t in src.tracks if t.name in ("Flute", "Drums")}
    got = {(t.name, t.program, t.is_drum): notes_of_track(t) for t in out[0].tracks}
    for key, notes in kept.items():
        assert got[key] == notes
    new = [t for t in out[0].tracks if t.name not in ("Flute", "Drums")]
    assert all(t.program in (40, 42) for t in new if len(t.notes))  # violin, cello (the control)
    with pytest.raises(InfillError, match="track '7': no such track; the piece has 4"):
        model.accompany(path, ["7"])
    with pytest.raises(InfillError, match="every track is kept"):
        model.accompany(path, ["1", "2", "3", "4"])


def notes_of_track(track) -> list[tuple]:
    return [(n.time, n.duration, n.pitch, n.velocity) for n in track.notes]


def test_generate_command_infills_and_refuses_bad_spans(model, tmp_path, capsys):
    from amadeus.cli import main

    folder = model.export(tmp_path / "model")
    path = write(song(2), tmp_path / "song.mid")
    assert main(["generate", "--ckpt", str(folder), "--prompt-midi", str(path), "--infill-bars", "3-4", "--num", "1",
                 "--steps", "2", "--out", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "sample_000.mid").is_file()
    for bars, message in (("9-12", "bars 9-12: the piece has 10 bars"), ("6-5", "empty span"),
                          ("x", "expected bars A-B")):
        assert main(["generate", "--ckpt", str(folder), "--prompt-midi", str(path), "--infill-bars", bars,
                     "--out", str(tmp_path / "bad")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
    assert main(["generate", "--ckpt", str(folder), "--prompt-midi", str(path), "--keep-tracks", "9",
                 "--out", str(tmp_path / "bad")]) == 2
    assert "no such track" in capsys.readouterr().err


def test_the_stream_reorders_a_share_of_windows(tiny_shards):
    from amadeus.datamodule import MusicDataModule

    dm = MusicDataModule(str(tiny_shards), max_notes=64, batch_size=2, num_workers=0, pack=False, transpose=None,
                         fim_rate=0.5, accompaniment_rate=0.25)
    rows = [item for item in dm.train_windows()]
    marked = [is_marker(item["notes"][item["mask"]]).sum() for item in rows]
    assert {0, 2, 3} >= set(marked) and 0 < sum(m > 0 for m in marked) < len(rows)
    plain = MusicDataModule(str(tiny_shards), max_notes=64, batch_size=2, num_workers=0, pack=False, transpose=None)
    assert [r["mask"].sum() for r in rows] == [r["mask"].sum() for r in plain.train_windows()]  # lengths kept
    assert not any(is_marker(b["notes"][0][b["mask"][0]]).any() for b in dm.val_dataloader())  # left to right


def test_acceptance_figures_of_the_infill_benchmark():
    """benchmarks/infill.py --acceptance (issue 24): notes kept and added outside the span, the span's size and
    its pitch classes against the context."""
    import importlib.util
    from pathlib import Path

    from symusic import Note

    path = Path(__file__).parents[1] / "benchmarks" / "infill.py"
    spec = importlib.util.spec_from_file_location("infill_bench", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    src = song(0)
    ticks = bench.span_ticks(TOK, src, 5, 6)
    assert ticks == (4 * 4 * 480, 6 * 4 * 480)
    same = bench.acceptance_figures(src, src, ticks)
    assert same["kept_outside"] == 1 and same["extra_outside"] == 0 and same["span_ratio"] == 1
    assert same["pc_cosine"] > 0.75 and same["span_on_source_instruments"] == 1 and all(bench.passes(same).values())
    out = src.copy()
    out.tracks[0].notes = [n for n in out.tracks[0].notes if not ticks[0] <= n.time < ticks[1]]  # the flute's span gone
    out.tracks[1].notes.append(Note(0, 480, 61, 70))  # an extra note outside the span
    out.tracks[2].notes.pop(0)  # a note outside the span lost
    got = bench.acceptance_figures(src, out, ticks)
    outside = sum(1 for t in src.tracks for n in t.notes if not ticks[0] <= n.time < ticks[1])
    assert got["kept_outside"] == (outside - 1) / outside and got["extra_outside"] == 1 / outside
    assert got["span_ratio"] == (same["span_notes_source"] - 8) / same["span_notes_source"]
    assert got["span_drum_notes_result"] == got["span_drum_notes_source"] == 8
