"""Long runs survive interruption (issue 14): `amadeus fit` itself, on 2 gloo processes, stopped by
SIGTERM and resumed with `--ckpt_path last` and with a file; exact continuation on one process;
checkpoints written before `tokenizer_hash` became a constructor argument; bf16 and FSDP on CPU.

The subprocess runs use the commands of docs/training.md ("Interruption and resumption") on configs/tiny.yaml, made smaller
by tests/resume-small.yaml (sizes only) and pointed at the synthetic shards."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SMALL = Path(__file__).with_name("resume-small.yaml")
AMADEUS = [sys.executable, "-m", "amadeus.cli"]


def _env() -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), OMP_NUM_THREADS="1", WANDB_MODE="offline",
               HF_HUB_OFFLINE="1", PYTHONWARNINGS="ignore")
    return env


def _fit_args(shards: Path, root: Path, *extra: str, devices: int = 2) -> list[str]:
    return [*AMADEUS, "fit", "-c", "configs/tiny.yaml", "-c", str(SMALL), "--data.data_dir", str(shards),
            "--trainer.default_root_dir", str(root), "--trainer.logger.init_args.save_dir", str(root),
            "--trainer.devices", str(devices), "--trainer.strategy", "ddp", "--trainer.accelerator", "cpu", *extra]


def _run(args: list[str], timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=timeout)


def _step(ckpt: Path) -> int:
    return int(torch.load(ckpt, map_location="cpu", weights_only=True)["global_step"])


def _first_logged_step(root: Path) -> int:
    """The first training step the newest logger version logged (CSVLogger, log_every_n_steps 1)."""
    import csv

    version = max((root / "logs").glob("version_*"), key=lambda p: int(p.name.split("_")[1]))
    with open(version / "metrics.csv") as f:
        return min(int(r["step"]) for r in csv.DictReader(f) if r.get("train/loss_step"))


@pytest.fixture(scope="module")
def preempted(tiny_shards, tmp_path_factory) -> tuple[Path, int]:
    """`amadeus fit` on 2 processes, SIGTERM after its first checkpoint: (run folder, saved step)."""
    root = tmp_path_factory.mktemp("preempted")
    proc = subprocess.Popen(_fit_args(tiny_shards, root), cwd=ROOT, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    last = root / "checkpoints" / "last.ckpt"
    deadline = time.time() + 180
    while not last.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    assert last.exists(), proc.communicate(timeout=60)[0][-3000:]
    time.sleep(1.0)  # a few more steps
    proc.send_signal(signal.SIGTERM)
    out = proc.communicate(timeout=120)[0]
    assert proc.returncode == 0, out[-3000:]  # a clean exit
    saved = root / "checkpoints" / "last-preempted.ckpt"
    assert saved.exists(), out[-3000:]
    step = _step(saved)
    assert 5 <= step < 40, step  # saved at the step where the signal arrived, not at a validation
    shutil.copy(saved, root / "preempted-copy.ckpt")  # for the file test (a finished resume deletes the original)
    return root, step


def test_sigterm_then_resume_with_last(preempted, tiny_shards):
    root, step = preempted
    done = _run(_fit_args(tiny_shards, root, "--ckpt_path", "last", "--trainer.max_steps", str(step + 4)))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Restored all states from the checkpoint" in done.stdout + done.stderr
    assert "last-preempted.ckpt" in done.stdout + done.stderr  # the newest "last" is the pre-emption's
    assert _first_logged_step(root) >= step  # continued at the saved step, not from 0
    assert _step(root / "checkpoints" / "last.ckpt") == step + 4
    assert not (root / "checkpoints" / "last-preempted.ckpt").exists()  # a finished run removes it


def test_resume_from_a_file_written_before_this_change(preempted, tiny_shards, tmp_path):
    """`--ckpt_path FILE` re-reads the checkpoint's hyper-parameters as constructor arguments; an old
    checkpoint carries `tokenizer_hash` there (once a failure, now a checked argument)."""
    root, step = preempted
    old = torch.load(root / "preempted-copy.ckpt", map_location="cpu", weights_only=True)
    assert old["hyper_parameters"]["tokenizer_hash"]  # as every checkpoint the package wrote
    path = tmp_path / "old.ckpt"
    torch.save(old, path)
    run = tmp_path / "run"
    args = ["--ckpt_path", str(path), "--trainer.max_steps", str(step + 2), "--trainer.val_check_interval", "100"]
    refused = _run(_fit_args(tiny_shards, run, *args, devices=1))  # 1 process resuming 2 processes' stream
    assert refused.returncode == 2 and "data.world_size (2 -> 1)" in refused.stderr
    done = _run(_fit_args(tiny_shards, run, *args, "--data.replan", "true", devices=1))
    assert done.returncode == 0, done.stderr[-3000:]
    assert _step(run / "checkpoints" / "last.ckpt") == step + 2
    assert _first_logged_step(run) >= step

    old["hyper_parameters"]["tokenizer_hash"] = "0123456789abcdef"  # a tokenizer that changed: refused
    torch.save(old, path)
    bad = _run(_fit_args(tiny_shards, tmp_path / "bad", "--ckpt_path", str(path), devices=1))
    assert bad.returncode != 0 and "tokenizer_hash 0123456789abcdef" in bad.stderr


def test_resume_with_another_shuffle_buffer_is_refused(preempted, tiny_shards, tmp_path):
    root, _ = preempted
    run = tmp_path / "run"
    shutil.copytree(root / "checkpoints", run / "checkpoints")
    done = _run(_fit_args(tiny_shards, run, "--ckpt_path", "last", "--data.shuffle_buffer", "3"))
    assert done.returncode == 2, done.stderr[-2000:]
    line = [ln for ln in done.stderr.splitlines() if "error:" in ln]
    assert len(line) >= 1 and "data.shuffle_buffer (256 -> 3)" in line[0] and "--data.replan true" in line[0]


def test_last_with_nothing_to_resume_is_an_error(tiny_shards, tmp_path):
    done = _run(_fit_args(tiny_shards, tmp_path / "empty", "--ckpt_path", "last", devices=1))
    assert done.returncode == 2
    assert f"no checkpoint to resume from in {tmp_path / 'empty' / 'checkpoints'}" in done.stderr
    assert not (tmp_path / "empty" / "logs").exists()  # nothing trained


# ------------------------------------------------------------------------------------------------
# in-process: exact continuation, bf16, FSDP


def _tiny_module(**kw):
    from amadeus.model.config import ModelConfig
    from amadeus.module import AmadeusModule

    network = ModelConfig(d_model=32, n_layers=2, n_heads=2, head_width=32, dropout=0.0)
    return AmadeusModule(network=network, lr=3e-3, warmup_steps=3, **kw)


def _tiny_data(shards: Path, workers: int = 0):
    from amadeus.datamodule import MusicDataModule

    return MusicDataModule(str(shards), max_notes=16, batch_size=2, num_workers=workers, shuffle_buffer=16, seed=3,
                           val_windows=4)


class _SigtermAt:
    """Sends this process SIGTERM after optimizer step `step`: Lightning's own pre-emption path."""

    def __new__(cls, step: int):
        import lightning as L

        class Hook(L.Callback):
            def on_train_batch_end(self, trainer, *_):
                if trainer.global_step == step:
                    os.kill(os.getpid(), signal.SIGTERM)

        return Hook()


