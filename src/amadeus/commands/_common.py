"""What several commands share: the sampler's flags, device and thread set-up, argument checks.

The sampler's defaults live in `amadeus.sampling.options` (torch-free, so that the data commands that
import this module stay free of torch); the flags read them and SamplingOptions validates the values.
"""
from __future__ import annotations

import argparse
import sys
from contextlib import contextmanager
from typing import Any, Iterator

from amadeus.grammar import ATTRIBUTES
from amadeus.sampling.options import (
    DECODE_MODES,
    DEFAULT_STEPS,
    REVEAL_ORDERS,
    TEXT_GUIDANCE,
    SamplingOptions,
    merge_setting,
    setting_text,
)

# The sampler's settings and their defaults are SamplingOptions' (amadeus.sampling.options); the flags
# below only read them, and SamplingOptions validates what the flags give (`sampling_options`).
_DEFAULTS = SamplingOptions()
# Sampling budgets of the commands.
DEMO_MAX_NOTES = 256  # the demo's samples
# torch CPU threads: 0 = torch's default. `amadeus evaluate` defaults to 1 because its sampler's
# small per-note tensors run fastest on one thread and far slower when threads outnumber free cores.
GENERATE_THREADS = 0
EVAL_THREADS = 1
DEFAULT_DEVICE = "auto"  # cuda if available, else cpu


class UsageError(ValueError):
    """A bad command-line argument: printed as one line on stderr, exit code 2."""


def add_sampling_arguments(parser: argparse.ArgumentParser) -> None:
    """The sampler's flags, as every sampling command offers them (`sampling_options` reads them)."""
    d = _DEFAULTS
    parser.add_argument("--steps", type=int, default=None,
                        help=f"denoising steps per note, 1..{len(ATTRIBUTES)} (default {DEFAULT_STEPS}; more steps "
                             "cost a head pass each)")
    parser.add_argument("--order", default=d.order,
                        help=f"which slots a denoising step reveals: confidence, {', '.join(REVEAL_ORDERS)}, or a "
                             f"comma-separated list of every attribute (default {d.order})")
    parser.add_argument("--reveal-threshold", type=float, default=d.reveal_threshold,
                        help="a slot whose drawn value is at least this likely is revealed at once, outside the "
                             f"step budget; > 1 = off (default {d.reveal_threshold:g})")
    parser.add_argument("--temperature", action="append", metavar="[ATTR=]T",
                        help="sampling temperature, global or per attribute, repeatable and applied left to right: "
                             "T sets every attribute, ATTR=T one of them (the others keep their values), *=T every "
                             f"attribute without a value of its own; 0 = greedy; default {setting_text(d.temperature)}")
    parser.add_argument("--top-p", action="append", metavar="[ATTR=]P",
                        help=f"nucleus threshold, as --temperature (default {setting_text(d.top_p)})")
    parser.add_argument("--top-k", action="append", metavar="[ATTR=]K",
                        help=f"top-k, as --temperature (default {setting_text(d.top_k)} = off)")
    parser.add_argument("--guidance", type=float, default=None,
                        help=f"classifier-free guidance scale with --text (default {TEXT_GUIDANCE:g}; 1 = the "
                             "conditional model alone)")
    parser.add_argument("--plausibility", type=float, default=d.plausibility,
                        help="guidance re-weights only values at least this share as likely as the conditional "
                             f"model's top value (default {d.plausibility:g}; 0 = plain guidance over every value)")
    parser.add_argument("--max-onset-notes", type=int, default=d.max_onset_notes,
                        help=f"at most this many notes start at one onset (default {d.max_onset_notes}; 0 = no "
                             "limit): a safety net for a model stuck on one chord")
    parser.add_argument("--decode", choices=DECODE_MODES, default=d.decode,
                        help="how each note's work runs: eager (op by op, finished pieces leave the batch), "
                             "static (fixed shapes, CUDA graphs on a GPU), compile (static + torch.compile); "
                             "auto = static on CUDA, eager elsewhere. Same pieces either way")


def sampling_options(args: argparse.Namespace, **fixed: Any) -> SamplingOptions:
    """SamplingOptions from the flags of `add_sampling_arguments` (and `fixed` settings such as
    max_notes); UsageError with SamplingOptions' own message when a value is out of range."""
    values: dict[str, Any] = dict(steps=args.steps, order=args.order, reveal_threshold=args.reveal_threshold,
                                  guidance=args.guidance, plausibility=args.plausibility, decode=args.decode,
                                  max_onset_notes=args.max_onset_notes or None, **fixed)
    for name, flag, cast in (("temperature", "temperature", float), ("top_p", "top-p", float),
                             ("top_k", "top-k", int)):
        setting = getattr(_DEFAULTS, name)
        for item in getattr(args, name) or ():
            setting = merge_setting(setting, _flag_value(item, flag, cast))
        values[name] = setting
    try:
        return SamplingOptions(**values)
    except ValueError as e:  # SamplingOptions names the setting first: "steps must be ..."
        name = str(e).split(" ", 1)[0].rstrip(":")
        flag = f"--{name.replace('_', '-')}: " if name in values else ""
        raise UsageError(f"{flag}{e}") from None


def _flag_value(text: str, name: str, cast) -> Any:
    """One --NAME value: "X" (every attribute) -> X, "attr=X" or "*=X" -> {attr: X}."""
    key, _, val = text.rpartition("=")
    key = key.strip()
    if key and key != "*" and key not in ATTRIBUTES:
        raise UsageError(f"--{name} {text}: unknown attribute {key!r}; known: {', '.join(ATTRIBUTES)}")
    try:
        value = cast(val)
    except ValueError:
        raise UsageError(f"--{name} {text}: {val!r} is not a number") from None
    return {key: value} if key else value


def fail(command: str, error: Exception | str, prefix: str = "error: ") -> int:
    """Print `amadeus COMMAND: error: MESSAGE` on stderr; return the usage exit code 2."""
    print(f"amadeus {command}: {prefix}{error}", file=sys.stderr)
    return 2


def add_device_arguments(parser: argparse.ArgumentParser, threads: int, threads_help: str) -> None:
    """--device and --threads, as every sampling command offers them."""
    parser.add_argument("--device", default=DEFAULT_DEVICE, help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    parser.add_argument("--threads", type=int, default=threads, help=threads_help)


def check_at_least(args: argparse.Namespace, names: tuple[str, ...], minimum: int) -> None:
    """Every named integer option must be >= minimum."""
    for name in names:
        value = getattr(args, name)
        if value is not None and value < minimum:
            raise UsageError(f"--{name.replace('_', '-')} must be >= {minimum}, got {value}")


def check_threads(threads: int) -> None:
    """--threads must be >= 0 (0 = torch's default)."""
    if threads < 0:
        raise UsageError(f"--threads must be >= 0, got {threads}")


def resolve_device(device: str) -> str:
    """"auto" -> "cuda" when a GPU is available, else "cpu"; any other name as given."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


@contextmanager
def torch_runtime(device: str, threads: int) -> Iterator[str]:
    """Resolve `device` and, on CPU, run the block with `threads` torch threads (0 = torch's default);
    the caller's thread count is restored afterwards, so in-process callers keep their setting."""
    import torch

    resolved = resolve_device(device)
    before = torch.get_num_threads()
    if threads > 0 and resolved == "cpu":
        torch.set_num_threads(threads)
    try:
        yield resolved
    finally:
        torch.set_num_threads(before)
