"""Loading a user's data: files and bundled sets, the seeded split, standardisation on the
training rows, and one-line errors for bad input."""

import doctest

import numpy as np
import pytest
import torch

from pyrofail import data as pfdata
from pyrofail import loaders, standardize
from pyrofail.data import Dataset, Standardizer, is_binary, load, load_splits, split, split_sizes
from pyrofail.errors import UsageError

BUNDLED = [
    # name, shape, label dtype, distinct labels (None: a regression target)
    ("diabetes", (442, 10), torch.get_default_dtype(), None),
    ("breast_cancer", (569, 30), torch.int64, 2),
    ("wine", (178, 13), torch.int64, 3),
    ("digits", (1797, 64), torch.int64, 10),
]


def _csv(tmp_path, text, name="data.csv"):
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.fixture
def table(tmp_path):
    """A CSV of 12 rows: numeric a, b, c; text labels 'kind'; b = 10 a."""
    rows = ["a,b,c,kind"] + [f"{i},{10 * i},{(i * 7) % 5},{'cat' if i % 2 else 'dog'}" for i in range(12)]
    return _csv(tmp_path, "\n".join(rows) + "\n")


# -- sources ----------------------------------------------------------------------------
@pytest.mark.parametrize(("name", "shape", "dtype", "classes"), BUNDLED)
def test_bundled_sets_have_their_published_shapes(name, shape, dtype, classes):
    d = load(name)
    assert tuple(d.x.shape) == shape and d.x.dtype == torch.get_default_dtype()
    assert d.y.shape == (shape[0],) and d.y.dtype == dtype and d.z is None
    assert len(d.features) == shape[1]
    if classes is not None:
        assert sorted(d.y.unique().tolist()) == list(range(classes))


def test_diabetes_is_the_raw_measurements_not_sklearns_scaled_copy():
    d = load("diabetes")
    assert d.features[:3] == ("age", "sex", "bmi")
    assert float(d.x[0, 0]) == 59.0 and float(d.y[0]) == 151.0  # first patient: age 59


def test_digits_binarised_at_half_the_pixel_range():
    raw, binary = load("digits"), load("digits", binarize=True)
    assert torch.equal(binary.x, (raw.x > 8).to(raw.x.dtype)) and is_binary(binary.x)
    assert torch.equal(load("digits", binarize=3).x, (raw.x > 3).to(raw.x.dtype))
    assert torch.equal(binary.y, raw.y)


def test_csv_columns_and_text_labels(table):
    d = load(table, columns=["b", "a"], labels="kind")
    assert d.features == ("b", "a") and d.classes == ("cat", "dog")
    assert torch.equal(d.x[:, 1], torch.arange(12.0)) and torch.equal(d.x[:, 0], 10 * torch.arange(12.0))
    assert d.y.tolist() == [1, 0] * 6 and d.y.dtype == torch.int64
    every = load(table, labels="kind")  # default: all columns but the labels
    assert every.features == ("a", "b", "c") and every.x.shape == (12, 3)
    by_position = load(table, columns=[2], labels=3)
    assert by_position.features == ("c",) and by_position.classes == ("cat", "dog")


def test_csv_numeric_labels_keep_their_type(tmp_path):
    path = _csv(tmp_path, "u,v,cls,score\n1,2,0,0.5\n3,4,1,1.5\n5,6,1,2.5\n")
    assert load(path, labels="cls").y.dtype == torch.int64
    scored = load(path, labels="score")
    assert scored.y.dtype == torch.get_default_dtype() and scored.y.tolist() == [0.5, 1.5, 2.5]


def test_npy_and_npz(tmp_path):
    x = np.arange(24.0).reshape(8, 3)
    np.save(tmp_path / "a.npy", x)
    d = load(tmp_path / "a.npy")
    assert d.features == ("x0", "x1", "x2") and d.y is None and torch.equal(d.x, torch.tensor(x).float())
    assert torch.equal(load(tmp_path / "a.npy", labels="x2").y, torch.tensor(x[:, 2]).float())
    np.savez(tmp_path / "b.npz", x=x, y=np.arange(8), feature_names=np.array(["p", "q", "r"]))
    d = load(str(tmp_path / "b.npz"), columns=["r"])
    assert d.features == ("r",) and d.y.tolist() == list(range(8)) and d.x[:, 0].tolist() == x[:, 2].tolist()
    np.savez(tmp_path / "c.npz", x=x, other=np.zeros(2))  # other arrays are ignored
    assert load(tmp_path / "c.npz").y is None


# -- the split and standardisation -------------------------------------------------------
def test_split_is_seeded_disjoint_and_covers_every_row():
    data = Dataset(torch.arange(202.0).reshape(101, 2), y=torch.arange(101))
    a, b, c = (split(data, seed=s, standardize=False) for s in (3, 3, 4))
    assert all(torch.equal(a.index[k], b.index[k]) for k in ("train", "val", "test"))
    assert not torch.equal(a.index["test"], c.index["test"])
    rows = torch.cat([a.index[k] for k in ("train", "val", "test")])
    assert sorted(rows.tolist()) == list(range(101))  # disjoint and complete
    assert (len(a.train), len(a.val), len(a.test)) == split_sizes(101) == (61, 20, 20)
    for k in ("train", "val", "test"):
        part = getattr(a, k)
        assert torch.equal(part.y, a.index[k]) and torch.equal(part.x[:, 0], 2.0 * a.index[k])


