"""`amadeus export CKPT DIR`: a checkpoint as a plain folder (model.safetensors, config.json, tokenizer.json)."""
from __future__ import annotations

import argparse

from amadeus.commands._common import fail


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of `amadeus export`."""
    parser.add_argument("ckpt", help="Lightning checkpoint (.ckpt) to export")
    parser.add_argument("out_dir", help="folder to write model.safetensors, config.json and tokenizer.json to")


def run(args: argparse.Namespace) -> int:
    """Export; 2 when the checkpoint is missing, unsafe or does not match the code."""
    from amadeus.api import export
    from amadeus.checkpoint import CONFIG, TOKENIZER, WEIGHTS, CheckpointError
    from amadeus.tokenizer import TokenizerError

    try:
        out = export(args.ckpt, args.out_dir)
    except (CheckpointError, TokenizerError) as e:
        return fail("export", e)
    print(f"exported {args.ckpt} -> {out} ({WEIGHTS}, {CONFIG}, {TOKENIZER})")
    return 0
