r"""Reading a user's numeric data: CSV and NumPy files, and the real data sets scikit-learn ships.

Every source becomes a :class:`Table`: a float64 matrix :math:`X \in \mathbb R^{N \times D}`
with one name per column, and the labels :math:`y` (``(N,)``) where the source has them. The
checks are the same for every source, and each failure is one line naming the problem and
what is allowed (:class:`~pyrofail.errors.UsageError`): a missing or unreadable file, an unknown
data set or column, a non-numeric column, NaN or infinite values.

Sources, chosen by the file's suffix or the data set's name (two registries, :data:`READERS`
and :data:`BUNDLED`):

* ``.csv``: a header row, then one row per point; every selected column numeric. The labels
  column may hold numbers or names (names become integer codes, sorted).
* ``.npy``: one 2-D numeric array ``(N, D)``; its columns are named ``x0``, ``x1``, ...
* ``.npz``: the arrays ``x`` (2-D, required), ``y`` (1-D labels of length ``N``, optional) and
  ``feature_names`` (``D`` strings, optional); other arrays are ignored.
* a name in :data:`BUNDLED`: ``diabetes`` (442 × 10, regression target), ``breast_cancer``
  (569 × 30, 2 classes), ``wine`` (178 × 13, 3 classes), ``digits`` (1797 × 64, 8 × 8 images
  with pixels 0–16, 10 classes). They are files inside scikit-learn: nothing is downloaded.

``columns`` selects features by name (or by 0-based position, an ``int``); ``labels`` names one
column of the file to use as :math:`y` (it is then not a feature).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pyrofail.errors import UsageError

__all__ = [
    "BUNDLED",
    "READERS",
    "Bundled",
    "Table",
    "default_standardize",
    "default_threshold",
    "names",
    "read",
]

SHOWN = 8  # names listed in a message before "..."


@dataclass
class Table:
    """A source read and checked: ``values`` float64 ``(N, D)``, one name per column,
    ``labels`` ``(N,)`` (int64 class codes or float64 targets) or ``None``, and ``classes``,
    the label names when the labels were text (``labels[i]`` indexes ``classes``)."""

    values: np.ndarray
    features: tuple[str, ...]
    labels: np.ndarray | None = None
    classes: tuple[str, ...] | None = None


@dataclass(frozen=True)
class Bundled:
    """A data set shipped inside scikit-learn: the name of its ``sklearn.datasets`` loader,
    keyword arguments for it, what it is, and the default binarisation threshold (pixel
    data only: ``binarize=True`` means ``x > threshold``)."""

    loader: str
    summary: str
    kwargs: tuple = ()
    threshold: float | None = None
    standardize: bool = True


BUNDLED: dict[str, Bundled] = {
    # scaled=False: the raw measurements; pyrofail standardises on the training rows itself
    "diabetes": Bundled(
        "load_diabetes",
        "442 patients x 10 baseline variables; y: disease progression after a year",
        (("scaled", False),),
    ),
    "breast_cancer": Bundled(
        "load_breast_cancer", "569 tumours x 30 cell-nucleus measurements; y: 0 malignant, 1 benign"
    ),
    "wine": Bundled("load_wine", "178 wines x 13 chemical measurements; y: cultivar 0-2"),
    # pixels share one scale (0-16) and three are always 0: not standardised by default
    "digits": Bundled(
        "load_digits",
        "1797 handwritten digits as 8x8 images (64 pixels, 0-16); y: digit 0-9",
        threshold=8.0,
        standardize=False,
    ),
}


def names() -> list[str]:
    """The bundled data sets' names, sorted.

    Example:
        >>> names()
        ['breast_cancer', 'diabetes', 'digits', 'wine']
    """
    return sorted(BUNDLED)


def _listing(items: Sequence[str]) -> str:
    items = [str(i) for i in items]
    shown = ", ".join(repr(i) for i in items[:SHOWN])
    return shown + (f", ... ({len(items)} in all)" if len(items) > SHOWN else "")


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return text or type(err).__name__


# -- readers: each returns (frame of candidate columns, the source's own labels or None) --
def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _read_csv(path: Path, header: bool = True, delimiter: str | None = None):
    """A CSV with a header row (``header=False``: the first line is data, the columns are named
    ``x0, x1, ...``), comma-separated unless ``delimiter`` says otherwise. A header whose every
    field is a number is refused (the first data row would silently become the names), and a
    file read as one column whose header holds a ``;`` or a tab says so."""
    import pandas as pd

    sep = "," if delimiter is None else delimiter.replace("\\t", "\t")  # '\t' as typed in a shell
    try:
        with warnings.catch_warnings():
            # a row longer than the header would be cut silently: make it an error
            warnings.simplefilter("error", pd.errors.ParserWarning)
            frame = pd.read_csv(path, index_col=False, sep=sep, header=0 if header else None)
    except (ValueError, OSError, UnicodeDecodeError, pd.errors.ParserWarning) as err:
        raise UsageError(
            f"cannot read {path} as CSV ({_one_line(err)}); expected a text file with a header row "
            f"and {'comma' if sep == ',' else repr(sep)}-separated columns"
        ) from None
    if not header:
        frame.columns = [f"x{j}" for j in range(frame.shape[1])]
        return frame, None
    names = [str(c) for c in frame.columns]
    if names and all(_is_number(n) for n in names):
        raise UsageError(
            f"the first line of {path} is all numbers ({', '.join(names[:4])}"
            f"{', ...' if len(names) > 4 else ''}): "
            "it looks like data, not a header row; add a header row, or pass --no-header"
        )
    if len(names) == 1 and delimiter is None:
        for char, word, shown in ((";", "semicolons", ";"), ("\t", "tabs", "\\t"), ("|", "bars", "|")):
            if char in names[0]:
                raise UsageError(
                    f"{path} reads as one column named {names[0][:40]!r}: its columns seem to be "
                    f"separated by {word}; pass --delimiter '{shown}'"
                )
    frame.columns = names
    return frame, None


def _array_frame(values: np.ndarray, path: Path, features=None):
    import pandas as pd

    if values.dtype.kind not in "biuf":
        raise UsageError(
            f"{path} holds values of type {values.dtype}; expected a numeric array of shape (N, D)"
        )
    if values.ndim != 2:
        raise UsageError(f"{path} holds an array of shape {values.shape}; expected 2-D (N, D)")
    if features is None:
        features = [f"x{j}" for j in range(values.shape[1])]
    return pd.DataFrame(values, columns=list(features))


def _np_load(path: Path):
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise UsageError(
            f"cannot read {path} as a NumPy file ({_one_line(err)}); expected an array saved by "
            "numpy.save or numpy.savez (no pickled objects)"
        ) from None


def _read_npy(path: Path):
    values = _np_load(path)
    if not isinstance(values, np.ndarray):
        values.close()
        raise UsageError(f"{path} is an .npz archive; rename it to .npz")
    return _array_frame(values, path), None


NPZ_KEYS = ("x", "y", "feature_names")


def _read_npz(path: Path):
    archive = _np_load(path)
    if isinstance(archive, np.ndarray):
        raise UsageError(f"{path} holds a single array; save it as .npy, or as x= in numpy.savez")
    with archive:
        keys = list(archive.files)
        if "x" not in keys:
            raise UsageError(
                f"{path} has no array 'x' (it has {_listing(keys) or 'none'}); expected x (N, D), "
                "optionally y (N,) and feature_names (D,)"
            )
        x = archive["x"]
        y = archive["y"] if "y" in keys else None
        features = archive["feature_names"] if "feature_names" in keys else None
    if features is not None:
        features = [str(f) for f in np.ravel(features)]
        if x.ndim == 2 and len(features) != x.shape[1]:
            raise UsageError(
                f"{path}: feature_names has {len(features)} names but x has {x.shape[1]} columns"
            )
    frame = _array_frame(x, path, features)
    if y is not None and (y.ndim != 1 or y.shape[0] != frame.shape[0]):
        raise UsageError(f"{path}: y has shape {y.shape}; expected ({frame.shape[0]},), one label per row")
    return frame, y


READERS: dict[str, Callable] = {".csv": _read_csv, ".npy": _read_npy, ".npz": _read_npz}


def _read_bundled(name: str):
    import pandas as pd
    from sklearn import datasets

    entry = BUNDLED[name]
    bunch = getattr(datasets, entry.loader)(**dict(entry.kwargs))
    frame = pd.DataFrame(
        np.asarray(bunch.data, dtype=np.float64), columns=[str(f) for f in bunch.feature_names]
    )
    return frame, np.asarray(bunch.target)


def _normal_name(source) -> str | None:
    """The bundled data set ``source`` names, or ``None`` if it looks like a file path."""
    if isinstance(source, Path):
        return None
    text = str(source)
    if Path(text).suffix or "/" in text or "\\" in text:
        return None
    return text.strip().lower().replace("-", "_")


def _source_frame(source, header: bool = True, delimiter: str | None = None):
    name = _normal_name(source)
    if name is not None and name in BUNDLED:
        return _read_bundled(name), f"data set {name!r}"
    path = Path(source)
    if name is not None and not path.exists():
        raise UsageError(
            f"unknown data set {str(source)!r}; choose one of: {', '.join(names())}, "
            f"or a file ({', '.join(READERS)})"
        )
    if not path.exists():
        raise UsageError(f"file {str(path)!r} does not exist; expected a {', '.join(READERS)} file")
    if path.is_dir():
        raise UsageError(f"{str(path)!r} is a folder; expected a {', '.join(READERS)} file")
    reader = READERS.get(path.suffix.lower())
    if reader is None:
        raise UsageError(
            f"file {str(path)!r} has the unsupported type {path.suffix or '(none)'!r}; "
            f"expected one of: {', '.join(READERS)}"
        )
    if reader is _read_csv:
        return reader(path, header, delimiter), str(path)
    if not header or delimiter is not None:
        raise UsageError(f"--no-header and --delimiter describe a CSV file; {str(path)!r} is not one")
    return reader(path), str(path)


def _column_name(frame, key, where: str, what: str) -> str:
    """The name of column ``key`` (a name or a 0-based position) of ``frame``."""
    cols = list(frame.columns)
    if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
        if not 0 <= int(key) < len(cols):
            raise UsageError(f"{what} {int(key)} is out of range: {where} has columns 0 to {len(cols) - 1}")
        return cols[int(key)]
    if str(key) not in cols:
        raise UsageError(f"{what} {str(key)!r} is not in {where}; its columns are: {_listing(cols)}")
    return str(key)


def _rows(mask: np.ndarray) -> str:
    rows = np.flatnonzero(mask)
    shown = ", ".join(str(r) for r in rows[:5])
    more = f" and {rows.size - 5} more" if rows.size > 5 else ""
    return f"row{'s' if rows.size > 1 else ''} {shown}{more}"


def _labels(series, where: str, name: str):
    import pandas as pd

    values = series.to_numpy()
    missing = pd.isna(series).to_numpy()
    if pd.api.types.is_bool_dtype(series) or pd.api.types.is_integer_dtype(series):
        return values.astype(np.int64), None
    if pd.api.types.is_numeric_dtype(series):
        values = values.astype(np.float64)
        bad = missing | ~np.isfinite(values)
        if bad.any():
            raise UsageError(
                f"labels column {name!r} of {where} has missing or infinite values at {_rows(bad)} "
                "(0-based, header not counted); every point needs a label"
            )
        return values, None
    if missing.any():
        raise UsageError(
            f"labels column {name!r} of {where} has missing values at {_rows(missing)} "
            "(0-based, header not counted); every point needs a label"
        )
    classes, codes = np.unique(values.astype(str), return_inverse=True)
    return codes.astype(np.int64), tuple(str(c) for c in classes)


def read(
    source, *, columns: Sequence | None = None, labels=None, header: bool = True, delimiter: str | None = None
) -> Table:
    """Read ``source`` (a file path or a bundled data set's name) into a checked :class:`Table`.

    :param columns: the feature columns, by name (or 0-based position); default every column
        except the labels column.
    :param labels: the column that holds :math:`y` (a name or position); for ``.npz`` files and
        bundled data sets the default is their own labels (``y``, the target).
    :param header: a CSV's first line names its columns (``False``: it is data).
    :param delimiter: a CSV's column separator (default ``","``).

    Example:
        >>> t = read("wine")
        >>> t.values.shape, t.labels[:3].tolist(), t.features[0]
        ((178, 13), [0, 0, 0], 'alcohol')
    """
    import pandas as pd

    (frame, own_labels), where = _source_frame(source, header, delimiter)
    y, classes = None, None
    label_name = None
    if labels is not None:
        label_name = _column_name(frame, labels, where, "labels column")
        y, classes = _labels(frame[label_name], where, label_name)
    elif own_labels is not None:
        y, classes = _labels(pd.Series(own_labels), where, "y")
    if columns is None:
        chosen = [c for c in frame.columns if c != label_name]
    else:
        if isinstance(columns, (str, int)):
            columns = [columns]
        chosen = [_column_name(frame, c, where, "column") for c in columns]
        if label_name in chosen:
            raise UsageError(f"column {label_name!r} is the labels column; it cannot also be a feature")
        dupes = sorted({c for c in chosen if chosen.count(c) > 1})
        if dupes:
            raise UsageError(f"columns {_listing(dupes)} are selected more than once; name each column once")
    if not chosen:
        raise UsageError(f"{where} has no feature columns left; select at least one with columns=")
    if frame.shape[0] == 0:
        raise UsageError(
            f"{where} has no data rows (a header and nothing below it); expected one point per row"
        )
    frame = frame[chosen]
    text = [c for c in chosen if not (pd.api.types.is_numeric_dtype(frame[c]))]
    if text:
        raise UsageError(
            f"column{'s' if len(text) > 1 else ''} {_listing(text)} of {where} "
            f"{'are' if len(text) > 1 else 'is'} not numeric; select numeric columns with columns= "
            "(text is allowed only in the labels column)"
        )
    values = frame.to_numpy(dtype=np.float64, na_value=np.nan)
    bad = ~np.isfinite(values)
    if bad.any():
        col = int(np.flatnonzero(bad.any(0))[0])
        others = int(bad.any(0).sum()) - 1
        also = f" (and {others} other column{'s' if others > 1 else ''})" if others else ""
        raise UsageError(
            f"column {chosen[col]!r} of {where} has NaN or infinite values at {_rows(bad[:, col])} "
            f"(0-based, header not counted){also}; drop or impute them first"
        )
    return Table(values=values, features=tuple(chosen), labels=y, classes=classes)


def default_threshold(source) -> float | None:
    """The source's own binarisation threshold (``digits``: 8, half the 0–16 pixel range), or
    ``None``.

    Example:
        >>> default_threshold("digits"), default_threshold("wine")
        (8.0, None)
    """
    name = _normal_name(source)
    entry = BUNDLED.get(name) if name is not None else None
    return None if entry is None else entry.threshold


def default_standardize(source) -> bool:
    """Whether the source's features are standardised by default (all but ``digits``, whose
    pixels share one scale).

    Example:
        >>> default_standardize("digits"), default_standardize("my_data.csv")
        (False, True)
    """
    name = _normal_name(source)
    entry = BUNDLED.get(name) if name is not None else None
    return True if entry is None else entry.standardize
