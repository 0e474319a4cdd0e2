"""Piano-roll PNGs and WAV rendering (local soundfont only; a clear message without one)."""
from __future__ import annotations

import logging
import wave

import numpy as np
import pytest

import amadeus.render as render
from amadeus.render import RenderError, find_soundfont, piano_roll_figure, piano_roll_png, render_wav
from midi_factory import block_chords, make_score, part


def piece():
    piano = part(block_chords([[60, 64, 67], [62, 65, 69], [59, 62, 67]] * 4), program=0)
    violin = part([(i * 480, 480, 76 + i % 3, 90) for i in range(12)], program=40)
    drums = part([(i * 240, 120, 42, 80) for i in range(24)], is_drum=True)
    return make_score([piano, violin, drums], time_signatures=[(0, 3, 4)], tempos=[(0, 120.0)])


def test_piano_roll_png(tmp_path):
    path = piano_roll_png(piece(), tmp_path / "roll.png", title="three instruments")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


def test_piano_roll_colours_legend_and_bar_lines():
    fig = piano_roll_figure(piece())
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["Acoustic Grand Piano", "Violin", "Drums"]
    colours = {tuple(np.round(c.get_facecolor()[0], 3)) for c in ax.collections}
    assert len(colours) == 3  # one colour per instrument
    assert len(ax.lines) == 4  # 12 quarters of 3/4: bar lines at 0, 3, 6, 9
    assert sorted(l.get_xdata()[0] for l in ax.lines) == [0, 3, 6, 9]


def test_empty_score_still_draws(tmp_path):
    from symusic import Score

    assert piano_roll_png(Score(480), tmp_path / "empty.png").is_file()


def test_wav_with_the_installed_soundfont(tmp_path, monkeypatch):
    """With MuseScore_General.sf3 installed (`make soundfont`): audible stereo WAV. Without: None."""
    monkeypatch.delenv(render.SOUNDFONT_ENV, raising=False)
    sf = find_soundfont()
    path = render_wav(piece(), tmp_path / "a.wav", sample_rate=22050)
    if sf is None:
        assert path is None and not (tmp_path / "a.wav").exists()
        return
    assert sf.name.startswith("MuseScore_General")  # never TimGM6mb
    with wave.open(str(path)) as w:
        assert w.getnchannels() == 2 and w.getframerate() == 22050
        frames = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16)
    assert w.getnframes() > 22050 * 5 and np.abs(frames).max() > 1000  # 6 s of audible sound


def test_soundfont_from_the_environment(tmp_path, monkeypatch):
    fake = tmp_path / "mine.sf2"
    fake.write_bytes(b"x")
    monkeypatch.setenv(render.SOUNDFONT_ENV, str(fake))
    assert find_soundfont() == fake
    monkeypatch.setenv(render.SOUNDFONT_ENV, str(tmp_path / "missing.sf2"))
    assert find_soundfont() != tmp_path / "missing.sf2"


def test_no_soundfont_is_a_message_not_a_crash(tmp_path, monkeypatch, caplog):
    monkeypatch.delenv(render.SOUNDFONT_ENV, raising=False)
    monkeypatch.setattr(render, "SOUNDFONT_PATHS", ())
    with caplog.at_level(logging.WARNING):
        assert render_wav(piece(), tmp_path / "a.wav") is None
    assert "no soundfont found" in caplog.text and not (tmp_path / "a.wav").exists()
    with pytest.raises(RenderError, match="TimGM6mb"):
        bad = tmp_path / "TimGM6mb.sf2"
        bad.write_bytes(b"x")
        render_wav(piece(), tmp_path / "b.wav", soundfont=bad)
