"""Training a pretrained checkpoint on a small shard folder, with a step or time budget, resumably: the
training half of `amadeus finetune` (`amadeus.finetune` runs the whole command: data, report, output folder).

`build_module` rebuilds the checkpoint's network (weights strictly checked by `amadeus.checkpoint`) with the
fine-tuning `Recipe`; `train` runs a plain Lightning Trainer on it (CPU, or a GPU), without validation
(the report measures the model apart), with one progress bar over the budget. It saves CHECKPOINTS/last.ckpt
every `CHECKPOINT_EVERY` steps and at the budget's last step, last-interrupted.ckpt on Ctrl-C and (by
`amadeus.callbacks.PreemptionCheckpoint`) last-preempted.ckpt on SIGTERM, and starts from the newest of them,
so a run that was stopped continues where it stood. A time budget becomes a step budget (the learning-rate
schedule needs one) from the measured time of a step, and Lightning's timer enforces it.
"""
from __future__ import annotations

import copy
import math
import os
import time
from dataclasses import asdict, dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, Checkpoint, Timer

from amadeus.callbacks import PreemptionCheckpoint

CHECKPOINT_EVERY = 25  # steps between resumable checkpoints


class FinetuneError(ValueError):
    """A fine-tune that cannot run (bad input, checkpoint or budget): one line naming the problem."""


class FinetuneInterrupted(FinetuneError):
    """Training stopped by Ctrl-C or SIGTERM after saving a checkpoint; the same call continues it."""


@dataclass(frozen=True)
class Recipe:
    """How a small corpus is fine-tuned (the defaults: docs/finetune.md, measured by benchmarks/finetune.py).

    lr, warmup_steps, min_lr_ratio, weight_decay: AdamW, linear warm-up, cosine decay over the step budget.
    ema_decay: 0 = off; else the checkpoint holds this moving average of the weights.
    transpose: (low, high) semitones drawn per training window (drums never move); None = off.
    max_notes, batch_size: training windows of max_notes rows, batch_size of them per step.
    """

    lr: float = 1e-3
    warmup_steps: int = 30
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.1
    ema_decay: float = 0.0
    transpose: tuple[int, int] | None = (-5, 6)
    max_notes: int = 128
    batch_size: int = 16

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["transpose"] = list(self.transpose) if self.transpose is not None else None
        return d


@dataclass(frozen=True)
class TrainResult:
    """steps: optimizer steps made in all; start: the step this call started from; seconds: training time in
    all (Lightning's timer, over every call) under a time budget, else None."""

    steps: int
    start: int
    seconds: float | None


def build_module(ckpt: str | os.PathLike, recipe: Recipe) -> Any:
    """The checkpoint's network with its weights (strictly checked by `amadeus.checkpoint`), set up to train
    with the recipe's optimiser and weight averaging."""
    from functools import partial

    from amadeus.checkpoint import CheckpointError, load_module
    from amadeus.module import AmadeusModule

    build = partial(AmadeusModule, lr=recipe.lr, warmup_steps=recipe.warmup_steps, min_lr_ratio=recipe.min_lr_ratio,
                    weight_decay=recipe.weight_decay, ema_decay=recipe.ema_decay)
    try:
        return load_module(ckpt, build).train()
    except CheckpointError as e:
        raise FinetuneError(str(e)) from None


def _datamodule(data: Path, recipe: Recipe, seed: int, tokenizer_hash: str) -> Any:
    from amadeus.datamodule import MusicDataModule

    return MusicDataModule(data_dir=str(data), stage="pretrain", max_notes=recipe.max_notes,
                           batch_size=recipe.batch_size, num_workers=0, transpose=recipe.transpose, seed=seed,
                           val_windows=0, tokenizer_hash=tokenizer_hash)


def step_seconds(module: Any, data: Path, recipe: Recipe, device: str) -> float:
    """Seconds of one training step (forward and backward on a real batch; the second of two, so that
    one-off start-up costs do not count); the weights do not change."""
    batch = next(iter(_datamodule(data, recipe, 0, module.tokenizer.config_hash).train_dataloader()))
    probe = copy.deepcopy(module).to(device).train()  # its metrics and gradients stay out of the run
    batch = {k: v.to(device) if hasattr(v, "to") else v for k, v in batch.items()}
    took = 0.0
    for _ in range(2):
        t = time.perf_counter()
        probe.shared_step(batch, "train")["loss"].backward()
        took = time.perf_counter() - t
    return took


def steps_for_minutes(module: Any, data: Path, recipe: Recipe, device: str, minutes: float) -> int:
    """How many steps `minutes` of training make here (from one step's measured time); FinetuneError when
    not one step fits."""
    seconds = step_seconds(module, data, recipe, device)
    if minutes * 60 < seconds:
        raise FinetuneError(f"a budget of {minutes:g} minutes fits no training step: one step takes {seconds:.1f} s "
                            f"here, so the minimum is {math.ceil(seconds / 6) / 10:g} minutes")
    return max(1, int(minutes * 60 / seconds))


def last_checkpoint(folder: Path) -> Path | None:
    """The newest resumable checkpoint (last*.ckpt) in FOLDER, or None."""
    found = sorted(folder.glob("last*.ckpt"), key=lambda p: p.stat().st_mtime) if folder.is_dir() else []
    return found[-1] if found else None


def _checkpoint_step(path: Path) -> int:
    return int(torch.load(str(path), map_location="cpu", weights_only=True).get("global_step", 0))


