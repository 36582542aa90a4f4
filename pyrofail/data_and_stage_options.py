"""The options of :mod:`pyrofail.options` that describe a user's data (kind ``"data"``) and the
stages after the fits (kind ``"later"``), in the schema of
:class:`~pyrofail.option_schema.Option`.

Example:
    >>> [o.name for o in DATA_AND_STAGE_OPTIONS][:2]
    ['data', 'program']
"""

from __future__ import annotations

from pyrofail.option_schema import Option as _O
from pyrofail.option_schema import positive_int as _positive_int

__all__ = ["DATA_AND_STAGE_OPTIONS"]

DATA_AND_STAGE_OPTIONS = (
    # -- a user's data -----------------------------------------------------------------------
    _O(
        "data",
        None,
        "a CSV file (a header row, numeric columns), a .npy/.npz file, or a data set "
        "bundled with scikit-learn (see --list); replaces --process: the check runs without a ground "
        "truth, learning σ, all restarts random",
        "data",
        ("--data",),
        str,
        "SOURCE",
    ),
    _O(
        "program",
        None,
        "check a Pyro model and guide of yours instead of fitting: 'module:object', where object "
        "is a (model, guide) pair or has .model and .guide, importable from the current folder; "
        "--data gives the points (in the units the program was trained on)",
        "data",
        ("--program",),
        str,
        "MODULE:OBJECT",
    ),
    _O(
        "columns",
        None,
        "feature columns to use (default: all)",
        "data",
        ("--columns",),
        str,
        "NAMES",
        many=True,
    ),
    _O(
        "labels",
        None,
        "a column of labels, kept for the tasks that use them",
        "data",
        ("--labels",),
        str,
        "COLUMN",
    ),
    _O(
        "standardize",
        True,
        "standardise each feature with the training rows' mean and sd (stored "
        "in data.json); --no-standardize keeps the data's units",
        "data",
        ("--no-standardize",),
        switch=True,
    ),
    _O(
        "split",
        [0.6, 0.2, 0.2],
        "train,validation,test shares",
        "data",
        ("--split",),
        float,
        "FRACTIONS",
        many=True,
    ),
    _O(
        "binarize",
        None,
        "values above THRESHOLD become 1, the others 0 (for --likelihood bernoulli; digits: 8)",
        "data",
        ("--binarize",),
        float,
        "THRESHOLD",
    ),
    _O(
        "header",
        True,
        "the CSV's first line names the columns; --no-header: it is data (columns named x0, x1, ...)",
        "data",
        ("--no-header",),
        switch=True,
    ),
    _O(
        "delimiter",
        None,
        "the CSV's column separator (default: a comma, or what the file shows)",
        "data",
        ("--delimiter",),
        str,
        "CHAR",
    ),
    _O(
        "folds",
        None,
        "cross-fitting on your data: fit on F - 1 folds, test on the held-out one, so "
        "that every row is a test point (default: 5 for tables under 1,000 rows, else one split)",
        "data",
        ("--folds",),
        int,
        "F",
        check=lambda v, f: v is None or _positive_int(v, f),
    ),
    # -- the stages after the fits ----------------------------------------------------------------
    _O(
        "reference",
        "auto",
        "reference posterior: grid (exact, K <= 2), nuts (any K) or auto (the "
        "grid where it applies); --no-reference skips references, posterior bias and the diagnosis",
        "later",
        ("--reference",),
        str,
        "METHOD",
        choices=("auto", "grid", "nuts"),
    ),
    _O(
        "reference_points",
        300,
        "test points at which references are computed and guides compared (all test points if fewer)",
        "later",
        ("--reference-points",),
        int,
        "N",
        check=_positive_int,
    ),
    _O(
        "downstream",
        False,
        "also measure the downstream tasks: compression, disentanglement, "
        "adversarial robustness of the encoder, outlier detection",
        "later",
        ("--downstream",),
        switch=True,
    ),
    _O(
        "downstream_points",
        10_000,
        "fresh draws of the truth on which --downstream scores disentanglement (MIG's plug-in bias "
        "is about -3% at 2,000 and under 1% at 10,000)",
        "later",
        ("--downstream-points",),
        int,
        "N",
        check=_positive_int,
    ),
    _O(
        "regression",
        [],
        "regression processes for Bayesian neural networks with latent input noise: "
        "heteroscedastic, bimodal, diabetes",
        "later",
        ("--regression",),
        str,
        "NAMES",
        many=True,
    ),
    _O(
        "bnn_methods",
        ["mean_field", "noise_constrained", "nuts"],
        "inference for the regression processes",
        "later",
        ("--bnn-methods",),
        str,
        "NAMES",
        many=True,
    ),
    _O("bnn_hidden", [50], "hidden widths of the Bayesian neural networks", "later"),
    _O("bnn_options", {}, "options of each BNN inference method", "later"),
    _O("bnn_sizes", {}, "n_train / n_test of the regression processes", "later"),
    _O(
        "max_memory",
        "1GiB",
        "memory budget per worker process, e.g. 512MiB or 2GiB: evaluations "
        "stream over points in chunks that fit it; a run that cannot fit says so before it starts",
        "later",
        ("--max-memory",),
        str,
        "SIZE",
    ),
)
