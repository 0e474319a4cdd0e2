"""Safe checkpoint loading, clear mismatch errors, `amadeus export`."""
from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import pytest
import torch

from amadeus import Amadeus
from amadeus.api import export, load_module
from amadeus.checkpoint import CheckpointError, read_checkpoint
from amadeus.cli import main as cli_main
from amadeus.sampling import generate

SRC = Path(__file__).resolve().parents[1] / "src"


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny tensors run best on one thread


def test_read_and_rebuild(trained_tiny):
    module, ckpt = trained_tiny
    state, hp = read_checkpoint(ckpt)
    assert hp["tokenizer_hash"] == module.tokenizer.config_hash
    rebuilt = load_module(ckpt)
    for k, v in module.state_dict().items():
        assert torch.equal(rebuilt.state_dict()[k], v)


class Bomb:
    """Unpickling this runs code (writes a marker file)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


def test_pickle_bomb_checkpoint_is_refused(trained_tiny, tmp_path):
    marker = tmp_path / "pwned.txt"
    module = trained_tiny[0]
    bomb = tmp_path / "bomb.ckpt"
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": {"payload": Bomb(marker)}}, bomb)
    with pytest.raises(CheckpointError, match="refused to load"):
        read_checkpoint(bomb)
    with pytest.raises(CheckpointError, match="refused"):
        Amadeus.load(bomb)
    assert not marker.exists()


def _tampered(trained_tiny, tmp_path, **changes) -> Path:
    state, hp = read_checkpoint(trained_tiny[1])
    for key, value in changes.items():
        if key == "network":
            hp["network"] = {**hp["network"], **value}
        elif key == "drop":
            state.pop(value)
        else:
            hp[key] = value
    path = tmp_path / "tampered.ckpt"
    torch.save({"state_dict": state, "hyper_parameters": hp}, path)
    return path


def test_mismatches_are_named(trained_tiny, tmp_path):
    with pytest.raises(CheckpointError, match="tokenizer hash deadbeefdeadbeef was saved, but this code gives"):
        load_module(_tampered(trained_tiny, tmp_path, tokenizer_hash="deadbeefdeadbeef"))
    with pytest.raises(CheckpointError, match=r"shape mismatch: .*checkpoint \(.*64.*\) vs code \(.*96"):
        load_module(_tampered(trained_tiny, tmp_path, network={"d_model": 96}))
    with pytest.raises(CheckpointError, match="missing 1 tensors .*head.mask_emb"):
        load_module(_tampered(trained_tiny, tmp_path, drop="head.mask_emb"))
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_module(tmp_path / "nope.ckpt")
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="junk.ckpt"):
        load_module(junk)
    out = export(trained_tiny[1], tmp_path / "export")
    tok = json.loads((out / "tokenizer.json").read_text())
    tok["config"]["velocity_bins"] = 16
    tok.pop("config_hash")
    (out / "tokenizer.json").write_text(json.dumps(tok))
    with pytest.raises(CheckpointError, match="disagrees with config.json"):
        load_module(out)


def test_lightning_checkpoint_loads_with_weights_only(trained_tiny, tmp_path):
    """A checkpoint written by a real Trainer (optimizer, loops, callbacks state) passes weights_only."""
    from amadeus.module import AmadeusModule

    module = AmadeusModule(network=trained_tiny[0].hparams["network"], warmup_steps=1)
    tokens = torch.as_tensor(generate(trained_tiny[0], num=1, max_notes=30, min_notes=30, seed=0).tokens[0])
    batch = {"notes": tokens[None].repeat(2, 1, 1), "mask": torch.ones(2, len(tokens), dtype=torch.bool)}
    loader = torch.utils.data.DataLoader([batch], batch_size=None)
    trainer = L.Trainer(accelerator="cpu", max_steps=2, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=str(tmp_path), enable_checkpointing=False)
    trainer.fit(module, train_dataloaders=loader)
    ckpt = tmp_path / "real.ckpt"
    trainer.save_checkpoint(ckpt)
    model = Amadeus.load(ckpt)
    assert model.sample(1, max_notes=10, seed=0).tokens[0].shape[1] == 8


def test_export_command(trained_tiny, tmp_path, capsys):
    assert cli_main(["export", str(trained_tiny[1]), str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "model.safetensors").is_file()
    assert cli_main(["export", str(tmp_path / "missing.ckpt"), str(tmp_path / "out2")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "missing.ckpt" in err[0]


def test_no_lenient_loading_in_the_sources():
    text = "\n".join(p.read_text() for p in SRC.rglob("*.py"))
    assert "strict=False" not in text and "weights_only=False" not in text
