"""The `amadeus` command.

Training subcommands (fit, validate, test) are Lightning's own `LightningCLI`, built by
`amadeus.commands.lightning.make_cli`, so every key of a YAML config maps onto a constructor argument
of `AmadeusModule`, `MusicDataModule` or the Trainer. The data and generation subcommands are plain
argparse; each is a module of `amadeus.commands` exposing `add_arguments(parser)` and `run(args) -> int`.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys

from amadeus.commands.lightning import COMMANDS as LIGHTNING_COMMANDS
from amadeus.commands.lightning import make_cli

# name -> (module exposing add_arguments/run, one-line help)
TOOL_COMMANDS: dict[str, tuple[str, str]] = {
    "corpus": ("amadeus.commands.corpus", "build an embedded corpus (bach, folk, music21: from music21) and its shards"),
    "preprocess": ("amadeus.commands.preprocess", "MIDI folder / glob / tar / list file -> tokenized Parquet shards"),
    "generate": ("amadeus.commands.generate", "sample MIDI (and WAV/PNG) from a checkpoint, with controls and text"),
    "evaluate": ("amadeus.commands.evaluate", "text-adherence and unconditional metrics of a checkpoint"),
    "export": ("amadeus.commands.export", "checkpoint -> folder with model.safetensors, config.json, tokenizer.json"),
    "finetune": ("amadeus.commands.finetune", "fine-tune a checkpoint on your own MIDI: model, samples, before/after report"),
    "fidelity": ("amadeus.commands.fidelity", "how many notes of MIDI/ABC files survive encode -> decode, per file"),
    "studio": ("amadeus.commands.studio", "the browser studio: caption, controls, piano roll, audio, MIDI (loopback)"),
    "demo": ("amadeus.commands.demo", "the main job: corpus -> train tiny -> samples (what `make demo` runs)"),
}


def _usage() -> str:
    lines = ["usage: amadeus <command> [options]", "", "training (LightningCLI; `amadeus fit --help`):"]
    lines += [f"  {c:<11} {h}" for c, h in (
        ("fit", "train: amadeus fit -c configs/tiny.yaml [--trainer.devices N --trainer.strategy ddp]"),
        ("validate", "validate a checkpoint: amadeus validate -c CONFIG --ckpt_path PATH"),
        ("test", "test a checkpoint on the test split"),
    )]
    lines += ["", "data and generation:"]
    lines += [f"  {c:<11} {h}" for c, (_, h) in TOOL_COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run `amadeus ARGV...`; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0 if argv else 2
    command = argv[0]
    if command in LIGHTNING_COMMANDS:
        make_cli(argv)
        return 0
    if command not in TOOL_COMMANDS:
        print(f"amadeus: unknown command {command!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module_name, help_text = TOOL_COMMANDS[command]
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(prog=f"amadeus {command}", description=help_text)
    module.add_arguments(parser)
    args = parser.parse_args(argv[1:])
    return int(module.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
