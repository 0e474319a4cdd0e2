"""AmadeusModule + Lightning: steps, checkpoints, resume, DDP, CLI."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from amadeus.cli import main as cli_main
from amadeus.datamodule import MusicDataModule
from amadeus.model.config import ModelConfig
from amadeus.module import AmadeusModule

ROOT = Path(__file__).resolve().parents[1]
TINY = ModelConfig(d_model=32, n_layers=2, n_heads=2, head_width=32, head_heads=2, dropout=0.0)


def datamodule(shards: Path, **kw) -> MusicDataModule:
    args = dict(data_dir=str(shards), max_notes=32, batch_size=4, num_workers=0, shuffle_buffer=16, seed=0)
    args.update(kw)
    return MusicDataModule(**args)


def trainer(root: Path, max_steps: int, **kw) -> L.Trainer:
    args = dict(accelerator="cpu", devices=1, max_steps=max_steps, logger=False, enable_progress_bar=False,
                enable_model_summary=False, default_root_dir=str(root), limit_val_batches=2,
                val_check_interval=max_steps, check_val_every_n_epoch=None, num_sanity_val_steps=0)
    args.update(kw)
    return L.Trainer(**args)


def probe(module: AmadeusModule) -> torch.Tensor:
    """Deterministic outputs of backbone + head on a fixed input (eval mode)."""
    module.eval()
    g = torch.Generator().manual_seed(0)
    notes = torch.stack([torch.randint(0, v, (2, 12), generator=g) for v in module.tokenizer.vocab_sizes], -1)
    masked = torch.rand(2, 12, module.K, generator=g) < 0.5
    with torch.no_grad():
        z = module.backbone(notes).z
        return torch.cat([lg.flatten() for lg in module.head(z, notes, masked)])


def test_shared_step_loss_finite_and_metrics(tiny_shards):
    module = AmadeusModule(network=TINY)
    dm = datamodule(tiny_shards)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    out = module.shared_step(batch, "train")
    assert torch.isfinite(out["loss"]) and out["loss"] > 0
    assert out["mlsdes"] <= 0  # log of a mean of exp(-d/tau) with d >= 0
    out["loss"].backward()
    assert all(p.grad is not None for p in module.backbone.parameters() if p.requires_grad)


def test_opening_weight_only_on_the_first_notes_of_a_piece_in_training():
    from amadeus.tokenizer import COL_METRIC, METRIC_SOS

    module = AmadeusModule(network=TINY, opening_weight=8.0, opening_notes=2)
    inputs = torch.zeros(3, 5, module.K, dtype=torch.long)
    inputs[0, 0, COL_METRIC] = METRIC_SOS  # row 0 opens a piece; rows 1, 2 are cut from the middle
    inputs[2, 1, COL_METRIC] = METRIC_SOS  # (an SOS that is not its window's first row changes nothing)
    one = torch.ones(3, 5, dtype=torch.long)  # one window per row
    w = module._opening_weight(inputs, one, "train")
    assert w.tolist() == [[8, 8, 1, 1, 1], [1] * 5, [1] * 5]
    # packed: row 2 holds a window cut from a piece's middle (rows 0..0) and a piece's opening (rows 1..4)
    w = module._opening_weight(inputs, torch.tensor([[1] * 5, [1] * 5, [1, 2, 2, 2, 2]]), "train")
    assert w.tolist() == [[8, 8, 1, 1, 1], [1] * 5, [1, 8, 8, 1, 1]]
    assert module._opening_weight(inputs, one, "val") is None  # validation and test report the plain ELBO
    assert AmadeusModule(network=TINY)._opening_weight(inputs, one, "train") is None
    with pytest.raises(ValueError, match="opening_weight"):
        AmadeusModule(network=TINY, opening_weight=0.0)


def test_nonfinite_loss_stops_with_clear_message(tiny_shards, monkeypatch):
    module = AmadeusModule(network=TINY)
    dm = datamodule(tiny_shards)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    import amadeus.model.head as head

    real = head.diffusion_loss
    monkeypatch.setattr(head, "diffusion_loss", lambda *a, **k: (real(*a, **k)[0] * float("nan"), real(*a, **k)[1]))
    with pytest.raises(FloatingPointError, match="non-finite loss at step 0"):
        module.training_step(batch, 0)


class LrSpy(L.Callback):
    """Records (global_step, lr) at the start of every training batch."""

    def __init__(self) -> None:
        self.seen: list[tuple[int, float]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.seen.append((trainer.global_step, trainer.optimizers[0].param_groups[0]["lr"]))


def test_checkpoint_roundtrip_and_resume(tiny_shards, tmp_path):
    torch.manual_seed(0)
    module = AmadeusModule(network=TINY, warmup_steps=2)
    ckpt_cb = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_top_k=-1, every_n_train_steps=3)
    spy = LrSpy()
    t = trainer(tmp_path, 5, callbacks=[ckpt_cb, spy])
    t.fit(module, datamodule=datamodule(tiny_shards))
    at3 = tmp_path / "ckpt" / "epoch=0-step=3.ckpt"
    assert at3.is_file() and t.global_step == 5

    # load_from_checkpoint alone rebuilds the model and the tokenizer: identical outputs.
    t.save_checkpoint(tmp_path / "final.ckpt")
    loaded = AmadeusModule.load_from_checkpoint(tmp_path / "final.ckpt", map_location="cpu", weights_only=True)
    assert loaded.tokenizer.config_hash == module.tokenizer.config_hash
    assert loaded.config == module.config
    torch.testing.assert_close(probe(loaded), probe(module), rtol=0, atol=0)

    # Resuming from step 3 continues at step 3 with the same learning-rate schedule.
    resumed_spy = LrSpy()
    t2 = trainer(tmp_path, 5, callbacks=[resumed_spy])
    t2.fit(AmadeusModule(network=TINY, warmup_steps=2), datamodule=datamodule(tiny_shards), ckpt_path=str(at3))
    assert t2.global_step == 5
    assert [lr for _, lr in resumed_spy.seen] == pytest.approx([lr for _, lr in spy.seen[3:]])
    assert [s for s, _ in resumed_spy.seen] == [3, 4]


def test_init_from_loads_every_pretrained_weight(tiny_shards, tmp_path):
    pre = AmadeusModule(network=TINY)
    t = trainer(tmp_path, 1, enable_checkpointing=False)
    t.fit(pre, datamodule=datamodule(tiny_shards))
    path = tmp_path / "pre.ckpt"
    t.save_checkpoint(path)
    text = AmadeusModule(network=TINY, text_encoder="all-MiniLM-L6-v2", init_from=str(path))
    theirs = pre.state_dict()
    ours = text.state_dict()
    new = set(ours) - set(theirs)
    assert new and all("prefix" in n or "ciem" in n for n in new), new
    for name, tensor in theirs.items():
        torch.testing.assert_close(ours[name], tensor, rtol=0, atol=0, msg=name)


def test_cli_help_lists_every_subcommand(capsys):
    assert cli_main(["--help"]) == 0
    out = capsys.readouterr().out
    for command in ("fit", "validate", "test", "corpus", "preprocess", "generate", "evaluate", "export"):
        assert f"  {command} " in out
    assert cli_main(["nonsense"]) == 2


def test_cli_fit_tiny_config_fast_dev_run(tiny_shards, tmp_path):
    cli_main(["fit", "-c", str(ROOT / "configs" / "tiny.yaml"), f"--data.data_dir={tiny_shards}",
              "--data.max_notes=32", "--data.batch_size=4", "--trainer.fast_dev_run=2",
              f"--trainer.default_root_dir={tmp_path}", f"--trainer.logger.init_args.save_dir={tmp_path}"])


def test_ddp_two_cpu_processes(tiny_shards, tmp_path):
    """`amadeus fit` with --trainer.strategy ddp on 2 CPU processes (gloo)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "amadeus.cli", "fit", "-c", str(ROOT / "configs" / "tiny.yaml"),
           f"--data.data_dir={tiny_shards}", "--data.max_notes=32", "--data.batch_size=2",
           "--trainer.accelerator=cpu", "--trainer.devices=2", "--trainer.strategy=ddp",
           "--trainer.fast_dev_run=2", f"--trainer.default_root_dir={tmp_path}",
           f"--trainer.logger.init_args.save_dir={tmp_path}",
           "--model.network.d_model=32", "--model.network.n_layers=2", "--model.network.n_heads=2",
           "--model.network.head_width=32", "--model.network.head_heads=2"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "MEMBER: 2/2" in proc.stderr + proc.stdout  # both ranks joined the process group


