"""`amadeus generate`: files, generation.json, continuation, regeneration, and exit code 2 on bad input."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from symusic import Score

from amadeus.cli import main as cli_main
from amadeus.checkpoint import read_checkpoint
from amadeus.render import NO_SOUNDFONT, find_soundfont
from midi_factory import block_chords, make_score, part


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny tensors run best on one thread


def generate(*args: str) -> int:
    return cli_main(["generate", *args])


def test_generate_writes_midi_png_wav_and_report(trained_tiny, tmp_path):
    out = tmp_path / "out"
    rc = generate("--ckpt", str(trained_tiny[1]), "--num", "2", "--max-notes", "40", "--steps", "2",
                  "--order", "harmony", "--temperature", "0.9", "--temperature", "velocity=0.5", "--top-p", "0.9", "--seed", "5",
                  "--control", "instrument=piano,violin", "--control", "tempo=96", "--control", "time_signature=3/4",
                  "--png", "--wav", "--out", str(out))
    assert rc == 0
    for i in range(2):
        score = Score(str(out / f"sample_{i:03d}.mid"))
        assert score.note_num() > 0 and {t.program for t in score.tracks} <= {0, 40}
        assert (out / f"sample_{i:03d}.png").stat().st_size > 1000
        assert (out / f"sample_{i:03d}.wav").is_file() == (find_soundfont() is not None)
    report = json.loads((out / "generation.json").read_text())
    assert report["wav"] == ("written" if find_soundfont() else NO_SOUNDFONT)
    assert report["seeds"] == [5, 6] and report["settings"]["control"][1] == "tempo=96"
    assert report["notes"] > 0 and report["notes_per_s"] > 0 and report["seconds_sampling"] > 0
    assert "guard_interventions" in report and report["settings"]["temperature"] == ["0.9", "velocity=0.5"]
    assert report["settings"]["order"] == "harmony"


def test_same_seed_same_files(trained_tiny, tmp_path):
    for name in ("a", "b"):
        assert generate("--ckpt", str(trained_tiny[1]), "--num", "1", "--max-notes", "30", "--out", str(tmp_path / name)) == 0
    assert (tmp_path / "a" / "sample_000.mid").read_bytes() == (tmp_path / "b" / "sample_000.mid").read_bytes()


def test_continuation_and_regeneration(trained_tiny, tmp_path):
    tok = trained_tiny[0].tokenizer
    prompt = make_score([part(block_chords([[60, 64, 67], [62, 65, 69]] * 8), program=0)],
                        time_signatures=[(0, 4, 4)])
    path = tmp_path / "prompt.mid"
    prompt.dump_midi(str(path))
    rc = generate("--ckpt", str(trained_tiny[1]), "--num", "1", "--max-notes", "30", "--prompt-midi", str(path),
                  "--prompt-bars", "2", "--out", str(tmp_path / "cont"))
    assert rc == 0
    first = tok.encode(path)

    def notes(score):
        return {(t.program, n.time, n.duration, n.pitch) for t in score.tracks for n in t.notes}  # velocity: binned

    two_bars = {n for n in notes(Score(str(path))) if n[1] < 2 * 4 * 480}
    assert len(two_bars) == 24 and two_bars <= notes(Score(str(tmp_path / "cont" / "sample_000.mid")))
    rc = generate("--ckpt", str(trained_tiny[1]), "--num", "1", "--prompt-midi", str(path), "--regenerate", "velocity",
                  "--out", str(tmp_path / "revoiced"))
    assert rc == 0
    again = tok.encode(tmp_path / "revoiced" / "sample_000.mid")
    np.testing.assert_array_equal(np.delete(again, 7, 1), np.delete(first, 7, 1))


def _tampered_ckpt(trained_tiny, tmp_path):
    state, hp = read_checkpoint(trained_tiny[1])
    hp["tokenizer_hash"] = "0000000000000000"
    path = tmp_path / "incompatible.ckpt"
    torch.save({"state_dict": state, "hyper_parameters": hp}, path)
    return path


@pytest.mark.parametrize("extra, message", [
    (["--control", "instrument=kazoo"], "unknown instrument name 'kazoo'"),
    (["--control", "time_signature=7/3"], "impossible time signature 7/3"),
    (["--steps", "0"], "--steps: steps must be an integer in 1..8"),
    (["--steps", "9"], "--steps: steps must be an integer in 1..8"),
    (["--guidance", "2"], "--guidance needs --text"),
    (["--plausibility", "1"], "--plausibility: plausibility must be in [0, 1)"),
    (["--temperature", "loud=2"], "unknown attribute 'loud'"),
    (["--top-p", "1.5"], "top_p must be in (0, 1]"),
    (["--regenerate", "velocity"], "need --prompt-midi"),
    (["--prompt-midi", "missing.mid"], "missing.mid: no such file"),
    (["--text", "a calm piece"], "no text encoder"),
    (["--threads", "-1"], "--threads must be >= 0"),
    (["--order", "random"], "order must be 'confidence'"),
])
def test_bad_arguments_exit_2_with_one_line(trained_tiny, tmp_path, capsys, extra, message):
    rc = generate("--ckpt", str(trained_tiny[1]), "--num", "1", "--max-notes", "5", "--out", str(tmp_path / "x"), *extra)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and message in err[0], err


def test_bad_checkpoints_exit_2(trained_tiny, tmp_path, capsys):
    for ckpt, message in [(tmp_path / "nope.ckpt", "no such checkpoint"),
                          (_tampered_ckpt(trained_tiny, tmp_path), "tokenizer hash 0000000000000000 was saved")]:
        rc = generate("--ckpt", str(ckpt), "--out", str(tmp_path / "x"))
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and len(err) == 1 and message in err[0], err


def test_missing_required_argument_is_a_usage_error(tmp_path):
    with pytest.raises(SystemExit) as e:
        generate("--out", str(tmp_path))
    assert e.value.code == 2


def test_wav_without_soundfont_is_a_message(trained_tiny, tmp_path, monkeypatch, capsys):
    import amadeus.render as render

    monkeypatch.delenv(render.SOUNDFONT_ENV, raising=False)
    monkeypatch.setattr(render, "SOUNDFONT_PATHS", ())
    rc = generate("--ckpt", str(trained_tiny[1]), "--num", "1", "--max-notes", "10", "--wav", "--out", str(tmp_path))
    assert rc == 0 and "no soundfont found" in capsys.readouterr().err
    assert (tmp_path / "sample_000.mid").is_file() and not (tmp_path / "sample_000.wav").exists()


def test_sampling_flags_follow_the_one_merge_rule():
    """A per-attribute flag changes that attribute of the per-attribute defaults and keeps the others, as the
    API's mapping does; a global value sets every attribute; repeated flags apply left to right; "*" sets the
    attributes without a value of their own; unknown attributes and non-numbers are usage errors."""
    import argparse

    from amadeus.commands._common import UsageError, add_sampling_arguments, sampling_options
    from amadeus.sampling import DEFAULT_TOP_P, SamplingOptions
    from amadeus.grammar import ATTRIBUTES

    parser = argparse.ArgumentParser()
    add_sampling_arguments(parser)

    def options(*flags: str) -> SamplingOptions:
        return sampling_options(parser.parse_args(list(flags)))

    assert options() == SamplingOptions()
    opts = options("--top-p", "pitch=0.7", "--temperature", "0.9")
    assert opts == SamplingOptions(top_p={"pitch": 0.7}, temperature=0.9)  # the CLI and the API agree
    assert opts.top_p["pitch"] == 0.7 and opts.top_p["chord"] == DEFAULT_TOP_P["chord"]
    assert opts.temperature == 0.9
    def values(opts: SamplingOptions, which: int) -> dict[str, float]:
        return dict(zip(ATTRIBUTES, opts.per_attribute(ATTRIBUTES)[which]))

    opts = options("--top-p", "1", "--top-p", "pitch=0.5", "--top-k", "velocity=3")
    assert [values(opts, 1)[a] for a in ("pitch", "chord", "tempo")] == [0.5, 1.0, 1.0]
    assert [values(opts, 2)[a] for a in ("velocity", "pitch")] == [3, 0]
    opts = options("--top-p", "*=0.5")  # the attributes without a value of their own
    assert [values(opts, 1)[a] for a in ("pitch", "chord", "tempo")] == [0.85, 0.7, 0.5]
    assert opts == SamplingOptions(top_p={"*": 0.5})  # what the studio's slider passes
    for bad in (["--top-p", "loudness=0.5"], ["--temperature", "hot"], ["--steps", "0"]):
        with pytest.raises(UsageError):
            options(*bad)
