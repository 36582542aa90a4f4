r"""The memory budget of a worker, and the chunk sizes that keep every evaluation inside it.

A run gives each worker process a budget of bytes (``--max-memory``, :data:`DEFAULT_BUDGET` =
1 GiB). The evaluations (test bounds, :math:`\log p(x)`, mutual information, the comparisons
with the reference) stream over the test points in chunks whose working set is a fixed share of
it, :func:`chunk_bytes`, so that their peak does not grow with the number of points :math:`N`,
the latent dimension :math:`K` or the number of particles; :func:`rows` turns that share into
a number of rows (one row: one decoder evaluation, a draw of :math:`z` at one point) with the
per-row cost :func:`row_bytes`. The chunk never changes the numbers: the random draws belong
to fixed blocks of points and draws (:mod:`pyrofail.bounds`), not to chunks.

**Why chunking alone was not enough.** glibc's allocator raises its mmap threshold (up to
32 MiB) each time a large block is freed, so chunk-sized temporaries come from the heap after
the first one; a small allocation that outlives a chunk (a per-chunk result kept in a list)
then lands above them and pins the heap, and every freed chunk below stays resident. That is
how the aggregate posterior of ``mutual_information`` (thousands of chunks of ~16 MiB each,
one small result kept per chunk) held 7.2 GB at 10,000 points (clusters, K = 2,
``benchmarks/README.md``). The evaluations therefore write into outputs allocated once before
the loop, and :func:`steps` hands the free heap back to the system between chunks
(:func:`release`, glibc's ``malloc_trim``; a no-op elsewhere).

:func:`check_run` estimates a run's peak from its options before it starts and refuses, in one
line, a run that cannot fit the budget even with chunking (the training step is not chunked).

Example:
    >>> parse_size("1GiB"), parse_size("512MB"), parse_size("1.5 G")
    (1073741824, 512000000, 1610612736)
    >>> chunk_bytes(parse_size("1GiB")) == 16 * 2**20, chunk_bytes(parse_size("32MiB")) == 8 * 2**20
    (True, True)
    >>> rows(parse_size("64MiB"), 4096), rows(parse_size("64MiB"), 4096, multiple=1000)
    (4096, 4000)
"""

from __future__ import annotations

import ctypes
import ctypes.util
import re

import torch

from pyrofail.errors import UsageError

__all__ = [
    "DEFAULT_BUDGET",
    "MAX_CHUNK_BYTES",
    "RESIDENT_BYTES",
    "check_run",
    "chunk_bytes",
    "estimate_run",
    "format_size",
    "network_widths",
    "parse_size",
    "release",
    "resolve",
    "row_bytes",
    "rows",
    "steps",
]

DEFAULT_BUDGET = 2**30  # bytes per worker process: 1 GiB
# A chunk's working set is this share of the budget; the rest holds the interpreter, torch,
# the models and the data (RESIDENT_BYTES) and what the allocator keeps between chunks.
CHUNK_SHARE = 4
# ... and never more than this. Larger chunks are not faster: from ~16,000 rows on, a matrix
# product runs at full speed, and a temporary above glibc's largest mmap threshold (32 MiB) is
# a fresh mapping every time (page faults, zeroing) where a smaller one reuses the heap.
# Measured on 2,000 points (K = 3, the paper's networks, one core): importance sampling with
# 2,000 draws took 3.0-4.7 CPU s in 16 MiB chunks and 3.7-4.3 in 64 MiB ones (15-17 s wall
# before chunking by bytes, in 1M-row chunks). Small chunks also keep the peak flat: the
# heap's layout varies from chunk to chunk by about a chunk (64 MiB chunks: the ELBO's peak
# at 50,000 points 34 MiB above its peak at 2,000 in one run, 2 MiB in another).
MAX_CHUNK_BYTES = 16 * 2**20
MIN_BUDGET = 16 * 2**20  # below this nothing useful fits: a user's typo ("1M" for "1G")
# Python, torch and pyro imported, the package loaded and a fitted model in memory: the
# resident set of a job process before its evaluation, measured 380-450 MiB (clusters, K = 3,
# the paper's 3 x 50 networks; benchmarks/README.md, "Evaluation memory and time").
RESIDENT_BYTES = 450 * 2**20