def _fit(shards: Path, root: Path, steps: int, ckpt: str | None = None, stop: int | None = None, workers: int = 0,
         ema: bool = False, **trainer):
    import lightning as L

    from amadeus.callbacks import PreemptionCheckpoint

    L.seed_everything(7, verbose=False)
    module = _tiny_module(ema_decay=0.9 if ema else 0.0)  # as configs/profile/cpu.yaml (decay 0.995)
    callbacks = [PreemptionCheckpoint(str(root))] + ([_SigtermAt(stop)] if stop else [])
    options = dict(max_steps=steps, limit_val_batches=0, logger=False, enable_checkpointing=True,
                   enable_progress_bar=False, enable_model_summary=False, accelerator="cpu", devices=1,
                   default_root_dir=root, callbacks=callbacks, gradient_clip_val=1.0)
    options.update(trainer)
    t = L.Trainer(**options)
    t.fit(module, datamodule=_tiny_data(shards, workers), ckpt_path=ckpt)
    return module


@pytest.mark.parametrize("workers", [0, 2])
def test_exact_continuation(tiny_shards, tmp_path, one_thread, workers):
    """N steps, SIGTERM, resume to 2N == 2N uninterrupted steps, bit for bit (dropout 0, fixed seed):
    data position (MusicDataModule state, and with 2 workers their turn: N is odd), per-step seeds,
    optimizer, LR schedule, clipping."""
    n = 7
    whole = _fit(tiny_shards, tmp_path / "whole", 2 * n, workers=workers)
    with pytest.raises(SystemExit):
        _fit(tiny_shards, tmp_path / "cut", 2 * n, stop=n, workers=workers)
    saved = tmp_path / "cut" / "last-preempted.ckpt"
    assert _step(saved) == n
    resumed = _fit(tiny_shards, tmp_path / "cut", 2 * n, ckpt=str(saved), workers=workers)
    for (name, a), (_, b) in zip(whole.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), name


