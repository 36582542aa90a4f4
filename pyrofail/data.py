r"""Data sets: the :class:`Dataset` every process and loader returns, and seeded splits.

Drawn data come from a process (:func:`make_splits`); a user's own data come from a file or a
bundled data set (:func:`load`, read by :mod:`pyrofail.loaders`) and are split at random
(:func:`split`), standardised with the training rows' column means and standard deviations
(:class:`~pyrofail.standardize.Standardizer`). :func:`load_splits` does both in one call.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from pyrofail import loaders
from pyrofail.errors import UsageError, check_positive_int
from pyrofail.standardize import Standardizer

__all__ = [
    "DEFAULT_FRACTIONS",
    "MIN_TRAIN_ROWS",
    "Dataset",
    "Splits",
    "Standardizer",
    "check_binary",
    "check_fractions",
    "is_binary",
    "load",
    "load_splits",
    "make_splits",
    "split",
    "split_sizes",
]

# train / validation / test: the common 60/20/20 split
DEFAULT_FRACTIONS = (0.6, 0.2, 0.2)
# The smallest parts a table can be split into: the test points' standard errors need two of
# them, restart selection one validation row, and the standardisation's per-feature spread and
# a fit a handful of training rows. Smaller tables end before anything is written.
MIN_TRAIN_ROWS = 5
MIN_TEST_ROWS = 2


@dataclass
class Dataset:
    """Observations ``x`` ``(N, D)``, true latents ``z`` ``(N, K)`` (drawn data only), and
    labels ``y`` ``(N,)`` where the source has them; for loaded data also the column names
    ``features`` and, for text labels, ``classes`` (``y`` indexes them)."""

    x: torch.Tensor
    z: torch.Tensor | None = None
    y: torch.Tensor | None = None
    features: tuple[str, ...] | None = None
    classes: tuple[str, ...] | None = None

    def __len__(self) -> int:
        return self.x.shape[0]

    def __getitem__(self, index) -> Dataset:
        pick = lambda t: None if t is None else t[index]  # noqa: E731
        return Dataset(pick(self.x), pick(self.z), pick(self.y), self.features, self.classes)


@dataclass
class Splits:
    """Disjoint train / validation / test :class:`Dataset` s of one process or data set.

    For loaded data, ``standardizer`` holds the training rows' column means and sds (``None``
    when not standardised) and ``index`` the rows of the source in each part.
    """

    train: Dataset
    val: Dataset
    test: Dataset
    standardizer: Standardizer | None = None
    index: dict[str, torch.Tensor] | None = None


def make_splits(process, n_train: int = 5000, n_val: int = 2000, n_test: int = 2000, seed: int = 0) -> Splits:
    """Draw ``n_train + n_val + n_test`` points with ``process.sample(., seed)`` and split them
    in that order. The same seed gives the same data for every K, guide and objective, so
    their numbers compare on identical points."""
    n_train = check_positive_int("n_train", n_train)
    n_val = check_positive_int("n_val", n_val)
    n_test = check_positive_int("n_test", n_test)
    data = process.sample(n_train + n_val + n_test, seed=seed)
    return Splits(
        train=data[:n_train],
        val=data[n_train : n_train + n_val],
        test=data[n_train + n_val :],
    )


def is_binary(x: torch.Tensor) -> bool:
    """Whether every value of ``x`` is 0 or 1.

    Example:
        >>> is_binary(torch.tensor([[0.0, 1.0]])), is_binary(torch.tensor([[0.5]]))
        (True, False)
    """
    return bool(((x == 0) | (x == 1)).all())


def check_binary(x: torch.Tensor, name: str = "x") -> torch.Tensor:
    """``x`` if every value is 0 or 1 (what a Bernoulli likelihood needs), else
    :class:`~pyrofail.errors.UsageError` naming the first other value and where it is.

    Example:
        >>> check_binary(torch.tensor([[0.0, 1.0]])).shape
        torch.Size([1, 2])
    """
    bad = ~((x == 0) | (x == 1))
    if bad.any():
        row, col = (int(i) for i in bad.nonzero()[0])
        raise UsageError(
            f"{name} has the value {float(x[row, col]):g} at row {row}, column {col}; the Bernoulli "
            "likelihood needs 0/1 data (binarize= when loading, or a Gaussian likelihood)"
        )
    return x


def check_fractions(fractions: Sequence[float], name: str | None = None) -> tuple[float, float, float]:
    """``fractions`` as three floats in (0, 1) that sum to 1 (train, validation, test), else a
    :class:`UsageError` naming them as ``name`` (default ``fractions=(...)``)."""
    fractions = tuple(float(f) for f in fractions)
    if len(fractions) != 3 or not all(0 < f < 1 for f in fractions) or abs(sum(fractions) - 1) > 1e-9:
        shown = (
            f"fractions={fractions}" if name is None else f"{name} {','.join(f'{f:g}' for f in fractions)}"
        )
        raise UsageError(
            f"{shown} is not allowed; expected three numbers in (0, 1) for train, validation and "
            "test that sum to 1, e.g. 0.6,0.2,0.2"
        )
    return fractions


def split_sizes(n: int, fractions: Sequence[float] = DEFAULT_FRACTIONS) -> tuple[int, int, int]:
    r"""Rows of the train, validation and test parts of ``n`` rows: validation and test get
    :math:`\lfloor f N + \tfrac12 \rfloor` (at least 1), training the rest; at least
    :data:`MIN_TRAIN_ROWS` training and :data:`MIN_TEST_ROWS` test rows.

    Example:
        >>> split_sizes(442)
        (266, 88, 88)
    """
    fractions = check_fractions(fractions)
    n_val = max(1, math.floor(fractions[1] * n + 0.5))
    n_test = max(1, math.floor(fractions[2] * n + 0.5))
    n_train = n - n_val - n_test
    if n_train < MIN_TRAIN_ROWS or n_test < MIN_TEST_ROWS:
        shares = ",".join(f"{f:g}" for f in fractions)
        raise UsageError(
            f"the data have {n} rows, too few to fit and test: the split {shares} gives "
            f"{n_train}/{n_val}/{n_test} train/validation/test rows, and a check needs at least "
            f"{MIN_TRAIN_ROWS} training rows, 1 validation row and {MIN_TEST_ROWS} test rows"
        )
    return n_train, n_val, n_test


def split(
    data: Dataset,
    *,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    seed: int = 0,
    standardize: bool | None = None,
    fold: int | None = None,
    folds: int | None = None,
) -> Splits:
    r"""A seeded random train / validation / test split of ``data``, standardised on its
    training rows.

    The rows are permuted by ``torch.randperm`` with a private generator seeded by ``seed``
    (same seed, same split), cut into parts of :func:`split_sizes`, and each part kept in the
    source's row order. With standardisation every part becomes :math:`(x - m) / s` with the
    training rows' :math:`m, s` (:class:`~pyrofail.standardize.Standardizer`).

    :param fractions: train, validation and test shares (default 60/20/20).
    :param standardize: ``None`` (default) standardises unless the data are binary (0/1);
        ``True`` on binary data is refused (their 0/1 values are what a Bernoulli likelihood needs).
    :param fold, folds: cross-fitting: the permuted rows are cut into ``folds`` blocks of
        near-equal size (``torch.tensor_split``); block ``fold`` is the test part, and the other
        rows are split into training and validation rows in the ratio of ``fractions``' first
        two shares, so the ``folds`` test parts of one seed partition the data.

    Example:
        >>> data = Dataset(torch.arange(20.0).reshape(10, 2))
        >>> parts = split(data, seed=0)
        >>> len(parts.train), len(parts.val), len(parts.test)
        (6, 2, 2)
        >>> parts.train.x.mean(0).abs().max().item() < 1e-6
        True
        >>> sorted(torch.cat([split(data, fold=k, folds=5).index["test"] for k in range(5)]).tolist())
        [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]
    """
    n = len(data)
    if folds is not None and folds >= 2:
        return _fold(data, fractions, seed, standardize, fold, folds)
    n_train, n_val, _ = split_sizes(n, fractions)
    binary = is_binary(data.x)
    if standardize is None:
        standardize = not binary
    elif standardize and binary:
        raise UsageError(
            "the data are binary (every value 0 or 1) and are not standardised; pass standardize=False"
        )
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed)))
    index = {
        "train": perm[:n_train].sort().values,
        "val": perm[n_train : n_train + n_val].sort().values,
        "test": perm[n_train + n_val :].sort().values,
    }
    return _parts(data, index, standardize)


def _parts(data: Dataset, index: dict, standardize: bool) -> Splits:
    """The parts ``index`` names, standardised with the training rows' statistics."""
    parts = {k: data[v.to(data.x.device)] for k, v in index.items()}
    scaler = None
    if standardize:
        scaler = Standardizer.fit(parts["train"].x, data.features)
        for part in parts.values():
            part.x = scaler.transform(part.x)
    return Splits(parts["train"], parts["val"], parts["test"], standardizer=scaler, index=index)


