"""The Python API: export -> load round trip through `Amadeus`, identical samples."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from amadeus import Amadeus
from amadeus.api import export

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny tensors run best on one thread


def test_export_load_round_trip_gives_identical_samples(trained_tiny, tmp_path):
    _, ckpt = trained_tiny
    out = export(ckpt, tmp_path / "export")
    assert {p.name for p in out.iterdir()} == {"model.safetensors", "config.json", "tokenizer.json"}
    meta = json.loads((out / "config.json").read_text())
    assert meta["format"] == "amadeus.export" and meta["hparams"]["network"]["d_model"] == 64
    a, b = Amadeus.load(ckpt), Amadeus.load(out)
    kw = dict(max_notes=40, steps=2, seed=7, controls=["tempo=100"])
    for x, y in zip(a.sample(2, **kw).tokens, b.sample(2, **kw).tokens):
        np.testing.assert_array_equal(x, y)
    scores = b.generate(2, **kw)
    assert len(scores) == 2 and all(s.note_num() > 0 for s in scores)
    again = b.export(tmp_path / "again")  # the API writes the same folder format
    c = Amadeus.load(again)
    np.testing.assert_array_equal(c.sample(1, **kw).tokens[0], a.sample(1, **kw).tokens[0])


def test_exported_folder_is_never_unpickled(trained_tiny, tmp_path, monkeypatch):
    out = export(trained_tiny[1], tmp_path / "export")

    def forbidden(*a, **k):
        raise AssertionError("torch.load called on an exported folder")

    monkeypatch.setattr(torch, "load", forbidden)
    Amadeus.load(out)