def test_exact_continuation_with_weight_averaging(tiny_shards, tmp_path, one_thread):
    """The tiny configs average the weights (EMA): the pre-emption checkpoint holds the average as its
    state_dict and the raw weights beside it, and resuming from it ends where an uninterrupted run ends."""
    from amadeus.api import load_module

    n = 7
    whole = _fit(tiny_shards, tmp_path / "whole", 2 * n, ema=True)
    with pytest.raises(SystemExit):
        _fit(tiny_shards, tmp_path / "cut", 2 * n, stop=n, ema=True)
    saved = tmp_path / "cut" / "last-preempted.ckpt"
    ckpt = torch.load(saved, map_location="cpu", weights_only=True)
    raw, averaged = ckpt["current_model_state"], ckpt["state_dict"]
    assert raw.keys() == averaged.keys()
    assert any(not torch.equal(raw[k], averaged[k]) for k in raw)  # an average, not a copy
    loaded = load_module(saved)  # what Amadeus.load and init_from read: the average
    for name, value in loaded.state_dict().items():
        assert torch.equal(value, averaged[name]), name
    resumed = _fit(tiny_shards, tmp_path / "cut", 2 * n, ckpt=str(saved), ema=True)
    for (name, a), (_, b) in zip(whole.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), name  # the average (copied into the module when training ends)


def test_bf16_mixed_trains_on_cpu(tiny_shards, tmp_path, one_thread):
    module = _fit(tiny_shards, tmp_path, 3, precision="bf16-mixed")
    assert all(torch.isfinite(p).all() for p in module.parameters())
    assert next(module.parameters()).dtype == torch.float32  # weights stay fp32, compute is bf16


@pytest.mark.skipif(not torch.cuda.is_available(),
                    reason="Lightning 2.6 runs FSDP only on CUDA ('The strategy `fsdp` requires a GPU accelerator')")
def test_fsdp_fit_and_resume_on_gpu(tiny_shards, tmp_path):
    """FSDP trains with gradient clipping by norm (base.yaml's gradient_clip_val 1.0, through the sharded
    model's clip_grad_norm_) and resumes with --ckpt_path last; weight averaging is refused at start."""
    gpu = ["--trainer.strategy", "fsdp", "--trainer.accelerator", "gpu", "--trainer.precision", "bf16-mixed",
           "--trainer.devices", str(min(2, torch.cuda.device_count())), "--model.ema_decay", "0"]  # no EMA sharded
    first = _run(_fit_args(tiny_shards, tmp_path, "--trainer.max_steps", "6", *gpu))
    assert first.returncode == 0, first.stderr[-3000:]
    again = _run(_fit_args(tiny_shards, tmp_path, "--trainer.max_steps", "9", "--ckpt_path", "last", *gpu))
    assert again.returncode == 0, again.stderr[-3000:]
    assert _step(tmp_path / "checkpoints" / "last.ckpt") == 9 and _first_logged_step(tmp_path) >= 6
    ema = _run(_fit_args(tiny_shards, tmp_path / "ema", "--trainer.max_steps", "2", *gpu[:-2]))  # EMA 0.995
    assert ema.returncode == 2 and "--model.ema_decay 0" in ema.stderr


def test_checkpoint_names_carry_their_own_validation(tiny_shards, tmp_path):
    """The configs' ModelCheckpoint saves after each validation: the value in a file's name (and what top-k
    ranks) is the validation of the weights in that file, as logged at that step and as re-validated."""
    import csv
    import re

    import lightning as L

    from amadeus.api import load_module
    from amadeus.cli import main as cli_main
    from amadeus.datamodule import MusicDataModule

    cli_main(["fit", "-c", str(ROOT / "configs" / "tiny.yaml"), "-c", str(SMALL), "--data.data_dir", str(tiny_shards),
              "--trainer.default_root_dir", str(tmp_path), "--trainer.logger.init_args.save_dir", str(tmp_path),
              "--trainer.max_steps", "12", "--trainer.val_check_interval", "4"])
    with open(next((tmp_path / "logs").glob("version_*")) / "metrics.csv") as f:
        logged = {int(r["step"]): float(r["val/diffusion"]) for r in csv.DictReader(f) if r.get("val/diffusion")}
    names = sorted((tmp_path / "checkpoints").glob("step=*-val_diffusion=*.ckpt"))
    assert len(names) >= 2
    dm = MusicDataModule(str(tiny_shards), max_notes=16, batch_size=2, num_workers=0, val_windows=4)
    for path in names:
        step, value = re.fullmatch(r"step=(\d+)-val_diffusion=([\d.]+)\.ckpt", path.name).groups()
        assert _step(path) == int(step)
        assert logged[int(step) - 1] == pytest.approx(float(value), abs=6e-4)  # logged at that step
        again = L.Trainer(accelerator="cpu", devices=1, logger=False, limit_val_batches=1, enable_progress_bar=False,
                          enable_model_summary=False).validate(load_module(path), dm, verbose=False)[0]
        assert again["val/diffusion"] == pytest.approx(float(value), abs=6e-4)  # and what its weights give