_UNITS = {
    "": 1,
    "b": 1,
    "k": 2**10,
    "kb": 10**3,
    "kib": 2**10,
    "m": 2**20,
    "mb": 10**6,
    "mib": 2**20,
    "g": 2**30,
    "gb": 10**9,
    "gib": 2**30,
    "t": 2**40,
    "tb": 10**12,
    "tib": 2**40,
}
_SIZE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([a-z]*)\s*$")


def parse_size(text) -> int:
    """Bytes in a size such as ``"1GiB"``, ``"512MB"``, ``"1.5G"`` or ``2**30``: binary units
    (KiB, MiB, GiB, TiB and the bare K, M, G, T) and decimal ones (kB, MB, GB, TB).

    Example:
        >>> parse_size("2 GiB") == 2 * 2**30, parse_size(1000)
        (True, 1000)
    """
    if isinstance(text, bool):
        raise UsageError(f"memory size {text!r} is not a size; expected e.g. 1GiB, 512MB or 800M")
    if isinstance(text, int):
        out = text
    else:
        match = _SIZE.match(str(text).lower())
        if match is None or match.group(2) not in _UNITS:
            raise UsageError(
                f"memory size {text!r} is not a size; expected a number with a unit: e.g. 1GiB, 512MB or 800M"
            )
        out = int(float(match.group(1)) * _UNITS[match.group(2)])
    if out <= 0:
        raise UsageError(f"memory size {text!r} is not allowed; expected a positive size such as 1GiB")
    return out


def resolve(budget=None) -> int:
    """A worker's budget in bytes: ``None`` is :data:`DEFAULT_BUDGET`, a string is parsed
    (:func:`parse_size`); at least 16 MiB."""
    out = DEFAULT_BUDGET if budget is None else parse_size(budget)
    if out < MIN_BUDGET:
        raise UsageError(
            f"memory budget {format_size(out)} is too small; expected at least 16MiB (e.g. 1GiB)"
        )
    return out


def format_size(n: float) -> str:
    """``n`` bytes in MiB or GiB, e.g. ``"1.5 GiB"``."""
    if n >= 2**30:
        return f"{n / 2**30:.1f} GiB"
    return f"{n / 2**20:.0f} MiB"


