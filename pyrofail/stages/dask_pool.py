"""The stages' tasks on a Dask cluster (``python -m pyrofail.analyze --scheduler ADDRESS``).

Every task of a stage is a pure function of its arguments and of files in the run folder
(:mod:`pyrofail.stages.pool`), so it can run on any worker that sees the run folder: the folder
must be on a filesystem that the client and every worker share, under the same path. A task
seeds its own draws and sets its own torch threads, and returns plain values (records, paths).

* A task that raises is retried (``retries``); a worker that dies takes its running tasks with
  it and the scheduler reruns them elsewhere. Either way the task starts again from the files
  it finds: a finished job (``metrics.json``) or reference is never recomputed, and a fit
  resumes from its last checkpoint with the numbers of an uninterrupted one.
* With a CUDA device, every task asks for one ``GPU`` worker resource, so start GPU workers
  with ``dask worker ADDRESS --nthreads 1 --resources GPU=1`` (one per device).
* Workers run one task at a time best (``--nthreads 1``); each task then uses the torch
  threads of its worker process, which Dask's nanny starts with ``OMP_NUM_THREADS=1``: set
  ``OMP_NUM_THREADS`` in the workers' environment to give each task more.

``address="local"`` starts a ``LocalCluster`` of single-threaded worker processes on this
machine for the run (each with ``cores // workers`` torch threads) and closes it at the end.

Dask is an optional dependency: ``pip install -c constraints.txt ".[dask]"``.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Sequence

from pyrofail.errors import UsageError

__all__ = ["DaskBackend", "INSTALL", "RETRIES", "check_address", "connect"]

INSTALL = 'pip install -c constraints.txt ".[dask]"'
RETRIES = 2  # reruns of a task that raised (a worker's death is handled by the scheduler)
CONNECT_TIMEOUT = "30s"
WORKER_TIMEOUT = 60  # seconds to wait for a cluster's first worker


SCHEMES = ("tcp", "tls", "ws", "wss", "ucx")


def check_address(address: str) -> str:
    """``address`` if it is ``"local"`` or a scheduler address (``[SCHEME://]HOST:PORT``, the
    scheme one of :data:`SCHEMES`), checked without Dask and without contacting anything;
    else a :class:`~pyrofail.errors.UsageError` that says what is allowed.

    Example (the error's text shortened):
        >>> check_address("tcp://10.0.0.5:8786"), check_address("local")
        ('tcp://10.0.0.5:8786', 'local')
        >>> check_address("10.0.0.5")
        Traceback (most recent call last):
        ...
        pyrofail.errors.UsageError: --scheduler '10.0.0.5': not a Dask scheduler address; ...
    """
    scheme, sep, rest = address.partition("://")
    if not sep:
        scheme, rest = "tcp", address
    host, _, port = rest.rpartition(":")
    ok = address == "local" or (
        scheme in SCHEMES and host not in ("", "[]") and port.isdigit() and 0 < int(port) < 65536
    )
    if not ok:
        raise UsageError(
            f"--scheduler {address!r}: not a Dask scheduler address; use local, or tcp://HOST:PORT "
            f"(schemes: {', '.join(SCHEMES)})"
        )
    return address


def _distributed():
    try:
        import distributed
    except ImportError:
        raise UsageError(
            f"--scheduler needs Dask (dask and distributed); install them with: {INSTALL}"
        ) from None
    return distributed


class DaskBackend:
    """Sends tasks to a :class:`distributed.Client`'s cluster.

    :param client: a connected client.
    :param threads: torch threads per task (``None``: as the worker process has them).
    :param resources: worker resources each task asks for, e.g. ``{"GPU": 1}``.
    :param retries: reruns of a task that raised.
    """

    def __init__(
        self, client, threads: int | None = None, resources: dict | None = None, retries: int = RETRIES
    ):
        self.client, self.threads, self.resources, self.retries = client, threads, resources, retries

    @property
    def workers(self) -> int:
        """The number of workers the cluster has now."""
        return max(1, len(self.client.scheduler_info(n_workers=-1)["workers"]))

    def run(self, fn: Callable, tasks: Sequence[tuple], progress=None) -> list:
        """``[fn(*args) for args in tasks]`` on the cluster, results in order;
        ``progress(i, total)`` after each (in order)."""
        futures = [
            self.client.submit(
                call,
                fn,
                tuple(args),
                self.threads,
                key=f"{getattr(fn, '__name__', 'task')}-{i}-{_token()}",
                pure=False,
                retries=self.retries,
                resources=self.resources,
            )
            for i, args in enumerate(tasks)
        ]
        out = []
        try:
            for i, fut in enumerate(futures):
                out.append(fut.result())
                if progress is not None:
                    progress(i + 1, len(futures))
        except BaseException:
            self.client.cancel(futures)
            raise
        return out


def call(fn: Callable, args: tuple, threads: int | None):
    """``fn(*args)`` on a worker, with ``threads`` torch threads (``None``: as the worker has)."""
    if threads:
        import torch

        torch.set_num_threads(threads)
    return fn(*args)


def _token() -> str:
    import uuid

    return uuid.uuid4().hex[:12]


@contextlib.contextmanager
def connect(
    address: str, workers: int = 1, device: str = "cpu", quiet: bool = True, threads: int = 1
) -> Iterator[DaskBackend]:
    """A :class:`DaskBackend` on the cluster at ``address``, or on a ``LocalCluster`` of
    ``workers`` processes whose tasks run with ``threads`` torch threads each
    (``address="local"``), closed at the end of the block.
    Fails with a :class:`~pyrofail.errors.UsageError` when Dask is not installed, no scheduler
    answers, or no worker offers a GPU for a CUDA device."""
    distributed = _distributed()
    gpu = str(device).startswith("cuda")
    resources = {"GPU": 1} if gpu else None
    cluster = None
    log_level = logging.ERROR if quiet else logging.WARNING
    try:
        if address == "local":
            cluster = distributed.LocalCluster(
                n_workers=workers,
                threads_per_worker=1,
                processes=True,
                dashboard_address=None,
                silence_logs=log_level,
                resources=resources,
            )
            client = distributed.Client(cluster)
        else:  # a worker's tasks run with the threads its environment gives them
            try:
                client = distributed.Client(address, timeout=CONNECT_TIMEOUT)
            except (OSError, TimeoutError, ValueError) as e:
                raise UsageError(f"--scheduler {address}: no Dask scheduler answered ({e})") from None
            threads = None
        try:
            client.wait_for_workers(1, timeout=WORKER_TIMEOUT)
        except TimeoutError:
            client.close()
            raise UsageError(f"--scheduler {address}: the cluster has no workers") from None
        if gpu and not _has_gpu(client):
            client.close()
            raise UsageError(
                f"--device {device} with --scheduler {address}: no worker offers a GPU resource; "
                "start the workers with --resources GPU=1"
            )
        try:
            yield DaskBackend(client, threads=threads, resources=resources)
        finally:
            client.close()
    finally:
        if cluster is not None:
            cluster.close()


def _has_gpu(client) -> bool:
    workers = client.scheduler_info(n_workers=-1)["workers"].values()
    return any(w.get("resources", {}).get("GPU", 0) >= 1 for w in workers)
