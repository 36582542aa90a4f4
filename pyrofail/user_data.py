"""A user's own data on the command line (``--data``): the options that describe it, the checks
before a run starts (every fold must fit and test), cross-fitting's default for small tables,
and what ``data.json`` records.

Example:
    >>> out = {"seed": 0, "likelihood": "gaussian"}
    >>> data_options(out, {"data": "diabetes", "columns": ["age", "bmi"]})
    >>> out["data_options"], out["init"], out["learn_noise"]
    ({'columns': ['age', 'bmi']}, 'random', True)
    >>> check_data(out); out["data_options"]["folds"]  # 442 rows: cross-fitted
    5
"""

from __future__ import annotations

from pyrofail import loaders, options
from pyrofail.data import check_binary, check_fractions, load_splits
from pyrofail.errors import UsageError
from pyrofail.records.data import DataRecord, Rows, Sizes
from pyrofail.sweep import ABOVE_TRUE_K

__all__ = ["DEFAULT_FOLDS", "FOLD_BELOW_ROWS", "check_data", "cli_spelling", "data_options", "describe_data"]


def data_options(out: dict, given: dict) -> None:
    """A user's data set in place of the processes: no ground truth, so no paper initialisation
    and no truth noise; σ is learned unless given."""
    for name in ("process", "truth_noise"):
        if name in given:
            raise UsageError(f"--data replaces {options.flag_of(name)}: give one of them")
    out["process"], out["truth_noise"] = None, None
    out["data"] = given["data"]
    data = {} if "program" not in given else {"standardize": False, "folds": 1}  # the program's own units
    for name in ("columns", "labels", "binarize", "delimiter", "folds"):
        if name in given:
            data[name] = given[name]
    if "split" in given:
        data["fractions"] = given["split"]
    if given.get("standardize"):  # the switch is --no-standardize
        data["standardize"] = False
    if given.get("header"):  # the switch is --no-header
        data["header"] = False
    if out.get("likelihood") == "bernoulli" and "binarize" not in data:
        if loaders.default_threshold(given["data"]) is not None:
            data["binarize"] = True  # digits: pixels above half their range
    out["data_options"] = data
    out["init"] = "random"
    if given.get("learn_noise") == "above-true-k":
        raise UsageError("--learn-noise above-true-k needs a ground truth's K; --data has none")
    if out.get("learn_noise") == ABOVE_TRUE_K:
        out["learn_noise"] = False  # a preset's (table1): a user's data has no true K
    if out.get("likelihood", "gaussian") == "gaussian" and out.get("noise_scale") is None:
        out["learn_noise"] = True


# the Python API's spellings in the data layer's messages, as a command-line user typed them
_CLI_SPELLING = (
    ("pass standardize=False", "pass --no-standardize"),
    ("standardize=False", "--no-standardize"),
    ("binarize=True", "--binarize THRESHOLD"),
    ("binarize=", "--binarize "),
    ("with columns=", "with --columns"),
    ("columns=", "--columns "),
    ("labels=", "--labels "),
)


def cli_spelling(message: str) -> str:
    for python, flag in _CLI_SPELLING:
        message = message.replace(python, flag)
    return message


# tables with fewer rows than this are cross-fitted by default, so that every row is a test point
FOLD_BELOW_ROWS = 1000
DEFAULT_FOLDS = 5


def check_data(out: dict) -> None:
    """Read the user's data once: every fold must fit and test, a Bernoulli likelihood needs
    binary data; small tables are cross-fitted unless ``--folds`` says otherwise."""
    data_options = out["data_options"]
    try:
        if data_options.get("fractions") is not None:
            check_fractions(data_options["fractions"], "--split")
        splits = load_splits(out["data"], **loader_options(data_options, None), seed=out["seed"])
        rows = sum(len(getattr(splits, part)) for part in ("train", "val", "test"))
        if "folds" not in data_options and rows < FOLD_BELOW_ROWS:
            data_options["folds"] = DEFAULT_FOLDS
        folds = int(data_options.get("folds") or 1)
        for fold in range(folds if folds > 1 else 0):
            load_splits(out["data"], **loader_options(data_options, fold), seed=out["seed"])
        if out.get("likelihood") == "bernoulli":
            check_binary(splits.train.x, f"--data {out['data']}")
    except UsageError as e:
        raise UsageError(cli_spelling(str(e))) from None


def loader_options(data_options: dict, fold: int | None) -> dict:
    """The data options :func:`pyrofail.data.load_splits` takes, for one ``fold`` of a
    cross-fitted run (``None``: the plain split)."""
    out = {k: v for k, v in data_options.items() if k not in ("folds", "fold")}
    folds = int(data_options.get("folds") or 1)
    if fold is not None and folds > 1:
        out.update(fold=fold, folds=folds)
    return out


def describe_data(out: dict) -> DataRecord:
    """What ``data.json`` records of a user's data: source, options, split sizes and rows,
    features, and the standardisation applied (from the training rows)."""
    folds = int(out["data_options"].get("folds") or 1)
    parts = [
        load_splits(
            out["data"], **loader_options(out["data_options"], f if folds > 1 else None), seed=out["seed"]
        )
        for f in range(folds)
    ]
    splits = parts[0]
    return DataRecord(
        source=str(out["data"]),
        options=dict(out["data_options"]),
        features=[str(f) for f in splits.train.features or []],
        folds=folds,
        sizes=Sizes(*(len(getattr(splits, part)) for part in ("train", "val", "test"))),
        rows=[Rows(**{part: idx.tolist() for part, idx in (s.index or {}).items()}) for s in parts],
        standardizer=None if splits.standardizer is None else splits.standardizer.to_dict(),
    )