def chunk_bytes(budget=None) -> int:
    """The working set one chunk of an evaluation may use: a quarter of the worker's budget,
    at most :data:`MAX_CHUNK_BYTES` (16 MiB)."""
    return min(MAX_CHUNK_BYTES, resolve(budget) // CHUNK_SHARE)


def rows(budget, bytes_per_row: int, multiple: int = 1) -> int:
    """How many rows of ``bytes_per_row`` one chunk holds within ``budget`` (at least one),
    rounded down to a multiple of ``multiple`` (at least ``multiple``)."""
    n = max(1, chunk_bytes(budget) // max(1, int(bytes_per_row)))
    return max(multiple, n - n % multiple)


def network_widths(*modules) -> list[int]:
    """The output widths of every layer of the networks inside ``modules``
    (:class:`pyrofail.nn.MLP` and ``torch.nn.Linear``)."""
    widths = []
    for module in modules:
        if module is None or not isinstance(module, torch.nn.Module):
            continue
        for m in module.modules():
            if hasattr(m, "sizes") and hasattr(m, "weights"):  # pyrofail.nn.MLP
                widths.extend(int(s) for s in m.sizes[1:])
            elif isinstance(m, torch.nn.Linear):
                widths.append(int(m.out_features))
    return widths


def row_bytes(widths, latent_dim: int, data_dim: int, itemsize: int = 4) -> int:
    r"""Bytes held per row while networks with layer widths ``widths`` evaluate
    :math:`\log p(x, z) - \log q(z \mid x)` without gradients: a layer's input, output and
    activation at once (three times the widest layer; the others are freed as it goes), the
    decoder's mean, residual and square (:math:`4D`), :math:`z`, its noise and the Gaussian
    terms (:math:`8K`), and the row's scalars. Measured on the paper's decoder (3 x 50,
    K = 3, D = 2) at 65,536 to 1,048,576 rows: 641-1,075 bytes a row against 792 here
    (``tests/test_memory.py`` holds the measured peak of a chunk below its estimate).

    Example:
        >>> row_bytes([50, 50, 50, 2], latent_dim=3, data_dim=2)  # the paper's decoder
        792
    """
    return itemsize * (3 * max(widths, default=data_dim) + 4 * data_dim + 8 * latent_dim + 16)


def model_row_bytes(model, guide=None) -> int:
    """:func:`row_bytes` of a model (and guide) as built: the widest layer of their networks
    (a flow's run per draw, an encoder's per point: counting both is safe), their
    ``latent_dim``, ``data_dim`` and parameter precision."""
    params = next((p for p in model.parameters()), None) if isinstance(model, torch.nn.Module) else None
    itemsize = params.element_size() if params is not None else 4
    k = int(getattr(model, "latent_dim", 1) or 1)
    d = int(getattr(model, "data_dim", 1) or 1)
    return row_bytes(network_widths(model, guide), k, d, itemsize)


_LIBC = None


def release() -> None:
    """Hand the allocator's free heap pages back to the system (glibc ``malloc_trim(0)``);
    does nothing where there is no glibc. Cheap: it walks the free lists, not the memory."""
    global _LIBC
    if _LIBC is None:
        name = ctypes.util.find_library("c")
        try:
            lib = ctypes.CDLL(name) if name else None
            _LIBC = lib if lib is not None and hasattr(lib, "malloc_trim") else False
        except OSError:
            _LIBC = False
    if _LIBC:
        _LIBC.malloc_trim(0)


def steps(total: int, size: int):
    """``(start, stop)`` of consecutive chunks of ``size`` over ``range(total)``, releasing the
    free heap (:func:`release`) after each, so what one chunk freed cannot pile up.

    Example:
        >>> list(steps(5, 2))
        [(0, 2), (2, 4), (4, 5)]
    """
    size = max(1, int(size))
    for start in range(0, total, size):
        yield start, min(total, start + size)
        release()


# -- the run as a whole ---------------------------------------------------------------------

# Autograd keeps every layer's input and output for the backward pass: a training (or
# optimised) row costs this many times an evaluation row.
TRAINING_FACTOR = 3
# Rows of the smallest unit an evaluation streams (pyrofail.bounds: POINT_BLOCK points by
# SAMPLE_BLOCK draws): one tile is held whatever the budget.
_TILE_ROWS = 64 * 256
# Draws per validation point in training (pyrofail.training.loop.VAL_SAMPLES) and the
# (draw, point) pairs its unseeded evaluation holds at most (pyrofail.bounds): validation is
# not chunked by the budget, so that training computes what it always has.
_VAL_SAMPLES, _VAL_PAIRS = 16, 2**20
# Bytes kept per test point by a job's evaluation: the per-point bounds, log p(x), I(x; z_i)
# per dimension and their errors, and the JSON written from them.
_PER_POINT_BYTES = 512


def _particles(options: dict) -> int:
    if options.get("num_particles") is not None:
        return max(1, int(options["num_particles"]))
    by_objective = options.get("objective_options") or {}
    found = [
        int(v["num_particles"]) for v in by_objective.values() if isinstance(v, dict) and "num_particles" in v
    ]
    return max(found, default=1)


def estimate_run(options: dict) -> dict:
    """The parts of a run's peak per worker, in bytes, from its options (the keys of a run's
    ``config.json``): ``max_memory`` (the budget), ``restarts``, ``batch_size``, ``hidden``,
    ``latent_dim`` (a number or a list: the largest counts), ``n_train``, ``n_val``,
    ``n_test``, ``num_particles`` or ``objective_options`` (the largest ``num_particles``),
    ``data_dim`` (default 2). Returns ``{"budget", "resident", "data", "training",
    "evaluation", "total", "largest", "row_bytes", "particles"}``: the training step (the
    minibatch of every restart and particle, with its gradients, or the validation of every
    restart if larger: neither is chunked), the largest
    evaluation chunk (at most a quarter of the budget, at least one tile), and ``largest``,
    the larger of the two."""
    budget = resolve(options.get("max_memory"))
    latent = options.get("latent_dim", 1)
    k = int(max(latent) if isinstance(latent, (list, tuple)) else latent or 1)
    d = int(options.get("data_dim") or 2)
    hidden = [int(h) for h in options.get("hidden") or [50, 50, 50]]
    per_row = row_bytes([*hidden, d, 2 * k], k, d)  # decoder and encoder on the same widths
    particles = _particles(options)
    rows_per_step = int(options.get("batch_size") or 100) * int(options.get("restarts") or 1) * particles
    n_points = sum(int(options.get(key) or 0) for key in ("n_train", "n_val", "n_test"))
    # the data (and the splits' copies of it) and what each test point keeps
    data = 3 * 4 * d * n_points + _PER_POINT_BYTES * int(options.get("n_test") or 0)
    restarts = int(options.get("restarts") or 1)
    val_points = min(int(options.get("n_val") or 0), _VAL_PAIRS // _VAL_SAMPLES)
    training = max(TRAINING_FACTOR * rows_per_step, val_points * _VAL_SAMPLES * restarts) * per_row
    evaluation = max(chunk_bytes(budget), _TILE_ROWS * per_row)
    largest = "training" if training >= evaluation else "evaluation"
    total = RESIDENT_BYTES + data + max(training, evaluation)
    return {
        "budget": budget,
        "resident": RESIDENT_BYTES,
        "data": data,
        "training": training,
        "evaluation": evaluation,
        "total": total,
        "largest": largest,
        "row_bytes": per_row,
        "particles": particles,
    }


def check_run(options: dict) -> None:
    """Refuse, before it starts, a run whose estimated peak per worker (:func:`estimate_run`)
    exceeds its budget even with every evaluation chunked: :class:`~pyrofail.errors.UsageError`
    with one line giving the estimate, the budget and what to change.

    Example:
        >>> check_run({"max_memory": "1GiB", "restarts": 10, "batch_size": 100, "num_particles": 20})
        >>> try:
        ...     check_run({"max_memory": "1GiB", "restarts": 10, "batch_size": 5000, "num_particles": 20})
        ... except UsageError as e:
        ...     print(str(e).replace("; ", ";\\n").replace(", or raise", ",\\nor raise"))
        the run needs about 2.5 GiB per worker (training: 5000 points x 10 restarts x 20 particles a step), \
above --max-memory 1.0 GiB;
        lower --batch-size, --restarts, --num-particles, --n-val or --hidden,
        or raise --max-memory to at least 2.5 GiB
    """
    est = estimate_run(options)
    if est["total"] <= est["budget"]:
        return
    need, have = format_size(est["total"]), format_size(est["budget"])
    if est["data"] > max(est["training"], est["evaluation"]):
        what = "the data and the per-point results"
        fix = "use fewer points (--n-train, --n-val, --n-test)"
    elif est["largest"] == "training":
        b, r = int(options.get("batch_size") or 100), int(options.get("restarts") or 1)
        what = f"training: {b} points x {r} restarts x {est['particles']} particles a step"
        fix = "lower --batch-size, --restarts, --num-particles, --n-val or --hidden"
    else:
        what = f"one block of the evaluation: {_TILE_ROWS} decoder rows of {est['row_bytes']} bytes"
        fix = "use narrower networks (--hidden)"
    raise UsageError(
        f"the run needs about {need} per worker ({what}), above --max-memory {have}; "
        f"{fix}, or raise --max-memory to at least {need}"
    )