def train(module: Any, data: Path, checkpoints: Path, *, recipe: Recipe, max_steps: int | None,
          minutes: float | None, device: str, seed: int, progress: bool,
          log: Callable[[str], None]) -> TrainResult:
    """Train MODULE on the train split of DATA for `max_steps` steps or `minutes` of training (in all, over
    every call), continuing from the newest checkpoint in CHECKPOINTS. On return MODULE holds the final
    weights (their average when the recipe averages)."""
    from amadeus.checkpoint import read_checkpoint

    resume = last_checkpoint(checkpoints)
    start = _checkpoint_step(resume) if resume else 0
    if minutes is not None:  # the timer stops training; the step budget only sets the schedule's length
        max_steps = max(start + 1, max_steps or steps_for_minutes(module, data, recipe, device, minutes))
    assert max_steps is not None
    if resume is not None and start >= max_steps:
        log(f"{resume} is at step {start}, the budget's end: nothing to train")
        module.load_state_dict(read_checkpoint(resume)[0])
        return TrainResult(start, start, None)
    if resume is not None:
        log(f"continuing from {resume} (step {start})")
    L.seed_everything(seed, verbose=False)
    saver = _LastCheckpoint(checkpoints, CHECKPOINT_EVERY)
    stopper = PreemptionCheckpoint(dirpath=str(checkpoints))
    trainer = _trainer(checkpoints.parent, device, max_steps, minutes,
                       [_StepProgress(max_steps, progress), saver, stopper])
    try:
        trainer.fit(module, datamodule=_datamodule(data, recipe, seed, module.tokenizer.config_hash),
                    ckpt_path=str(resume) if resume else None)
    except SystemExit:  # Lightning turns Ctrl-C into exit(1); PreemptionCheckpoint's SIGTERM is a SystemExit
        if saver.interrupted or stopper.signalled:
            raise FinetuneInterrupted(f"stopped at step {trainer.global_step}; checkpoint in {checkpoints}: run "
                                      "the same command again to continue") from None
        raise
    if trainer.global_step <= start and resume is not None:  # the time budget was spent before this call
        module.load_state_dict(read_checkpoint(resume)[0])
    timer = next((c for c in trainer.callbacks if isinstance(c, Timer)), None)
    return TrainResult(int(trainer.global_step), start, timer.time_elapsed("train") if timer is not None else None)


def _trainer(root: Path, device: str, max_steps: int, minutes: float | None, callbacks: list) -> L.Trainer:
    """A plain Trainer: one device (bf16 on a GPU), no validation, gradient clipping, a CSV log in ROOT/logs."""
    from lightning.pytorch.loggers import CSVLogger

    cuda = device.startswith("cuda")
    return L.Trainer(accelerator="gpu" if cuda else "cpu", devices=[int(device.partition(":")[2] or 0)] if cuda else 1,
                     precision="bf16-mixed" if cuda else "32-true", max_steps=max_steps, max_epochs=-1,
                     max_time=timedelta(minutes=minutes) if minutes is not None else None, limit_val_batches=0,
                     num_sanity_val_steps=0, gradient_clip_val=1.0, log_every_n_steps=5,
                     logger=CSVLogger(str(root), name="logs"), default_root_dir=str(root), callbacks=callbacks,
                     enable_progress_bar=False, enable_model_summary=False)


class _StepProgress(Callback):
    """One progress bar over the whole step budget (Lightning's restarts at every short epoch)."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.total, self.enabled, self.bar = total, enabled, None

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        from tqdm.auto import tqdm

        self.bar = tqdm(total=self.total, initial=trainer.global_step, unit="step", desc="finetune",
                        disable=not self.enabled, dynamic_ncols=True, mininterval=0.5)

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.bar is not None:
            loss = outputs["loss"] if isinstance(outputs, dict) else outputs
            self.bar.set_postfix(loss=f"{float(loss):.3f}", refresh=False)
            self.bar.update(trainer.global_step - self.bar.n)

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        self._close()

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        self._close()

    def _close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class _LastCheckpoint(Checkpoint):
    """CHECKPOINTS/last.ckpt every `every` steps and at the budget's last step (before weight averaging swaps
    the averaged weights in at the end of training), and last-interrupted.ckpt on Ctrl-C: what a rerun
    continues from (the newest last*.ckpt)."""

    INTERRUPTED = "last-interrupted.ckpt"

    def __init__(self, dirpath: Path, every: int) -> None:
        self.dirpath, self.every, self.interrupted = Path(dirpath), every, False

    def on_train_batch_end(self, trainer: Any, pl_module: Any, *args: Any) -> None:
        step = trainer.global_step
        if step and (step % self.every == 0 or trainer.should_stop or step >= trainer.max_steps):
            trainer.save_checkpoint(str(self.dirpath / "last.ckpt"))

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        (self.dirpath / self.INTERRUPTED).unlink(missing_ok=True)

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        if isinstance(exception, KeyboardInterrupt) and trainer.state.fn == "fit" and trainer.global_step:
            self.interrupted = True
            trainer.save_checkpoint(str(self.dirpath / self.INTERRUPTED))


def save_model(module: Any, path: Path, steps: int) -> Path:
    """The fine-tuned weights as a small Lightning-style checkpoint (`Amadeus.load` reads it): the state_dict
    (the averaged weights when the recipe averages) and the module's hyper-parameters."""
    state = {k: v.detach().to("cpu").clone() for k, v in module.state_dict().items()}
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"state_dict": state, "hyper_parameters": dict(module.hparams), "global_step": int(steps),
                "pytorch-lightning_version": L.__version__}, tmp)
    os.replace(tmp, path)
    return path
