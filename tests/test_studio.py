"""The browser studio: the generate function, its API endpoint (gradio_client) and the page in a
real headless Chromium. A tiny random-weight text model keeps it fast; the server listens on
127.0.0.1 only and is closed at the end."""
from __future__ import annotations

import os
import shutil
import socket
import tempfile
from pathlib import Path

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"

import pytest

from amadeus.sampling import TEXT_GUIDANCE
from midi_factory import make_score, part, write

pytestmark = pytest.mark.usefixtures("one_thread")

CAPTION = "A calm chorale in D minor, 3/4, at 96 bpm, for four voices"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
SCREENSHOT_ENV = "AMADEUS_STUDIO_SCREENSHOT"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


TINY = dict(d_model=32, n_layers=1, n_heads=2, head_width=32, head_heads=2, dropout=0.0, use_mlsdes=False)


def _tiny(**kwargs):
    """A random-weight tiny Amadeus (seconds to build; its output is random but always decodable)."""
    import torch

    from amadeus import Amadeus
    from amadeus.model.config import ModelConfig
    from amadeus.module import AmadeusModule

    torch.manual_seed(0)
    return Amadeus(AmadeusModule(network=ModelConfig(**TINY), **kwargs))


@pytest.fixture(scope="module")
def text_model():
    """Reads text through the bundled MiniLM."""
    return _tiny(text_encoder="all-MiniLM-L6-v2", text_max_length=32)


@pytest.fixture(scope="module")
def plain_model():
    return _tiny()


@pytest.fixture(scope="module")
def server(text_model, synthetic_midi_dir):
    """The studio page served in-process on a free loopback port; yields its URL."""
    from amadeus.studio import build_app

    app = build_app(text_model, captions=synthetic_midi_dir / "captions.jsonl")
    port = _free_port()
    app.queue().launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, share=False,
                       inbrowser=False, quiet=True)
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        app.close()


def _notes(path: str | Path) -> int:
    from symusic import Score

    return int(Score(str(path)).note_num())


# ------------------------------------------------------------------------------------------ library


def test_generate_writes_midi_roll_and_figures(text_model, tmp_path):
    from amadeus.studio import studio_generate

    gen = studio_generate(text_model, CAPTION, guidance=2.0, instruments=["Violin", "Drums"], tempo=96,
                          time_signature="3/4", key="D minor", length_unit="notes", length=24, steps=2, seed=3,
                          out_dir=tmp_path)
    assert _notes(gen.midi) > 0 and gen.piano_roll.stat().st_size > 1000
    assert gen.figures["notes"] == _notes(gen.midi) and gen.figures["notes/s"] > 0
    assert "guard interventions" in gen.figures
    assert (gen.wav is None) == bool(gen.note)  # either audio or a note saying why not


def _note_list(path: str | Path) -> list[tuple[int, ...]]:
    from symusic import Score

    score = Score(str(path))
    return sorted((t.program, t.is_drum, n.time, n.duration, n.pitch, n.velocity) for t in score.tracks for n in t.notes)


def test_cli_api_and_studio_write_the_same_notes(text_model, tmp_path):
    """One policy per setting: the same caption, seed and length give the same notes from `amadeus generate`,
    `Amadeus.generate` and the studio, at their defaults (guidance TEXT_GUIDANCE with a caption)."""
    from amadeus import Amadeus
    from amadeus.cli import main
    from amadeus.studio import studio_generate

    folder = text_model.export(tmp_path / "model")
    assert main(["generate", "--ckpt", str(folder), "--text", CAPTION, "--seed", "5", "--num", "1",
                 "--max-notes", "24", "--min-notes", "24", "--out", str(tmp_path / "cli")]) == 0
    api = Amadeus.load(folder)
    api.generate(1, text=CAPTION, seed=5, max_notes=24, min_notes=24)[0].dump_midi(str(tmp_path / "api.mid"))
    studio = studio_generate(api, CAPTION, length_unit="notes", length=24, seed=5, out_dir=tmp_path / "studio")
    cli_notes = _note_list(tmp_path / "cli" / "sample_000.mid")
    assert len(cli_notes) > 0
    assert cli_notes == _note_list(tmp_path / "api.mid") == _note_list(studio.midi)
    assert api.last_result.settings["guidance"] == TEXT_GUIDANCE  # the caption's default, TEXT_GUIDANCE
    assert main(["generate", "--ckpt", str(folder), "--text", CAPTION, "--seed", "5", "--num", "1",
                 "--max-notes", "24", "--min-notes", "24", "--decode", "static", "--out", str(tmp_path / "static")]) == 0
    assert _note_list(tmp_path / "static" / "sample_000.mid") == cli_notes  # static decoding: the same notes


def test_continue_and_regenerate_an_upload(plain_model, tmp_path):
    from amadeus.studio import studio_generate

    model = plain_model
    notes = [(i * 480, 480, 60 + i % 7, 80) for i in range(16)]
    src = write(make_score([part(notes, program=0)], tempos=[(0, 100.0)], time_signatures=[(0, 4, 4)]),
                tmp_path / "mine.mid")
    cont = studio_generate(model, upload=src, upload_mode="continue", prompt_bars=2, length_unit="bars",
                           length=2, out_dir=tmp_path / "cont")
    assert _notes(cont.midi) >= 8  # the two prompt bars are kept
    regen = studio_generate(model, upload=src, upload_mode="regenerate", regenerate=["instrument"],
                            instruments=["Violin"], out_dir=tmp_path / "regen")
    from symusic import Score

    score = Score(str(regen.midi))
    assert score.note_num() == 16 and {t.program for t in score.tracks if len(t.notes)} == {40}