def test_weight_decay_only_on_linear_weights():
    """Every trainable parameter lands in exactly one AdamW group: decay for the weight matrices of
    linear maps, none for embeddings (backbone and head attribute tables, slot, [MASK], CIEM null),
    norm gains and biases. Checked by name against the model's layout, text prefix projection included."""
    module = AmadeusModule(network=TINY, text_encoder="all-MiniLM-L6-v2", weight_decay=0.1)
    groups = module.configure_optimizers()["optimizer"].param_groups
    assert [g["weight_decay"] for g in groups] == [0.1, 0.0]
    group_of = {id(p): i for i, g in enumerate(groups) for p in g["params"]}
    assert sum(len(g["params"]) for g in groups) == len(group_of)  # no parameter twice

    embeddings = ("backbone.embed.tables.table.weight", "head.tables.table.weight", "head.slot", "head.mask_emb",
                  "head.ciem.null")
    seen = set()
    for name, p in module.named_parameters():
        if not p.requires_grad:  # the frozen text encoder
            assert id(p) not in group_of, name
            continue
        leaf = name.rsplit(".", 2)
        is_norm = "norm" in leaf[-2] if len(leaf) > 1 else False
        expect_no_decay = name in embeddings or name.endswith(".bias") or is_norm
        assert group_of[id(p)] == (1 if expect_no_decay else 0), name
        seen.add(name)
    assert set(embeddings) <= seen
    assert any("prefix" in n and group_of[id(p)] == 0 for n, p in module.named_parameters() if p.requires_grad)
    assert any(n.startswith("head.out.") and n.endswith(".bias") for n in seen)


