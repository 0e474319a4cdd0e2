"""The one LightningCLI factory: `amadeus fit / validate / test` and the demo's training stages.

Every key of a YAML config maps onto a constructor argument of `AmadeusModule`, `MusicDataModule`
or the Trainer, so `amadeus fit -c configs/tiny.yaml --trainer.max_steps 10` needs no code here.
"""
from __future__ import annotations

import sys
from typing import Any, Sequence

COMMANDS = ("fit", "validate", "test")
SAVE_CONFIG = {"overwrite": True}


def make_cli(args: Sequence[str] | None = None, run: bool = True) -> Any:
    """Build (and with `run`, run) LightningCLI(AmadeusModule, MusicDataModule) on `args`, e.g.
    ["fit", "-c", "configs/tiny.yaml"]; None reads the command line.

    When `args` is the process's own command line, LightningCLI reads sys.argv itself: launchers
    that re-run the script (DDP) see the same arguments. Other `args` (the demo) are parsed with
    sys.argv hidden for the construction, since LightningCLI warns when it sees both.
    """
    from lightning.pytorch.cli import LightningCLI

    from amadeus.datamodule import MusicDataModule
    from amadeus.module import AmadeusModule

    if args is None or list(args) == sys.argv[1:]:
        return LightningCLI(AmadeusModule, MusicDataModule, args=None, run=run, save_config_kwargs=SAVE_CONFIG)
    argv, sys.argv = sys.argv, sys.argv[:1]
    try:
        return LightningCLI(AmadeusModule, MusicDataModule, args=list(args), run=run,
                            save_config_kwargs=SAVE_CONFIG)
    finally:
        sys.argv = argv