def test_bad_input_gives_one_clear_message(plain_model, text_model, tmp_path):
    from amadeus.studio import StudioError, studio_generate

    plain = plain_model
    junk = tmp_path / "junk.mid"
    junk.write_text("this is not MIDI")
    with pytest.raises(StudioError, match="not a MIDI file"):
        studio_generate(text_model, upload=junk, out_dir=tmp_path)
    with pytest.raises(StudioError, match="impossible control.*low end is above the high end"):
        studio_generate(text_model, pitch_low=80, pitch_high=40, out_dir=tmp_path)
    with pytest.raises(StudioError, match="trained without text"):
        studio_generate(plain, CAPTION, out_dir=tmp_path)
    with pytest.raises(StudioError, match="denoising steps"):
        studio_generate(plain, steps=99, out_dir=tmp_path)


def test_steps_tradeoff_reads_the_benchmark(tmp_path):
    from amadeus.studio import steps_tradeoff

    assert "not measured" in steps_tradeoff(tmp_path / "absent.json")
    rows = [{"method": "amadeus", "size": "tiny", "batch": 1, "steps": s, "notes_per_s": v, "device": "cpu"}
            for s, v in ((1, 200.0), (4, 100.0))]
    (tmp_path / "g.json").write_text(__import__("json").dumps({"rows": rows}))
    text = steps_tradeoff(tmp_path / "g.json")
    assert "S=1: 200" in text and "S=4: 100" in text


def test_command_without_checkpoint_says_how_to_make_one(tmp_path, monkeypatch, capsys):
    from amadeus.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["studio"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "make demo" in err and "--ckpt" in err


# ------------------------------------------------------------------------------------------ the API


def test_api_generate_through_gradio_client(server):
    from gradio_client import Client, handle_file

    client = Client(server, verbose=False, download_files=tempfile.mkdtemp(prefix="studio-client-"))
    out = client.predict(CAPTION, api_name="/generate")
    assert str(out[0]).endswith(".mid") and _notes(out[0]) > 0
    bad = Path(tempfile.mkdtemp(prefix="studio-bad-")) / "bad.mid"
    bad.write_text("not midi at all")
    with pytest.raises(Exception, match="not a MIDI file"):
        client.predict(CAPTION, upload=handle_file(str(bad)), api_name="/generate")
    again = client.predict("", length_unit="notes", length=12, api_name="/generate")  # still serving
    assert _notes(again[0]) > 0


# ------------------------------------------------------------------------------------------ the page


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium browser installed (make install installs Debian's "
                                             "chromium where apt is available)")
def test_page_in_headless_chromium(server, tmp_path):
    from playwright.sync_api import sync_playwright

    shot = Path(os.environ.get(SCREENSHOT_ENV) or tmp_path / "studio.png")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=CHROMIUM, headless=True,
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage"])
        context = browser.new_context(viewport={"width": 1400, "height": 1500}, accept_downloads=True)
        try:
            page = context.new_page()
            page.set_default_timeout(30_000)
            page.goto(server, wait_until="domcontentloaded")
            page.locator("#caption textarea").fill(CAPTION)
            page.locator("#generate").click()
            page.locator("#piano-roll img").wait_for(state="visible", timeout=45_000)
            link = page.locator("#midi-out a").first
            link.wait_for(state="attached", timeout=15_000)
            page.locator("#figures").get_by_text("guard interventions").wait_for(timeout=15_000)
            with page.expect_download(timeout=15_000) as info:
                link.click()
            midi = tmp_path / "download.mid"
            info.value.save_as(midi)
            shot.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(shot), full_page=True)
        finally:
            context.close()
            browser.close()
    assert _notes(midi) > 0
    assert shot.stat().st_size > 10_000


def test_command_without_gradio_says_what_to_install(monkeypatch, capsys):
    import importlib.util

    from amadeus.cli import main

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "gradio" else real(name, *a))
    assert main(["studio", "--ckpt", "whatever.ckpt"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "pip install 'amadeus[studio]'" in err


def test_infill_and_accompany_an_upload(plain_model, tmp_path):
    from symusic import Score

    from amadeus.studio import StudioError, studio_generate

    notes = [(i * 480, 480, 60 + i % 7, 80) for i in range(32)]  # 8 bars of 4/4
    bass = [(i * 960, 960, 36 + i % 5, 80) for i in range(16)]
    src = write(make_score([part(notes, program=0, name="Piano"), part(bass, program=32, name="Bass")],
                           tempos=[(0, 100.0)], time_signatures=[(0, 4, 4)]), tmp_path / "mine.mid")
    fill = studio_generate(plain_model, upload=src, upload_mode="infill", infill_bars="3-4", out_dir=tmp_path / "i")
    got = Score(str(fill.midi))
    outside = sorted((n.time, n.pitch) for t in got.tracks for n in t.notes if not 3840 <= n.time < 7680)
    assert outside == sorted((n[0], n[2]) for n in notes + bass if not 3840 <= n[0] < 7680)
    acc = studio_generate(plain_model, upload=src, upload_mode="accompany", keep_tracks="Bass", out_dir=tmp_path / "a")
    bass_out = [t for t in Score(str(acc.midi)).tracks if t.name == "Bass"]
    assert [(n.time, n.pitch) for n in bass_out[0].notes] == [(n[0], n[2]) for n in bass]
    with pytest.raises(StudioError, match="A-B"):
        studio_generate(plain_model, upload=src, upload_mode="infill", infill_bars="three", out_dir=tmp_path)
    with pytest.raises(StudioError, match="the piece has 8 bars"):
        studio_generate(plain_model, upload=src, upload_mode="infill", infill_bars="7-9", out_dir=tmp_path)