def test_split_sizes_round_each_fraction():
    assert split_sizes(442) == (266, 88, 88)  # 0.2 * 442 = 88.4
    assert split_sizes(12, (0.5, 0.25, 0.25)) == (6, 3, 3)
    assert split_sizes(14, (0.5, 0.25, 0.25)) == (6, 4, 4)  # 3.5 rounds up
    assert split_sizes(12) == (8, 2, 2)  # the smallest table a check can run on, near the default split


def test_standardisation_uses_the_training_rows_only():
    from sklearn.preprocessing import StandardScaler

    parts = load_splits("wine", seed=1)
    raw = load("wine")
    train_raw = raw.x[parts.index["train"]].double()
    s = parts.standardizer
    assert torch.allclose(s.mean, train_raw.mean(0), rtol=1e-12, atol=0)
    assert torch.allclose(s.scale, train_raw.std(0, correction=0), rtol=1e-12, atol=0)
    ref = StandardScaler().fit(train_raw.numpy())
    assert np.allclose(s.mean.numpy(), ref.mean_, rtol=1e-12) and np.allclose(
        s.scale.numpy(), ref.scale_, rtol=1e-12
    )
    assert parts.train.x.mean(0).abs().max() < 1e-5
    assert (parts.train.x.double().std(0, correction=0) - 1).abs().max() < 1e-5
    test_raw = raw.x[parts.index["test"]].double()
    assert torch.allclose(parts.test.x.double(), (test_raw - s.mean) / s.scale, atol=1e-6)
    assert s.features == raw.features


def test_standardizer_round_trip_and_record():
    x = torch.tensor([[1.0, -4.0], [2.0, 4.0], [6.0, 12.0]], dtype=torch.float64)
    s = Standardizer.fit(x, ("u", "v"))
    assert s.mean.tolist() == [3.0, 4.0]
    assert torch.allclose(s.scale, torch.tensor([(14 / 3) ** 0.5, (128 / 3) ** 0.5], dtype=torch.float64))
    assert torch.allclose(s.inverse(s.transform(x)), x, atol=1e-14)
    back = Standardizer.from_dict(s.to_dict())
    assert torch.equal(back.mean, s.mean) and torch.equal(back.scale, s.scale) and back.features == ("u", "v")
    assert s.to_dict()["features"] == ["u", "v"]


def test_binary_data_are_not_standardised():
    parts = load_splits("digits", binarize=True)
    assert parts.standardizer is None and is_binary(parts.train.x)
    assert load_splits("digits").standardizer is None  # pixels share one scale
    assert load_splits("wine").standardizer is not None


# -- bad input: one line each, naming the problem and what is allowed ------------------------
def _one_line(excinfo):
    assert "\n" not in str(excinfo.value)


def test_missing_file(tmp_path):
    with pytest.raises(UsageError, match=r"file '.*nope\.csv' does not exist; expected a \.csv") as e:
        load(tmp_path / "nope.csv")
    _one_line(e)


@pytest.mark.parametrize(
    "content",
    [bytes(range(256)) * 4, b"", b'a,b\n"1,2\n', b"a,b\n1,2,3\n"],
    ids=["binary", "empty", "open-quote", "long-row"],
)
def test_unreadable_csv(tmp_path, content):
    path = tmp_path / "bad.csv"
    path.write_bytes(content)
    with pytest.raises(UsageError, match=r"cannot read .*bad\.csv as CSV \(.*\); expected a text file") as e:
        load(path)
    _one_line(e)


def test_non_numeric_column_is_named(tmp_path):
    path = _csv(tmp_path, "a,name,c\n1,x,2\n3,y,4\n")
    with pytest.raises(UsageError, match=r"column 'name' of .* is not numeric; select numeric columns") as e:
        load(path)
    _one_line(e)
    assert load(path, columns=["a", "c"]).x.shape == (2, 2)


@pytest.mark.parametrize("bad", ["", "NA", "nan", "inf", "-inf"])
def test_nan_or_infinite_values_say_where(tmp_path, bad):
    path = _csv(tmp_path, f"a,b\n1,2\n3,4\n5,{bad}\n")
    with pytest.raises(UsageError, match=r"column 'b' .* has NaN or infinite values at row 2 \(0-based") as e:
        load(path)
    _one_line(e)


def test_missing_labels_say_where(tmp_path):
    path = _csv(tmp_path, "a,y\n1,2\n3,\n")
    with pytest.raises(UsageError, match=r"labels column 'y' .* missing or infinite values at row 1"):
        load(path, labels="y")


def test_constant_column_is_named(tmp_path):
    path = _csv(tmp_path, "a,flat,c\n" + "".join(f"{i},7,{i * i}\n" for i in range(10)))
    with pytest.raises(
        UsageError, match=r"column 'flat' is constant on the training rows.*standardize=False"
    ) as e:
        load_splits(path)
    _one_line(e)
    assert load_splits(path, standardize=False).standardizer is None


