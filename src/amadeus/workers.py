"""A crash-isolating process pool: long-lived workers, one task at a time, each task's failure its own.

Used by `amadeus preprocess` (MIDI -> shard rows) and by the corpus build (music21 scores -> MIDI),
whose inputs include files that can segfault a parser or hang. The parent knows which task every
worker holds, so a worker that dies or runs past the timeout costs exactly that task; a fresh worker
takes its place.
"""
from __future__ import annotations

import math
import multiprocessing as mp
import os
import signal
import time
import traceback
from contextlib import contextmanager
from multiprocessing.connection import Connection, wait
from typing import Any, Callable, Iterable, Iterator


class SkipFile(Exception):
    """A task input that cannot be used; the message is the reason (for a file: stored in the manifest)."""


def _signal_name(num: int) -> str:
    """'SIGSEGV' for 11: the name a crash report shows."""
    try:
        return signal.Signals(num).name
    except ValueError:
        return f"signal {num}"


READY, INIT_ERROR = "__ready__", "__init_error__"  # the first message of a worker


def _worker_main(conn: Connection, fn: Callable[[Any], Any], initializer: Callable | None, initargs: tuple) -> None:
    """Loop of a worker process: announce READY, then receive (key, arg), send (key, ok, result-or-reason)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's business
    try:
        if initializer is not None:
            initializer(*initargs)
    except BaseException as e:  # noqa: BLE001 - reported to the parent, which stops the run
        conn.send((INIT_ERROR, False, f"{type(e).__name__}: {e}\n{traceback.format_exc()}"))
        return
    conn.send((READY, True, None))
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        if msg is None:
            return
        key, arg = msg
        try:
            out = (key, True, fn(arg))
        except SkipFile as e:
            out = (key, False, str(e))
        except Exception as e:  # noqa: BLE001 - any failure costs only this task
            out = (key, False, f"{type(e).__name__}: {e}")
        try:
            conn.send(out)
        except Exception as e:  # noqa: BLE001 - e.g. an unpicklable result
            conn.send((key, False, f"result not transferable: {type(e).__name__}: {e}"))


ONE_THREAD_ENV = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


@contextmanager
def _one_thread_env() -> Iterator[None]:
    """Environment for a worker process: one BLAS thread (workers are one per core, and BLAS threads
    only slow down the tiny matrix products of the tokenizer), unless the user set otherwise."""
    saved = {k: os.environ.get(k) for k in ONE_THREAD_ENV}
    for k, v in ONE_THREAD_ENV.items():
        os.environ.setdefault(k, v)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


class _Worker:
    """One worker process, its pipe, and the task it holds."""

    def __init__(self, ctx, fn, initializer, initargs) -> None:
        self.conn, child = ctx.Pipe(duplex=True)
        self.proc = ctx.Process(target=_worker_main, args=(child, fn, initializer, initargs), daemon=True)
        with _one_thread_env():  # a spawned child takes the environment as it is now
            self.proc.start()
        child.close()  # so that a dead worker reads as EOF here
        self.ready = False  # set by its READY message: startup never counts against a task's timeout
        self.task: tuple[Any, float] | None = None  # (key, start time)

    def stop(self, kill: bool = False) -> None:
        if kill:
            self.proc.kill()
        else:
            try:
                self.conn.send(None)
            except (OSError, ValueError):
                pass
        self.proc.join(timeout=5)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join()
        self.conn.close()

    def death_reason(self) -> str:
        self.proc.join(timeout=5)
        code = self.proc.exitcode
        if code is None:
            return "worker stopped answering"
        if code < 0:
            return f"worker crashed (signal {-code}, {_signal_name(-code)})"
        return f"worker exited with code {code}"


class WorkerPool:
    """A few long-lived worker processes, each fed one task at a time through its own pipe.

    The parent knows which task every worker holds, so a worker that dies (segfault, os._exit,
    out-of-memory kill) or exceeds `timeout` seconds costs exactly that task: it is reported as
    failed with the reason ("worker crashed (signal 11, SIGSEGV)", "timed out after 60 s") and a
    fresh worker takes its place. `fn`, `initializer` and the tasks must be picklable (module-level
    functions), since workers are started with the 'spawn' method.
    """

    MAX_START_FAILURES = 3  # workers dying before READY, in a row: give up rather than loop

    def __init__(self, fn: Callable[[Any], Any], workers: int, initializer: Callable | None = None,
                 initargs: tuple = (), timeout: float | None = None, context: str = "spawn") -> None:
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.fn, self.initializer, self.initargs, self.timeout = fn, initializer, initargs, timeout
        self.ctx = mp.get_context(context)
        self.n = workers
        self.restarts = 0
        self._start_failures = 0
        self._workers: list[_Worker] = []

    def __enter__(self) -> WorkerPool:
        self._workers = [self._spawn() for _ in range(self.n)]
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _spawn(self) -> _Worker:
        return _Worker(self.ctx, self.fn, self.initializer, self.initargs)

    def close(self) -> None:
        for w in self._workers:
            w.stop(kill=w.task is not None or not w.ready)
        self._workers = []

    def _replace(self, i: int, kill: bool) -> None:
        self._workers[i].stop(kill=kill)
        self._workers[i] = self._spawn()
        self.restarts += 1

    def imap_unordered(self, tasks: Iterable[tuple[Any, Any]]) -> Iterator[tuple[Any, bool, Any]]:
        """Run (key, arg) tasks; yield (key, True, result) or (key, False, reason) as they finish."""
        if not self._workers:
            self.__enter__()
        pending = iter(tasks)
        exhausted = False
        while True:
            for w in self._workers:  # feed idle, ready workers
                if exhausted or not w.ready or w.task is not None:
                    continue
                try:
                    key, arg = next(pending)
                except StopIteration:
                    exhausted = True
                    break
                try:
                    w.conn.send((key, arg))
                    w.task = (key, time.monotonic())
                except (OSError, ValueError):  # died since its last message; the wait below sees it
                    w.task = (key, -math.inf)
            if exhausted and all(w.task is None for w in self._workers):
                return
            wait_s = 1.0
            if self.timeout is not None:
                starts = [w.task[1] for w in self._workers if w.task is not None]
                if starts:
                    wait_s = max(0.0, min(wait_s, min(starts) + self.timeout - time.monotonic()))
            watched = [w for w in self._workers if w.task is not None or not w.ready]
            ready = set(wait([w.conn for w in watched] + [w.proc.sentinel for w in watched], timeout=wait_s))
            for i, w in enumerate(self._workers):
                if w not in watched:
                    continue
                if w.conn in ready:
                    try:
                        rkey, ok, result = w.conn.recv()
                    except (EOFError, OSError):  # died: the sentinel branch below tells why
                        ready.add(w.proc.sentinel)
                    else:
                        if rkey == INIT_ERROR:
                            self.close()
                            raise RuntimeError(f"worker failed to start: {result}")
                        if rkey == READY:
                            w.ready, self._start_failures = True, 0
                        else:
                            w.task = None
                            yield rkey, ok, result
                        continue
                if w.proc.sentinel in ready or not w.proc.is_alive():
                    reason = w.death_reason()
                    key = w.task[0] if w.task is not None else None
                    if not w.ready:
                        self._start_failures += 1
                        if self._start_failures >= self.MAX_START_FAILURES:
                            self.close()
                            raise RuntimeError(f"workers keep dying while starting ({reason})")
                    self._replace(i, kill=False)
                    if key is not None:
                        yield key, False, reason
                elif w.task is not None and self.timeout is not None \
                        and time.monotonic() - w.task[1] > self.timeout:
                    key = w.task[0]
                    self._replace(i, kill=True)
                    yield key, False, f"timed out after {self.timeout:g} s"


def default_workers() -> int:
    """The usable CPU cores (the process's affinity mask where the OS has one): one worker per core."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)