def _fold(data: Dataset, fractions, seed: int, standardize: bool, fold, folds: int) -> Splits:
    n = len(data)
    fractions = check_fractions(fractions)
    check_positive_int("folds", folds)
    if fold is None or not 0 <= int(fold) < folds:
        raise UsageError(f"fold={fold} is not allowed; expected 0 <= fold < {folds}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed)))
    blocks = torch.tensor_split(perm, folds)
    test = blocks[fold]
    rest = torch.cat([b for k, b in enumerate(blocks) if k != fold])
    n_val = max(1, math.floor(fractions[1] / (fractions[0] + fractions[1]) * rest.numel() + 0.5))
    n_train = rest.numel() - n_val
    if n_train < MIN_TRAIN_ROWS or test.numel() < MIN_TEST_ROWS:
        raise UsageError(
            f"the data have {n} rows, too few for {folds} folds: a fold gives {n_train}/{n_val}/"
            f"{test.numel()} train/validation/test rows, and a check needs at least {MIN_TRAIN_ROWS} "
            f"training and {MIN_TEST_ROWS} test rows"
        )
    index = {
        "train": rest[:n_train].sort().values,
        "val": rest[n_train:].sort().values,
        "test": test.sort().values,
    }
    binary = is_binary(data.x)
    return _parts(data, index, (not binary) if standardize is None else standardize)


def load(
    source,
    *,
    columns: Sequence | None = None,
    labels=None,
    binarize: bool | float | None = None,
    header: bool = True,
    delimiter: str | None = None,
) -> Dataset:
    r"""A user's numeric data as a :class:`Dataset`: a ``.csv``, ``.npy`` or ``.npz`` file or a
    data set bundled with scikit-learn (``diabetes``, ``breast_cancer``, ``wine``, ``digits``;
    :mod:`pyrofail.loaders` says what each holds and which files are accepted).

    ``x`` is float ``(N, D)`` in the source's units (standardisation belongs to the split, which
    knows the training rows: :func:`split`, :func:`load_splits`); ``y`` holds the labels, from
    the ``labels`` column or the source's own; ``z`` is ``None``.

    :param columns: feature columns by name (or 0-based position); default all but the labels.
    :param labels: the column holding :math:`y`.
    :param binarize: ``x > threshold`` as 0/1 (for a Bernoulli likelihood); ``True`` uses the
        source's threshold (``digits``: 8, half the 0–16 pixel range).
    :param header, delimiter: how a CSV is read (:func:`pyrofail.loaders.read`).

    Example:
        >>> d = load("digits", binarize=True)
        >>> tuple(d.x.shape), d.y[:3].tolist(), is_binary(d.x)
        ((1797, 64), [0, 1, 2], True)
    """
    table = loaders.read(source, columns=columns, labels=labels, header=header, delimiter=delimiter)
    x = torch.tensor(table.values, dtype=torch.float64)
    if binarize is not None and binarize is not False:
        threshold = loaders.default_threshold(source) if binarize is True else binarize
        if threshold is None:
            raise UsageError(
                f"binarize=True needs a threshold, and only digits has a default; pass a number "
                f"(values above it become 1) for {source!r}"
            )
        try:
            threshold = float(threshold)
        except (TypeError, ValueError):
            raise UsageError(f"binarize={binarize!r} is not allowed; expected True or a number") from None
        x = (x > threshold).to(x.dtype)
    y = None
    if table.labels is not None:
        dtype = torch.int64 if table.labels.dtype.kind in "iub" else torch.get_default_dtype()
        y = torch.tensor(table.labels).to(dtype)
    return Dataset(x=x.to(torch.get_default_dtype()), y=y, features=table.features, classes=table.classes)


def load_splits(
    source,
    *,
    columns: Sequence | None = None,
    labels=None,
    binarize: bool | float | None = None,
    standardize: bool | None = None,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    seed: int = 0,
    header: bool = True,
    delimiter: str | None = None,
    fold: int | None = None,
    folds: int | None = None,
) -> Splits:
    """:func:`load` then :func:`split`: the train / validation / test parts of a user's data
    (``fold``/``folds``: cross-fitting, see :func:`split`).

    ``standardize=None`` (default) standardises unless the data are binary or the source's
    features share one scale (``digits``, whose three always-blank pixels have no spread).

    Example:
        >>> parts = load_splits("diabetes", seed=0)
        >>> len(parts.train), len(parts.val), len(parts.test), len(parts.standardizer.to_dict()["mean"])
        (266, 88, 88, 10)
    """
    data = load(source, columns=columns, labels=labels, binarize=binarize, header=header, delimiter=delimiter)
    if standardize is None and not loaders.default_standardize(source):
        standardize = False
    return split(data, fractions=fractions, seed=seed, standardize=standardize, fold=fold, folds=folds)
