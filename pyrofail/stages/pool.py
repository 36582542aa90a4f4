"""Run independent tasks of a stage in this process, in a local process pool, or on a Dask cluster.

A task is a picklable ``(function, arguments)`` pair whose function is a module-level pure
function of its arguments and of files in the run folder; it seeds its own draws, so where it
runs does not change what it returns. The local pool gives each worker process ``threads``
torch threads, so that ``workers`` processes share the cores. Inside :func:`scheduler` every
stage's tasks go to a Dask cluster instead (:mod:`pyrofail.stages.dask_pool`).
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence

import torch

__all__ = ["call", "run_tasks", "scheduler", "threads_per_worker"]

# The Dask backend that run_tasks sends tasks to while a `scheduler` block is open.
_backend = None


def threads_per_worker(workers: int) -> int:
    return max(1, (os.cpu_count() or 1) // max(1, workers))


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


@contextlib.contextmanager
def scheduler(address: str | None, workers: int = 1, device: str = "cpu", quiet: bool = True) -> Iterator:
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

    with dask_pool.connect(address, workers, device=device, quiet=quiet) as backend:
        previous, _backend = _backend, backend
        try:
            yield backend
        finally:
            _backend = previous


def run_tasks(fn: Callable, tasks: Sequence[tuple], workers: int = 1, progress=None) -> list:
    """``[fn(*args) for args in tasks]``: on the Dask cluster of an open :func:`scheduler`
    block, else ``workers`` at a time in spawned processes when ``workers > 1``, else here;
    ``progress(i, total)`` after each task finishes (in order)."""
    tasks = list(tasks)
    if _backend is not None and tasks:
        return _backend.run(fn, tasks, progress)
    if workers <= 1 or len(tasks) <= 1:
        out = []
        for i, args in enumerate(tasks):
            out.append(fn(*args))
            if progress is not None:
                progress(i + 1, len(tasks))
        return out
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    threads = threads_per_worker(workers)
    context = mp.get_context("spawn")
    with ProcessPoolExecutor(workers, context, initializer=_exit_with, initargs=(os.getpid(),)) as pool:
        futures = [pool.submit(_call, (fn, args, threads)) for args in tasks]
        out = []
        for i, fut in enumerate(futures):
            out.append(fut.result())
            if progress is not None:
                progress(i + 1, len(tasks))
    return out
