"""Training callbacks: MLSDES latent-space metrics and sample MIDI at every validation epoch, and the
checkpoint a pre-empted run saves on SIGTERM."""
from __future__ import annotations

import logging
import signal
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Checkpoint
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities.exceptions import SIGTERMException

from amadeus.losses import (
    dispersive_loss,
    effective_rank,
    segment_mean_pool,
    pairwise_cosine_stats,
    uniformity,
)
from amadeus.sampling import SamplingOptions, generate

log = logging.getLogger(__name__)


def _run_dir(trainer: L.Trainer) -> Path:
    """Where this run writes its files: the logger's version folder, else the trainer's root."""
    for logger in trainer.loggers:
        if getattr(logger, "log_dir", None):
            return Path(logger.log_dir)
        if isinstance(logger, WandbLogger) and logger.save_dir:
            return Path(logger.save_dir)
    return Path(trainer.default_root_dir)


class MLSDESMonitor(L.Callback):
    """Logs how discriminable the mid-depth note latents are, on a fixed set of validation windows.

    Metrics (prefix ``mlsdes/``): the dispersive loss, mean and std of pairwise cosine similarity of
    the mean-pooled latents, uniformity (log mean exp(-2 ||u_a - u_b||^2) on unit vectors; lower is
    more uniform) and the effective rank of the latent matrix. The windows are the first
    ``num_windows`` of the validation loader, captured once, so epochs are comparable.
    """

    def __init__(self, num_windows: int = 64) -> None:
        self.num_windows = num_windows
        self._windows: list[dict[str, Any]] | None = None

    def _capture(self, trainer: L.Trainer) -> list[dict[str, Any]]:
        loaders = trainer.val_dataloaders
        loader = loaders[0] if isinstance(loaders, (list, tuple)) else loaders
        windows, count = [], 0
        if loader is None:
            return windows
        for batch in loader:
            segments = batch.get("segments", batch["mask"].long())
            windows.append({"notes": batch["notes"].cpu(), "segments": segments.cpu(),
                            "caption": list(batch.get("caption", []))})
            count += batch["notes"].shape[0]
            if count >= self.num_windows:
                break
        return windows

    @torch.no_grad()
    def features(self, pl_module: L.LightningModule) -> torch.Tensor:
        """Mean-pooled mid-depth latents [W, d] of the fixed windows (of each piece of a packed row)."""
        pooled = []
        for batch in self._windows or []:
            notes = batch["notes"].to(pl_module.device)[:, :-1]
            segments = batch["segments"].to(pl_module.device)[:, :-1]
            if bool((segments > 1).any()):  # packed rows: one feature per piece
                out = pl_module.backbone(notes, segments=segments)
            else:
                prefix, prefix_mask = pl_module.encode_text(batch["caption"] or None)
                out = pl_module.backbone(notes, prefix=prefix, prefix_mask=prefix_mask)
            pooled.append(segment_mean_pool(out.mid.float(), segments))
        return torch.cat(pooled)[: self.num_windows] if pooled else torch.empty(0)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        if self._windows is None:
            self._windows = self._capture(trainer)
        was_training = pl_module.training
        pl_module.eval()
        f = self.features(pl_module)
        pl_module.train(was_training)
        if f.shape[0] < 2:
            return
        mean, std = pairwise_cosine_stats(f)
        tau = getattr(pl_module.config, "mlsdes_tau", 0.5)
        metrics = {
            "mlsdes/dispersive_loss": dispersive_loss(f, tau=tau),
            "mlsdes/cos_mean": mean,
            "mlsdes/cos_std": std,
            "mlsdes/uniformity": uniformity(f),
            "mlsdes/effective_rank": effective_rank(f),
        }
        pl_module.log_dict({k: float(v) for k, v in metrics.items()}, sync_dist=True)


