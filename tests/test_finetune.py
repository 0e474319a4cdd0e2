"""`amadeus finetune` end to end on a few synthetic pieces (from the session's tiny model), resumption, and
the bad inputs: each one line, exit code 2, and nothing written where the output folder would be."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from conftest import KEYS, chorale_like
from midi_factory import part, write

from amadeus.cli import main
from amadeus.finetune import FinetuneError, finetune, held_out_names, work_folder
from amadeus.finetune_training import Recipe

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = Recipe(lr=3e-3, warmup_steps=1, max_notes=32, batch_size=4)
FAST = dict(eval_pieces=2, eval_notes=24, samples=2, progress=False, device="cpu", workers=0, log=lambda m: None)


def _pieces(folder, n: int, seed: int = 0):
    """n short four-voice pieces, every other one with a drum part."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        key = list(KEYS)[i % 4]
        score = chorale_like(rng, KEYS[key], key.endswith("minor"), 4, bars=3, bpm=100.0 + 10 * i)
        if i % 2:
            score.tracks.append(part([(b * 480, 240, 36 if b % 2 == 0 else 38, 90) for b in range(12)], is_drum=True))
        write(score, folder / f"song_{i:02d}.mid")
    return folder


@pytest.fixture(scope="module")
def songs(tmp_path_factory):
    return _pieces(tmp_path_factory.mktemp("songs"), 12)


def _leftovers(out):
    return [p.name for p in out.parent.iterdir() if p.name.startswith((out.name, f".{out.name}"))]


def test_finetune_end_to_end(songs, trained_tiny, tmp_path):
    from amadeus import Amadeus

    out = tmp_path / "style"
    result = finetune(songs, trained_tiny[1], out, max_steps=2, recipe=SMALL, **FAST)
    report = json.loads((out / "report.json").read_text())
    assert report["steps"] == 2 and report["resumed_from"] == 0
    assert report["pieces"] == {"files": 12, "pieces": 12, "train": 10, "held_out": 2, "skipped": 0}
    assert report["held_out"] == held_out_names([f"song_{i:02d}.mid" for i in range(12)])
    for side in ("before", "after"):
        assert 0 <= report[side]["mean_oa"] <= 1 and report[side]["nll_per_note"] > 0
    assert report["after"]["nll_per_note"] < report["before"]["nll_per_note"]  # 2 steps at lr 3e-3 on these pieces
    assert [p.name for p in sorted((out / "samples").iterdir())] == ["sample_0.mid", "sample_1.mid"]
    model = Amadeus.load(out / "model.ckpt")
    assert model.tokenizer.config_hash == trained_tiny[0].tokenizer.config_hash
    first, second = result.lines()
    assert "fine-tuned 2 steps on 10 pieces" in first and "2 held-out pieces" in second
    assert _leftovers(out) == ["style"]  # no partial folder left beside it

    # a larger budget continues from the finished run's checkpoint; the same budget again does nothing
    more = finetune(songs, trained_tiny[1], out, max_steps=3, recipe=SMALL, **FAST)
    assert more.report["resumed_from"] == 2 and more.report["steps"] == 3
    again = finetune(songs, trained_tiny[1], out, max_steps=3, recipe=SMALL, **FAST)
    assert not again.trained and again.report["steps"] == 3
    assert _leftovers(out) == ["style"]


def test_weights_change_and_an_interrupted_run_continues(songs, trained_tiny, tmp_path):
    out = tmp_path / "run"
    finetune(songs, trained_tiny[1], out, max_steps=2, recipe=SMALL, **FAST)
    before = trained_tiny[0].state_dict()
    after = torch.load(out / "model.ckpt", weights_only=True)["state_dict"]
    assert any(not torch.equal(before[k], after[k]) for k in before)
    # what an interrupted run leaves: the work folder beside OUT, with its checkpoint at step 2
    (out / "report.json").unlink()
    out.rename(work_folder(out))
    result = finetune(songs, trained_tiny[1], out, max_steps=4, recipe=SMALL, **FAST)
    assert result.report["resumed_from"] == 2 and result.report["steps"] == 4
    assert _leftovers(out) == ["run"]


