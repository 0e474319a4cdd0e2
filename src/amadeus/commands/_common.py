"""What several commands share: device and thread set-up, argument checks, command-line defaults.

Each default of the command line is defined once here and used by the flags and help texts of every
command that offers it. Library functions take these values as arguments.
"""
from __future__ import annotations

import argparse
import sys
from contextlib import contextmanager
from typing import Any, Iterator, Mapping

from amadeus.sampling import (  # noqa: F401 (re-exported)
    DEFAULT_STEPS,
    REVEAL_ORDERS,
    TEXT_GUIDANCE,
    SamplingOptions,
    setting_text,
)
from amadeus.tokenizer import ATTRIBUTES

# Sampler settings of the command line: the library's defaults, defined once in SamplingOptions.
# TEXT_GUIDANCE: the guidance scale used with a caption when none is asked for.
_DEFAULTS = SamplingOptions()
TEMPERATURE = _DEFAULTS.temperature
TOP_P = _DEFAULTS.top_p
TOP_K = _DEFAULTS.top_k
ORDER = _DEFAULTS.order
REVEAL_THRESHOLD = _DEFAULTS.reveal_threshold
PLAUSIBILITY = _DEFAULTS.plausibility
GENERATE_MAX_NOTES = _DEFAULTS.max_notes  # `amadeus generate --max-notes`
# Sampling budgets of the commands.
DEMO_MAX_NOTES = 256  # the demo's samples
# torch CPU threads: 0 = torch's default. `amadeus evaluate` defaults to 1 because its sampler's
# small per-note tensors run fastest on one thread and far slower when threads outnumber free cores.
GENERATE_THREADS = 0
EVAL_THREADS = 1
DEFAULT_DEVICE = "auto"  # cuda if available, else cpu


class UsageError(ValueError):
    """A bad command-line argument: printed as one line on stderr, exit code 2."""


def add_truncation_arguments(parser: argparse.ArgumentParser, top_k: bool = False) -> None:
    """--temperature and --top-p (and --top-k), global or per attribute, as every sampling command
    offers them (`truncation_options` reads them)."""
    parser.add_argument("--temperature", action="append", metavar="[ATTR=]T",
                        help="sampling temperature, global or per attribute (repeatable: --temperature 1.1 "
                             "--temperature pitch=0.9); a global value sets every attribute, ATTR=T changes that "
                             f"one and keeps the others' defaults; 0 = greedy; default {setting_text(TEMPERATURE)}")
    parser.add_argument("--top-p", action="append", metavar="[ATTR=]P",
                        help=f"nucleus threshold, as --temperature (default {setting_text(TOP_P)})")
    if top_k:
        parser.add_argument("--top-k", action="append", metavar="[ATTR=]K",
                            help=f"top-k, as --temperature (default {setting_text(TOP_K)} = off)")


def add_plausibility_argument(parser: argparse.ArgumentParser) -> None:
    """--plausibility, the guidance's plausibility constraint (amadeus.sampling.guide); checked by
    `check_plausibility`."""
    parser.add_argument("--plausibility", type=float, default=PLAUSIBILITY,
                        help="guidance re-weights only values at least this share as likely as the conditional "
                             f"model's top value (default {PLAUSIBILITY:g}; 0 = plain guidance over every value)")


def check_plausibility(value: float) -> None:
    """--plausibility must be in [0, 1)."""
    if not 0 <= value < 1:
        raise UsageError(f"--plausibility must be in [0, 1), got {value}")


def truncation_options(args: argparse.Namespace) -> dict[str, Any]:
    """{temperature, top_p(, top_k)} from the flags of `add_truncation_arguments`, over the defaults."""
    out: dict[str, Any] = {}
    for name, flag, cast, default in (("temperature", "temperature", float, TEMPERATURE),
                                      ("top_p", "top-p", float, TOP_P), ("top_k", "top-k", int, TOP_K)):
        if hasattr(args, name):
            value = _setting(getattr(args, name), flag, cast)
            out[name] = default if value is None else _over(default, value)
    return out


def _setting(values: list[str] | None, name: str, cast) -> Any:
    """Repeated --NAME values, each "X" (all attributes) or "attr=X" -> a number or {attr: X, "*": X}."""
    if not values:
        return None
    out: dict[str, Any] = {}
    for v in values:
        key, _, val = v.rpartition("=")
        key = key.strip() or "*"
        if key != "*" and key not in ATTRIBUTES:
            raise UsageError(f"--{name} {v}: unknown attribute {key!r}; known: {', '.join(ATTRIBUTES)}")
        try:
            out[key] = cast(val)
        except ValueError:
            raise UsageError(f"--{name} {v}: {val!r} is not a number") from None
    return out["*"] if list(out) == ["*"] else out


def _over(default: Any, value: Any) -> Any:
    """A setting from the flags over the default: a global value replaces it, {attr: x} (no "*")
    changes those attributes of a per-attribute default and keeps the rest."""
    if isinstance(value, dict) and "*" not in value:
        base = dict(default) if isinstance(default, Mapping) else {"*": default}
        return {**base, **value}
    return value


def fail(command: str, error: Exception | str, prefix: str = "error: ") -> int:
    """Print `amadeus COMMAND: error: MESSAGE` on stderr; return the usage exit code 2."""
    print(f"amadeus {command}: {prefix}{error}", file=sys.stderr)
    return 2


def add_device_arguments(parser: argparse.ArgumentParser, threads: int, threads_help: str) -> None:
    """--device and --threads, as every sampling command offers them."""
    parser.add_argument("--device", default=DEFAULT_DEVICE, help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    parser.add_argument("--threads", type=int, default=threads, help=threads_help)


def check_steps(steps: int | None) -> None:
    """--steps must be None (the sampler's default) or 1..K."""
    K = len(ATTRIBUTES)
    if steps is not None and not 1 <= steps <= K:
        raise UsageError(f"--steps {steps}: must be in 1..{K} (the number of attributes)")


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