class SampleMidi(L.Callback):
    """Writes `num_samples` short unconditional samples (.mid + piano-roll .png) each validation epoch.

    Files go to ``<run dir>/samples/epoch=NNN/``. With a W&B logger the piano rolls (and audio, when a
    soundfont is installed) are logged too. Only rank 0 samples.
    """

    def __init__(self, num_samples: int = 2, max_notes: int = 256, steps: int | None = None,
                 temperature: float | None = None, top_p: float | None = None,
                 seed: int = 0, audio: bool = True) -> None:
        self.num_samples = num_samples
        # short samples: the sampler's defaults, except what is given (validated here, at startup);
        # steps / temperature / top_p None: the sampler's defaults (DEFAULT_STEPS, per-attribute truncation)
        given = {k: v for k, v in (("temperature", temperature), ("top_p", top_p)) if v is not None}
        self.options = SamplingOptions(max_notes=max_notes, steps=steps, **given)
        self.seed = seed
        self.audio = audio
        self.written: list[Path] = []

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero or self.num_samples <= 0:
            return
        from amadeus.render import find_soundfont, piano_roll_png, render_wav

        out_dir = _run_dir(trainer) / "samples" / f"epoch={trainer.current_epoch:03d}"
        out_dir.mkdir(parents=True, exist_ok=True)
        was_training = pl_module.training
        pl_module.eval()
        result = generate(pl_module, num=self.num_samples, options=self.options, seed=self.seed)
        pl_module.train(was_training)
        soundfont = find_soundfont() if self.audio else None
        wandb = next((lg for lg in trainer.loggers if isinstance(lg, WandbLogger)), None)
        images, audios = [], []
        for i, tokens in enumerate(result.tokens):
            score = pl_module.tokenizer.decode(tokens)
            mid = out_dir / f"sample_{i}.mid"
            score.dump_midi(str(mid))
            png = out_dir / f"sample_{i}.png"
            piano_roll_png(score, png, title=f"epoch {trainer.current_epoch} sample {i}")
            self.written += [mid, png]
            images.append(str(png))
            if wandb is not None and soundfont is not None:
                wav = out_dir / f"sample_{i}.wav"
                render_wav(score, wav, soundfont=soundfont)
                audios.append(str(wav))
        log.info("SampleMidi: wrote %d samples to %s", len(result.tokens), out_dir)
        if wandb is not None:
            wandb.log_image(key="samples/piano_roll", images=images, step=trainer.global_step)
            if audios:
                import wandb as wb

                wandb.experiment.log({"samples/audio": [wb.Audio(a) for a in audios]},
                                     step=trainer.global_step)


def _stop_signals() -> list[int]:
    """SIGTERM, and SIGUSR1 (the usual cluster warning signal) unless SLURM runs the job: there
    Lightning's own SIGUSR1 handler saves an HPC checkpoint and requeues the job."""
    from lightning.pytorch.plugins.environments import SLURMEnvironment

    found = [signal.SIGTERM]
    if hasattr(signal, "SIGUSR1") and not SLURMEnvironment.detect():
        found.append(signal.SIGUSR1)
    return found


class PreemptionCheckpoint(Checkpoint):
    """On SIGTERM (or SIGUSR1 outside SLURM) the run saves `<dirpath>/last-preempted.ckpt` at the step
    in progress and ends cleanly (exit status 0) on every rank.

    The signal only sets a flag; after each optimizer step the ranks agree on it with one boolean
    reduction (`strategy.reduce_boolean_decision`, as EarlyStopping does), and all of them raise
    Lightning's `SIGTERMException` there together, so the checkpoint (a collective save) is written
    at the same step everywhere. This handler replaces Lightning's SIGTERM notifier for the duration
    of `fit`: under Lightning 2.6 on 2 gloo processes the notifier's broadcast, issued from inside the
    signal handler, met another collective and the run hung (tests/test_resume.py).

    The file name starts with "last", so Lightning's `ckpt_path="last"` (the newest `last*.ckpt` of
    the ModelCheckpoint's folder) resumes from it; a run that ends normally deletes it. Other
    exceptions (a non-finite loss, an error) save nothing: resuming from them would repeat them.
    `dirpath` None: `<trainer.default_root_dir>/checkpoints`, where `amadeus fit` also puts the
    ModelCheckpoint's files.
    """

    FILENAME = "last-preempted.ckpt"

    def __init__(self, dirpath: str | None = None) -> None:
        self.dirpath = dirpath
        self.signalled = False
        self._checked = -1  # the global step of the last check
        self._previous: dict[int, Any] = {}

    @property
    def ckpt_path(self) -> str:
        return str(Path(self.dirpath or ".") / self.FILENAME)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.dirpath is None:
            self.dirpath = str(Path(trainer.default_root_dir) / "checkpoints")

    def _note(self, signum: int, frame: Any) -> None:
        log.info("received signal %d: saving a checkpoint after this step", signum)
        self.signalled = True

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.signalled, self._checked = False, trainer.global_step
        for sig in _stop_signals():
            self._previous[sig] = signal.signal(sig, self._note)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        if trainer.global_step == self._checked:  # no optimizer step yet (gradient accumulation): go on
            return
        self._checked = trainer.global_step
        if trainer.strategy.reduce_boolean_decision(self.signalled, all=False):
            raise SIGTERMException()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._restore()
        if isinstance(exception, SIGTERMException) and trainer.state.fn == "fit":
            log.info("saving %s at step %d", self.ckpt_path, trainer.global_step)
            trainer.save_checkpoint(self.ckpt_path)  # a full checkpoint: optimizer, loops, data state too

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._restore()
        trainer.strategy.remove_checkpoint(self.ckpt_path)

    def _restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}