def test_sample_midi_callback_writes_samples_with_its_options(tmp_path):
    """SampleMidi turns its YAML arguments into a SamplingOptions (checked at startup) and writes .mid + .png."""
    from types import SimpleNamespace

    from amadeus.callbacks import SampleMidi
    from amadeus.sampling import SamplingOptions

    cb = SampleMidi(num_samples=2, max_notes=6, steps=2, audio=False)
    assert cb.options == SamplingOptions(max_notes=6, steps=2)
    with pytest.raises(ValueError, match="steps"):
        SampleMidi(steps=0)
    torch.manual_seed(0)
    module = AmadeusModule(network=TINY)
    module.train()
    fake = SimpleNamespace(sanity_checking=False, is_global_zero=True, loggers=[], default_root_dir=str(tmp_path),
                           current_epoch=3, global_step=7)
    cb.on_validation_epoch_end(fake, module)
    assert module.training  # the callback restores the mode
    names = sorted(p.name for p in (tmp_path / "samples" / "epoch=003").iterdir())
    assert names == ["sample_0.mid", "sample_0.png", "sample_1.mid", "sample_1.png"]


def _grad_norm(module: AmadeusModule) -> float:
    return float(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in module.parameters()
                                                       if p.grad is not None])))


def test_gradient_clipping_by_norm_on_one_device_and_on_a_sharded_model():
    """configure_gradient_clipping: Lightning's global-norm clip on one device / DDP; with a sharded strategy
    (FSDP, whose precision plugin refuses norm clipping) the sharded root module's own clip_grad_norm_."""
    from types import SimpleNamespace

    from lightning.pytorch.strategies import FSDPStrategy, SingleDeviceStrategy

    module = AmadeusModule(network=TINY)
    opt = module.configure_optimizers()["optimizer"]
    for p in module.parameters():
        p.grad = torch.full_like(p, 3.0)
    trainer = L.Trainer(accelerator="cpu", devices=1, gradient_clip_val=1.0, logger=False)
    trainer.strategy.connect(module)
    module._trainer = trainer
    assert _grad_norm(module) > 100
    module.configure_gradient_clipping(opt, 1.0, "norm")
    assert _grad_norm(module) == pytest.approx(1.0, rel=1e-4)  # the global norm, as torch's clip_grad_norm_

    calls = []
    sharded = FSDPStrategy()
    sharded.model = SimpleNamespace(clip_grad_norm_=lambda value: calls.append(value))
    module._trainer = SimpleNamespace(strategy=sharded)
    module.configure_gradient_clipping(opt, 0.5, "norm")
    assert calls == [0.5]  # the sharded model's own norm over every rank's shards
    module._trainer = SimpleNamespace(strategy=SingleDeviceStrategy("cpu"))
    assert isinstance(module.configure_callbacks(), list)


def test_weight_averaging_with_a_sharded_strategy_is_refused_at_start():
    from types import SimpleNamespace

    from lightning.pytorch.callbacks import EMAWeightAveraging
    from lightning.pytorch.strategies import FSDPStrategy, SingleDeviceStrategy

    from amadeus.errors import RunSetupError

    module = AmadeusModule(network=TINY, ema_decay=0.99)
    module._trainer = SimpleNamespace(strategy=SingleDeviceStrategy("cpu"))
    (ema,) = module.configure_callbacks()
    assert isinstance(ema, EMAWeightAveraging)
    module._trainer = SimpleNamespace(strategy=FSDPStrategy())
    with pytest.raises(RunSetupError, match="--model.ema_decay 0"):
        module.configure_callbacks()
    assert AmadeusModule(network=TINY).configure_callbacks() == []  # ema_decay 0: no averaging
