"""Run independent tasks of a stage in this process, in a local process pool, or on a Dask cluster.

A task is a picklable ``(function, arguments)`` pair whose function is a module-level pure
function of its arguments and of files in the run folder; it seeds its own draws, so where it
runs does not change what it returns.

**Threads.** Every task runs with ``threads`` torch threads (one by default). The networks of
this project are 50 units wide: a second intra-op thread buys nothing on them, and on a machine
where anything else runs, threads spinning against each other made the default run up to 8x
slower (``benchmarks/README.md``). Parallelism comes from running tasks side by side instead:
``workers`` processes, by default one per core this process may use.

**One pool per run.** Inside :func:`local`, the worker processes are started once, on the first
stage that needs them, and serve every later stage (starting a process that imports torch costs
seconds). Inside :func:`scheduler` every stage's tasks go to a Dask cluster instead
(:mod:`pyrofail.stages.dask_pool`).

**Progress.** With ``label`` and not ``quiet``, finished tasks are reported on stderr: a bar on
a terminal, one plain line per task otherwise (a log file gets no escape codes).
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence

import torch

__all__ = ["available_cores", "call", "local", "run_tasks", "scheduler"]

# The Dask backend that run_tasks sends tasks to while a `scheduler` block is open.
_backend = None
# The local process pool shared by the stages of a run while a `local` block is open.
_local = None


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def call(fn: Callable, args: tuple, threads: int | None):
    """``fn(*args)`` with ``threads`` torch threads (``None``: as the process has them)."""
    if threads:
        torch.set_num_threads(threads)
    return fn(*args)


def _call(task):
    return call(*task)


def _exit_with(parent: int) -> None:
    """A worker's initializer: end the worker when ``parent`` (the run's process) is gone.

    A killed run (``kill PID``, not Ctrl-C, which reaches the whole process group) would
    otherwise leave its workers fitting on, writing into the run folder while a resumed or
    new run writes the same jobs."""

    def watch():
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="exit-with-parent").start()


class _LocalPool:
    """A process pool of ``workers`` spawned processes, started on first use."""

    def __init__(self, workers: int):
        self.workers = workers
        self._executor = None

    def executor(self):
        if self._executor is None:
            import multiprocessing as mp
            from concurrent.futures import ProcessPoolExecutor

            context = mp.get_context("spawn")
            self._executor = ProcessPoolExecutor(
                self.workers, context, initializer=_exit_with, initargs=(os.getpid(),)
            )
        return self._executor

    def close(self):
        if self._executor is not None:
            self._executor.shutdown(cancel_futures=True)
            self._executor = None


@contextlib.contextmanager
def local(workers: int) -> Iterator[None]:
    """Inside the block, :func:`run_tasks` with ``workers > 1`` shares one pool of ``workers``
    processes, started when first needed and closed at the end."""
    global _local
    previous, _local = _local, _LocalPool(workers)
    try:
        yield
    finally:
        _local.close()
        _local = previous


@contextlib.contextmanager
def scheduler(
    address: str | None, workers: int = 1, device: str = "cpu", quiet: bool = True, threads: int = 1
) -> Iterator:
    """Inside the block, :func:`run_tasks` sends every task to the Dask cluster at ``address``
    (``"tcp://host:8786"``), or to a ``LocalCluster`` of ``workers`` single-threaded worker
    processes started here and closed at the end (``address="local"``); with a CUDA
    ``device`` every task asks for a ``GPU`` worker resource. ``address=None`` changes nothing.
    Yields the backend (``None`` without a scheduler).

    Example:
        >>> with scheduler(None) as backend:
        ...     run_tasks(pow, [(2, 3), (3, 2)])
        [8, 9]
    """
    global _backend
    if address is None:
        yield None
        return
    from pyrofail.stages import dask_pool

    with dask_pool.connect(address, workers, device=device, quiet=quiet, threads=threads) as backend:
        previous, _backend = _backend, backend
        try:
            yield backend
        finally:
            _backend = previous


class _Progress:
    """Finished tasks on stderr: a tqdm bar on a terminal, else one line per task."""

    def __init__(self, label: str | None, total: int, quiet: bool):
        self.label, self.total, self.done = label, total, 0
        self.active = bool(label) and not quiet and total > 0
        self.start = time.perf_counter()
        self.bar = None
        if self.active and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=label, unit="task", dynamic_ncols=True, leave=False)

    def __call__(self, result=None) -> None:
        self.done += 1
        if not self.active:
            return
        if self.bar is not None:
            self.bar.update(1)
            return
        what = result if isinstance(result, str) else result.get("job") if isinstance(result, dict) else None
        name = f" ({what})" if what else ""
        seconds = time.perf_counter() - self.start
        print(
            f"{self.label}: {self.done}/{self.total} done{name}, {seconds:.0f} s", file=sys.stderr, flush=True
        )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.active:
            seconds = time.perf_counter() - self.start
            print(f"{self.label}: {self.total} finished in {seconds:.0f} s", file=sys.stderr, flush=True)


def run_tasks(
    fn: Callable,
    tasks: Sequence[tuple],
    workers: int = 1,
    progress=None,
    threads: int | None = None,
    label: str | None = None,
    quiet: bool = True,
) -> list:
    """``[fn(*args) for args in tasks]``: on the Dask cluster of an open :func:`scheduler`
    block, else ``workers`` at a time in worker processes when ``workers > 1`` (the pool of an
    open :func:`local` block, or one started for these tasks), else here, each task with
    ``threads`` torch threads; ``progress(i, total)`` after each task finishes (in order), and
    the finished tasks reported under ``label`` unless ``quiet``."""
    tasks = list(tasks)
    report = _Progress(label, len(tasks), quiet)

    def finished(i, result):
        report(result)
        if progress is not None:
            progress(i + 1, len(tasks))

    try:
        if _backend is not None and tasks:
            out = _backend.run(fn, tasks, lambda i, total: finished(i - 1, None))
            return out
        if workers <= 1 or len(tasks) <= 1:
            out = []
            for i, args in enumerate(tasks):
                out.append(call(fn, args, threads))
                finished(i, out[-1])
            return out
        pool = _local if _local is not None else _LocalPool(workers)
        try:
            futures = [pool.executor().submit(_call, (fn, args, threads)) for args in tasks]
            out = []
            for i, fut in enumerate(futures):
                out.append(fut.result())
                finished(i, out[-1])
            return out
        finally:
            if pool is not _local:
                pool.close()
    finally:
        report.close()
