"""Counting the host's reads of the device (synchronisations) while generating: for the tests and benchmarks.

On CUDA, every read of a device value from Python (`.item()`, `.tolist()`, `.cpu()`, `bool(t)`, `int(t)`,
`nonzero`, indexing with a boolean mask, ...) waits for every kernel queued before it: the host stops
feeding the chip until the chip is idle. `count_syncs()` counts such reads on any device, the CPU
included, by wrapping those entry points of torch while it is active (a read that calls another is
counted once); on CUDA it also turns on `torch.cuda.set_sync_debug_mode("warn")` and counts the warnings
that synchronising kernels raise, which catches reads made inside torch's own C++ code as well.
"""

from __future__ import annotations

import warnings
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch

_READS = ("item", "tolist", "cpu", "__bool__", "__int__", "__float__", "__index__", "nonzero")
_FUNCTIONS = ("nonzero", "masked_select", "unique", "argwhere")


@dataclass
class SyncCount:
    """What `count_syncs` saw: `reads` (Python-level reads of a tensor's value), by entry point (`where`),
    and `cuda` (synchronisations CUDA's sync debug mode reported; 0 without CUDA)."""

    reads: int = 0
    where: Counter = field(default_factory=Counter)
    cuda: int = 0
    depth: int = 0  # > 0 inside a counted call


def _has_mask(index: Any) -> bool:
    """An index that makes torch read the data on the host: a boolean tensor (alone or in a tuple)."""
    items = index if isinstance(index, tuple) else (index,)
    return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in items)


def _to_host(args: tuple, kwargs: dict) -> bool:
    """`Tensor.to(...)` arguments that name the CPU."""
    target = kwargs.get("device", args[0] if args else None)
    return isinstance(target, (str, torch.device)) and torch.device(target).type == "cpu"


@contextmanager
def count_syncs() -> Iterator[SyncCount]:
    """Count the reads of tensor values made inside the block (see the module docstring)."""
    count = SyncCount()
    saved: list[tuple[Any, str, Any]] = []

    def wrap(owner: Any, name: str, when: Callable[[tuple, dict], bool] | None = None) -> None:
        real = getattr(owner, name)

        def spy(*args: Any, **kwargs: Any) -> Any:
            if count.depth == 0 and (when is None or when(args, kwargs)):
                count.reads += 1
                count.where[name] += 1
            count.depth += 1
            try:
                return real(*args, **kwargs)
            finally:
                count.depth -= 1

        saved.append((owner, name, real))
        setattr(owner, name, spy)

    for name in _READS:
        wrap(torch.Tensor, name)
    wrap(torch.Tensor, "to", lambda a, k: _to_host(a[1:], k))
    wrap(torch.Tensor, "__getitem__", lambda a, k: _has_mask(a[1]))
    wrap(torch.Tensor, "__setitem__", lambda a, k: _has_mask(a[1]))
    for name in _FUNCTIONS:
        wrap(torch, name)
    cuda = torch.cuda.is_available()
    try:
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            if cuda:
                torch.cuda.set_sync_debug_mode("warn")
            yield count
            if cuda:
                torch.cuda.set_sync_debug_mode("default")
        count.cuda = sum("synchroniz" in str(w.message) for w in seen)
    finally:
        if cuda:
            torch.cuda.set_sync_debug_mode("default")
        for owner, name, real in reversed(saved):
            setattr(owner, name, real)
