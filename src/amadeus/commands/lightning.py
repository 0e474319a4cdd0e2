"""The one LightningCLI factory: `amadeus fit / validate / test` and the demo's training stages.

Every key of a YAML config maps onto a constructor argument of `AmadeusModule`, `MusicDataModule`
or the Trainer, so `amadeus fit -c configs/tiny.yaml --trainer.max_steps 10` needs no code here.

What this file adds to LightningCLI, so that a long run survives interruption:
- one checkpoint folder per run, `<trainer.default_root_dir>/checkpoints`, the same at every
  invocation: a `ModelCheckpoint` or `PreemptionCheckpoint` of the config without a `dirpath` gets it
  (otherwise Lightning would use the logger's new version folder, where `--ckpt_path last` finds nothing);
- `--ckpt_path last` with no checkpoint in that folder is an error naming the folder (Lightning only
  warns and trains from step 0);
- a run that cannot start as configured (`amadeus.errors.RunSetupError`: weight averaging with a sharded
  strategy, a resume whose data settings changed, too little data) is one line on stderr and exit code 2.
Pre-emption (SIGTERM, SIGUSR1) is `amadeus.callbacks.PreemptionCheckpoint`, a callback of the configs.
"""
from __future__ import annotations

import os
import sys
from typing import Any, Sequence

COMMANDS = ("fit", "validate", "test")
SAVE_CONFIG = {"overwrite": True}
CHECKPOINT_DIR = "checkpoints"  # under trainer.default_root_dir
CHECKPOINT_CLASSES = ("lightning.pytorch.callbacks.ModelCheckpoint", "amadeus.callbacks.PreemptionCheckpoint")
LAST_NAMES = "last*.ckpt"


def checkpoint_dir(default_root_dir: str | None) -> str:
    """The run's checkpoint folder: `<default_root_dir>/checkpoints` (the working directory when None)."""
    return os.path.join(default_root_dir or os.getcwd(), CHECKPOINT_DIR)


def last_checkpoints(folder: str) -> list[str]:
    """Checkpoints `--ckpt_path last` can resume from in `folder`: last*.ckpt (ModelCheckpoint's
    last.ckpt, PreemptionCheckpoint's last-preempted.ckpt), as Lightning looks for them."""
    from lightning.fabric.utilities.cloud_io import get_filesystem

    fs = get_filesystem(folder)
    if not fs.exists(folder):
        return []
    names = [str(p) for p in fs.ls(folder, detail=False)]
    return [p for p in names if p.endswith(".ckpt") and os.path.basename(p).startswith("last")]


def _cli_class() -> type:
    from lightning.pytorch.cli import LightningCLI

    class AmadeusCLI(LightningCLI):
        """LightningCLI with a fixed checkpoint folder per run and a strict `--ckpt_path last`."""

        def before_instantiate_classes(self) -> None:
            config = self.config.get(self.config.get("subcommand")) if self.config.get("subcommand") else self.config
            trainer = config.get("trainer")
            if trainer is None:
                return
            folder = checkpoint_dir(trainer.get("default_root_dir"))
            for callback in trainer.get("callbacks") or []:
                init = callback.get("init_args") if hasattr(callback, "get") else None
                if callback.get("class_path") in CHECKPOINT_CLASSES and init is not None \
                        and init.get("dirpath") is None:
                    init["dirpath"] = folder
            if config.get("ckpt_path") == "last" and not last_checkpoints(folder):
                print(f"amadeus {self.config.get('subcommand')}: error: --ckpt_path last: no checkpoint to resume from "
                      f"in {folder} (looked for {LAST_NAMES}); drop --ckpt_path to start a new run",
                      file=sys.stderr)
                sys.exit(2)

    return AmadeusCLI


def make_cli(args: Sequence[str] | None = None, run: bool = True) -> Any:
    """Build (and with `run`, run) the amadeus LightningCLI(AmadeusModule, MusicDataModule) on `args`,
    e.g. ["fit", "-c", "configs/tiny.yaml"]; None reads the command line.

    When `args` is the process's own command line, LightningCLI reads sys.argv itself: launchers
    that re-run the script (DDP) see the same arguments. Other `args` (the demo) are parsed with
    sys.argv hidden for the construction, since LightningCLI warns when it sees both.
    """
    from amadeus.datamodule import MusicDataModule
    from amadeus.errors import RunSetupError
    from amadeus.module import AmadeusModule

    cli = _cli_class()
    own = args is None or list(args) == sys.argv[1:]
    argv = sys.argv
    if not own:
        sys.argv = sys.argv[:1]
    try:
        return cli(AmadeusModule, MusicDataModule, args=None if own else list(args), run=run,
                   save_config_kwargs=SAVE_CONFIG)
    except RunSetupError as e:
        command = (list(args) if args is not None else argv[1:])[:1] or ["fit"]
        print(f"amadeus {command[0]}: error: {e}", file=sys.stderr)
        sys.exit(2)
    finally:
        sys.argv = argv