def test_too_few_rows_for_the_split(tmp_path):
    """Five rows: one test row can have no standard error; the table ends the run in one line."""
    path = _csv(tmp_path, "a,b\n" + "".join(f"{i},{2 * i}\n" for i in range(5)))
    with pytest.raises(
        UsageError, match=r"the data have 5 rows, too few to fit and test: the split 0.6,0.2,0.2 gives 3/1/1"
    ) as e:
        load_splits(path)
    _one_line(e)
    assert "at least 5 training rows, 1 validation row and 2 test rows" in str(e.value)


def test_folds_partition_the_rows_and_split_the_rest_like_the_split(tmp_path):
    data = Dataset(torch.arange(200.0).reshape(100, 2))
    tests = []
    for k in range(5):
        parts = split(data, fractions=(0.6, 0.2, 0.2), seed=3, fold=k, folds=5)
        assert (len(parts.train), len(parts.val), len(parts.test)) == (60, 20, 20)  # 80 rows in 3:1
        seen = torch.cat([parts.index[p] for p in ("train", "val", "test")]).sort().values
        assert torch.equal(seen, torch.arange(100))  # every row in exactly one part
        tests.append(parts.index["test"])
    assert torch.equal(torch.cat(tests).sort().values, torch.arange(100))  # the test parts partition


def test_unknown_data_set_lists_the_known_ones():
    with pytest.raises(
        UsageError, match=r"unknown data set 'iris'; choose one of: breast_cancer, diabetes, digits, wine"
    ) as e:
        load("iris")
    _one_line(e)


def test_unknown_column(table):
    with pytest.raises(
        UsageError, match=r"column 'z' is not in .*; its columns are: 'a', 'b', 'c', 'kind'"
    ) as e:
        load(table, columns=["a", "z"])
    _one_line(e)
    with pytest.raises(UsageError, match=r"column 7 is out of range: .* has columns 0 to 3"):
        load(table, columns=[7])


def test_labels_column_not_in_the_file(table):
    with pytest.raises(
        UsageError, match=r"labels column 'target' is not in .*; its columns are: 'a', 'b'"
    ) as e:
        load(table, labels="target")
    _one_line(e)


@pytest.mark.parametrize(
    ("call", "pattern"),
    [
        (lambda p: load(p, columns=["a", "a"]), r"columns 'a' are selected more than once"),
        (lambda p: load(p, columns=["kind"], labels="kind"), r"'kind' is the labels column"),
        (
            lambda p: load(p, labels="kind", binarize=True),
            r"binarize=True needs a threshold, and only digits has a default",
        ),
        (
            lambda p: load_splits(p, labels="kind", fractions=(0.5, 0.5, 0.5)),
            r"fractions=\(0.5, 0.5, 0.5\) is not allowed",
        ),
        (lambda p: load_splits(p, columns=["a"], binarize=5, standardize=True), r"the data are binary"),
        (
            lambda p: load(p.with_suffix(".txt").write_text("") or p.with_suffix(".txt")),
            r"unsupported type '.txt'",
        ),
    ],
    ids=["duplicate", "label-as-feature", "no-threshold", "fractions", "binary-standardised", "suffix"],
)
def test_other_bad_options(table, call, pattern):
    with pytest.raises(UsageError, match=pattern) as e:
        call(table)
    _one_line(e)


def test_bad_numpy_files(tmp_path):
    np.save(tmp_path / "flat.npy", np.arange(5.0))
    with pytest.raises(UsageError, match=r"holds an array of shape \(5,\); expected 2-D \(N, D\)"):
        load(tmp_path / "flat.npy")
    np.save(tmp_path / "text.npy", np.array([["a", "b"]]))
    with pytest.raises(UsageError, match=r"holds values of type <U1; expected a numeric array"):
        load(tmp_path / "text.npy")
    np.savez(tmp_path / "upper.npz", X=np.zeros((3, 2)))
    with pytest.raises(
        UsageError, match=r"has no array 'x' \(it has 'X'\); expected x \(N, D\), optionally y"
    ):
        load(tmp_path / "upper.npz")
    np.savez(tmp_path / "short.npz", x=np.zeros((3, 2)), y=np.zeros(2))
    with pytest.raises(UsageError, match=r"y has shape \(2,\); expected \(3,\)"):
        load(tmp_path / "short.npz")
    (tmp_path / "junk.npy").write_bytes(b"not numpy")
    with pytest.raises(UsageError, match=r"cannot read .*junk\.npy as a NumPy file"):
        load(tmp_path / "junk.npy")


def test_check_binary_names_the_first_other_value():
    with pytest.raises(UsageError, match=r"x has the value 0.5 at row 1, column 0; the Bernoulli likelihood"):
        pfdata.check_binary(torch.tensor([[0.0, 1.0], [0.5, 0.0]]))


@pytest.mark.parametrize("module", [pfdata, loaders, standardize])
def test_docstring_examples_run(module):
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
