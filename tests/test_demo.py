"""`amadeus demo`'s stages on the synthetic shards: training through the one LightningCLI factory, sampling."""
from __future__ import annotations

from pathlib import Path

import pytest

from amadeus.commands import demo

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.usefixtures("one_thread")


def test_demo_fit_and_sample_stages(tiny_shards, tmp_path, capsys):
    last, metrics = demo._fit(str(ROOT / "configs" / "tiny.yaml"), tmp_path / "train",
                              [f"--data.data_dir={tiny_shards}", "--data.max_notes=32", "--data.batch_size=4",
                               "--trainer.max_steps=2", "--trainer.val_check_interval=2",
                               "--trainer.limit_val_batches=1"])
    assert last.is_file() and last.suffix == ".ckpt"
    assert "val/loss" in metrics and "val/diffusion" in metrics
    written, checked = demo._sample(last, tmp_path, 1, tiny_shards)
    assert [p.name for p in written] == ["sample_0.mid"] and (tmp_path / "sample_0.png").is_file()
    assert 0.0 <= checked["degenerate_rate"] <= 1.0 and checked["limits"]["max_voices"] >= 4
    out = capsys.readouterr().out
    assert "at once" in out and "degenerate samples:" in out


def test_demo_refuses_a_missing_config(tmp_path, capsys):
    from amadeus.cli import main

    assert main(["demo", "--config", str(tmp_path / "nope.yaml"), "--out", str(tmp_path)]) == 2
    assert "not found" in capsys.readouterr().err
