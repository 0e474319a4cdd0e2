"""Running the static note function: as it is, compiled by torch.compile, or captured as CUDA graphs.

Static decoding (`amadeus.sampling.batch`) makes a note a fixed-shape function of the batch's device
tensors, `note()`, that updates them in place and reads nothing back. On CUDA, launching its small kernels
one by one costs more than running them (one cached 30m backbone step took about 4.5 ms at batch 1 on an
H200, for 80 MB of weights the chip reads in 20 microseconds), so `NoteReplay` captures it once per
attention window as a CUDA graph (`torch.cuda.CUDAGraph`) and then replays the graph: one launch per
note. The first note at a window runs op by op (it warms the kernels and the allocator up), the second
is captured, the rest replay it. With `compile`, `torch.compile(fullgraph=True)` fuses the elementwise
work first: on CUDA the compiled function is what the graph captures, on the CPU it runs as it is.
Should a capture fail, decoding goes on without graphs and says so (a warning, and `failure`).
"""

from __future__ import annotations

import warnings
from typing import Callable

import torch

COMPILE_BACKEND = "inductor"
"""torch.compile's backend for decode="compile" (the tests trace with "eager": dynamo's single graph, proving
that a note reads nothing back, without minutes of code generation)."""


class NoteReplay:
    """Calls `note()` once per note, for the attention window `window` the caller picked (each window is a
    separate compiled function and CUDA graph; a handful of sizes per piece)."""

    def __init__(self, note: Callable[[], None], device: torch.device, compile: bool = False):
        self.note = note
        self.fn = torch.compile(note, fullgraph=True, dynamic=False, backend=COMPILE_BACKEND) if compile else note
        self.use_graphs = device.type == "cuda"
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.warm: set[int] = set()
        self.failure: str | None = None  # why CUDA graphs are off, if a capture failed

    @property
    def mode(self) -> str:
        """What runs a note: "cuda-graphs", or "op by op" (eager kernels or compiled code)."""
        return "cuda-graphs" if self.use_graphs and self.failure is None else "op by op"

    def __call__(self, window: int) -> None:
        if not self.use_graphs or self.failure is not None:
            self.fn()
            return
        graph = self.graphs.get(window)
        if graph is None:
            if window not in self.warm:  # the first note at this window: run it, warming everything up
                self.warm.add(window)
                self.fn()
                return
            graph = self._capture(window)
            if graph is None:
                self.fn()
                return
        graph.replay()

    def _capture(self, window: int) -> torch.cuda.CUDAGraph | None:
        """Record one note as a CUDA graph (recording runs nothing); None, with a warning, if it fails."""
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                self.fn()
        except RuntimeError as err:
            self.failure = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
            warnings.warn(f"static decoding: CUDA graph capture failed, going on without graphs ({self.failure})",
                          RuntimeWarning, stacklevel=3)
            return None
        self.graphs[window] = graph
        return graph