def test_few_pieces_train_on_all_and_say_so(trained_tiny, tmp_path):
    src = _pieces(tmp_path / "four", 4)
    (src / "broken.mid").write_bytes(b"MThd\x00\x00\x00\x06\x00\x01\x00\x05\x01\xe0")  # 5 tracks announced, none
    result = finetune(src, trained_tiny[1], tmp_path / "out", max_steps=1, recipe=SMALL, **FAST)
    r = result.report
    assert r["pieces"]["held_out"] == 0 and r["pieces"]["train"] == 4 and r["pieces"]["skipped"] == 1
    assert r["skipped"][0]["path"] == "broken.mid" and "truncated" in r["skipped"][0]["reason"]
    assert r["reference"].startswith("training pieces")
    assert "4 training pieces (fewer than 10: none held out)" in result.lines()[1]


def test_command_runs_and_prints_two_lines(songs, trained_tiny, tmp_path, capsys):
    out = tmp_path / "cmd"
    code = main(["finetune", str(songs), "--from", str(trained_tiny[1]), "--out", str(out), "--max-steps", "1",
                 "--eval-pieces", "1", "--eval-notes", "24", "--batch-size", "4", "--workers", "0",
                 "--quiet"])
    assert code == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("fine-tuned 1 steps") and "descriptor OA" in lines[1]
    assert (out / "model.ckpt").is_file() and len(list((out / "samples").glob("*.mid"))) == 1


def _other_tokenizer(ckpt, tmp_path):
    data = torch.load(ckpt, weights_only=True)
    data["hyper_parameters"]["tokenizer_hash"] = "0123456789abcdef"
    path = tmp_path / "other.ckpt"
    torch.save(data, path)
    return path


@pytest.mark.parametrize("case", ["empty", "no_midi", "all_damaged", "tokenizer", "zero_steps", "missing_ckpt",
                                  "both_budgets"])
def test_bad_input_is_one_line_and_writes_nothing(case, songs, trained_tiny, tmp_path, capsys):
    src, ckpt, extra = tmp_path / "src", str(trained_tiny[1]), ["--max-steps", "1"]
    src.mkdir()
    if case == "no_midi":
        (src / "notes.txt").write_text("not music")
    if case == "all_damaged":
        for i in range(3):
            (src / f"bad_{i}.mid").write_bytes(b"MThd garbage" * (i + 1))
    if case in ("tokenizer", "zero_steps", "both_budgets", "missing_ckpt"):
        src = songs
    if case == "tokenizer":
        ckpt = str(_other_tokenizer(trained_tiny[1], tmp_path))
    if case == "missing_ckpt":
        ckpt = str(tmp_path / "nope.ckpt")
    if case == "zero_steps":
        extra = ["--max-steps", "0"]
    out = tmp_path / "out"
    argv = ["finetune", str(src), "--from", ckpt, "--out", str(out), "--quiet", *extra]
    if case == "both_budgets":
        with pytest.raises(SystemExit) as e:  # argparse: --max-steps and --minutes exclude each other
            main(argv + ["--minutes", "1"])
        assert e.value.code == 2
    else:
        assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    if case != "both_budgets":
        assert len(err) == 1 and err[0].startswith("amadeus finetune: error: ")
    expected = {"empty": "empty: no MIDI files", "no_midi": "no readable MIDI", "all_damaged": "damaged",
                "tokenizer": "tokenizer hash 0123456789abcdef", "zero_steps": "the minimum is 1",
                "missing_ckpt": "no such checkpoint", "both_budgets": "not allowed with argument"}[case]
    assert expected in err[-1]
    assert not out.exists() and not work_folder(out).exists()


def test_a_time_budget_too_small_for_one_step(songs, trained_tiny, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(FinetuneError, match="fits no training step: one step takes .* the minimum is"):
        finetune(songs, trained_tiny[1], out, minutes=1e-6, recipe=SMALL, **FAST)
    assert not out.exists() and not work_folder(out).exists()


def test_an_output_folder_holding_something_else_is_refused(songs, trained_tiny, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    with pytest.raises(FinetuneError, match="exists and is not a fine-tune"):
        finetune(songs, trained_tiny[1], out, max_steps=1, recipe=SMALL, **FAST)
    assert (out / "keep.txt").read_text() == "precious" and not work_folder(out).exists()
    shutil.rmtree(out)


def test_held_out_share():
    assert held_out_names([f"{i}.mid" for i in range(9)]) == []
    ten = held_out_names([f"{i}.mid" for i in range(10)])
    assert len(ten) == 2 and ten == held_out_names([f"{i}.mid" for i in reversed(range(10))])
    assert len(held_out_names([f"{i}.mid" for i in range(100)])) == 20
    assert len(held_out_names([f"{i}.mid" for i in range(1000)])) == 64
