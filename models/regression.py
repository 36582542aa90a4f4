r"""Regression processes for Bayesian neural networks with latent input noise (kind ``"regression"``).

Each synthetic process draws inputs :math:`x` and outputs :math:`y` from a known law and knows
its true conditional density :math:`\log p(y \mid x)`, the ideal test log-likelihood that no
fitted model can beat in expectation. The two toy problems are those of Depeweg, Hernández-Lobato,
Doshi-Velez & Udluft, "Decomposition of uncertainty in Bayesian deep learning for efficient and
risk-sensitive learning" (ICML 2018), 750 points by default; ``diabetes`` is scikit-learn's
bundled diabetes data (442 patients, 10 inputs; no download), with no ground truth.

Every entry has ``splits(n_train, n_test, seed) -> RegressionData`` (``diabetes`` also
``fold`` and ``folds``, for K-fold cross-validation); the synthetic ones also
have ``sample(n, seed) -> (x, y)`` with ``x`` of shape ``(N, 1)`` and ``y`` of shape ``(N,)``,
``log_density(x, y)``, ``mean(x)`` and ``cdf(x, y)`` of the true conditional law.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass

import torch

from pyrofail.errors import UsageError, check_positive_float, check_positive_int
from pyrofail.zoo import register

__all__ = ["Bimodal", "Diabetes", "Heteroscedastic", "RegressionData", "load_diabetes"]

LOG_2PI = math.log(2 * math.pi)


@dataclass
class RegressionData:
    """Train and test inputs ``(N, D)`` and outputs ``(N,)`` of one regression problem;
    for a data set (``diabetes``), ``train_index`` and ``test_index`` are the rows of the
    original data behind them (``None`` for the synthetic processes)."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    train_index: torch.Tensor | None = None
    test_index: torch.Tensor | None = None


def _normal_log_prob(y: torch.Tensor, loc: torch.Tensor, scale) -> torch.Tensor:
    scale = torch.as_tensor(scale, dtype=y.dtype)
    return -0.5 * ((y - loc) / scale) ** 2 - torch.log(scale) - 0.5 * LOG_2PI


class _Synthetic:
    """Shared by the synthetic processes: ``splits`` from ``sample``."""

    default_size = 750

    def splits(self, n_train: int = 750, n_test: int = 1000, seed: int = 0) -> RegressionData:
        """``n_train + n_test`` points from ``sample(., seed)``, the first ``n_train`` for training.

        Example:
            >>> d = Heteroscedastic().splits(20, 10, seed=0)
            >>> d.x_train.shape, d.y_test.shape
            (torch.Size([20, 1]), torch.Size([10]))
        """
        n_train = check_positive_int("n_train", n_train)
        n_test = check_positive_int("n_test", n_test)
        x, y = self.sample(n_train + n_test, seed=seed)
        return RegressionData(x[:n_train], y[:n_train], x[n_train:], y[n_train:])


@register(
    "regression",
    "heteroscedastic",
    summary="y = 7 sin x + 3|cos(x/2)| eps on a three-bump input density: input-dependent noise",
    keywords=("heteroscedastic", "latent-input-noise", "depeweg-2018"),
    input_dim=1,
)
class Heteroscedastic(_Synthetic):
    r"""Heteroscedastic toy problem of Depeweg et al. (2018).

    .. math::

        x \sim \tfrac13 \mathcal N(-4, 0.4^2) + \tfrac13 \mathcal N(0, 0.9^2)
              + \tfrac13 \mathcal N(4, 0.4^2), \qquad
        y = 7 \sin x + 3 \lvert\cos(x/2)\rvert\, \varepsilon, \quad \varepsilon \sim \mathcal N(0, 1),

    so :math:`\log p(y \mid x) = \log \mathcal N\big(y; 7\sin x, 9\cos^2(x/2)\big)`. The noise
    is largest at :math:`x = 0` and vanishes at :math:`x = \pm\pi`, where no data fall.

    Example:
        >>> x, y = Heteroscedastic().sample(5, seed=0)
        >>> x.shape, y.shape
        (torch.Size([5, 1]), torch.Size([5]))
    """

    means = (-4.0, 0.0, 4.0)
    scales = (0.4, 0.9, 0.4)

    @torch.no_grad()
    def sample(self, n: int = 750, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` points ``(x (N, 1), y (N,))`` from a private generator seeded with ``seed``."""
        n = check_positive_int("n", n)
        g = torch.Generator().manual_seed(int(seed))
        component = torch.randint(0, 3, (n,), generator=g)
        loc = torch.tensor(self.means)[component]
        scale = torch.tensor(self.scales)[component]
        x = loc + scale * torch.randn(n, generator=g)
        y = 7.0 * torch.sin(x) + 3.0 * torch.cos(x / 2).abs() * torch.randn(n, generator=g)
        return x[:, None], y

    def log_density(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        r""":math:`\log p(y \mid x) = \log \mathcal N(y; 7 \sin x, 9 \cos^2(x/2))` per point, ``(N,)``.

        Example:
            >>> lp = Heteroscedastic().log_density(torch.zeros(1, 1), torch.zeros(1))
            >>> round(float(lp), 5)  # -log(3 sqrt(2 pi))
            -2.01755
        """
        x = x[:, 0]
        return _normal_log_prob(y, 7.0 * torch.sin(x), 3.0 * torch.cos(x / 2).abs())

    def mean(self, x: torch.Tensor) -> torch.Tensor:
        r""":math:`\mathbb E[y \mid x] = 7 \sin x`, ``(N,)``."""
        return 7.0 * torch.sin(x[:, 0])

    def cdf(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        r""":math:`P(Y \le y \mid x) = \Phi\big((y - 7 \sin x) / 3\lvert\cos(x/2)\rvert\big)`, ``(N,)``."""
        x = x[:, 0]
        return torch.special.ndtr((y - 7.0 * torch.sin(x)) / (3.0 * torch.cos(x / 2).abs()))


@register(
    "regression",
    "bimodal",
    summary="y = 10 cos x + eps or 10 sin x + eps, each with probability 1/2: two-branch outputs",
    keywords=("bimodal", "latent-input-noise", "depeweg-2018"),
    input_dim=1,
)
class Bimodal(_Synthetic):
    r"""Bimodal toy problem of Depeweg et al. (2018).

    .. math::

        x + 0.5 \sim \operatorname{Exponential}(\text{rate } 2) \text{ truncated to } [0, 2.5], \qquad
        y = \begin{cases} 10 \cos x + \varepsilon & \text{with probability } \tfrac12 \\
                          10 \sin x + \varepsilon & \text{otherwise,} \end{cases}
        \quad \varepsilon \sim \mathcal N(0, 1),

    so :math:`x \in [-0.5, 2]` and
    :math:`p(y \mid x) = \tfrac12 \mathcal N(y; 10\cos x, 1) + \tfrac12 \mathcal N(y; 10\sin x, 1)`.
    The input is drawn from the truncated distribution itself, by its inverse CDF
    :math:`x = -\tfrac12 \log\big(1 - u\,(1 - e^{-5})\big) - 0.5`, :math:`u \sim U(0, 1)`
    (not by rejection; the two give the same law).

    Example:
        >>> x, y = Bimodal().sample(1000, seed=0)
        >>> bool(x.min() >= -0.5 and x.max() <= 2.0)
        True
    """

    rate = 2.0
    low, high = -0.5, 2.0

    @torch.no_grad()
    def sample(self, n: int = 750, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` points ``(x (N, 1), y (N,))`` from a private generator seeded with ``seed``."""
        n = check_positive_int("n", n)
        g = torch.Generator().manual_seed(int(seed))
        u = torch.rand(n, generator=g, dtype=torch.float64)
        mass = 1.0 - math.exp(-self.rate * (self.high - self.low))
        x = (-torch.log1p(-u * mass) / self.rate + self.low).to(torch.get_default_dtype())
        branch = torch.rand(n, generator=g) < 0.5
        y = torch.where(branch, 10.0 * torch.cos(x), 10.0 * torch.sin(x)) + torch.randn(n, generator=g)
        return x[:, None], y

    def log_density(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        r""":math:`\log\big(\tfrac12 \mathcal N(y; 10\cos x, 1) + \tfrac12 \mathcal N(y; 10\sin x, 1)\big)`,
        ``(N,)``.

        Example:
            >>> x = torch.full((1, 1), math.pi / 4)  # both branches at 10 / sqrt(2)
            >>> lp = Bimodal().log_density(x, torch.full((1,), 10 / math.sqrt(2)))
            >>> round(float(lp), 5)  # -log sqrt(2 pi)
            -0.91894
        """
        x = x[:, 0]
        both = torch.stack(
            (_normal_log_prob(y, 10 * torch.cos(x), 1.0), _normal_log_prob(y, 10 * torch.sin(x), 1.0))
        )
        return torch.logsumexp(both, 0) - math.log(2.0)

    def mean(self, x: torch.Tensor) -> torch.Tensor:
        r""":math:`\mathbb E[y \mid x] = 5 (\cos x + \sin x)`, ``(N,)``."""
        return 5.0 * (torch.cos(x[:, 0]) + torch.sin(x[:, 0]))

    def cdf(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        r""":math:`P(Y \le y \mid x) = \tfrac12 \Phi(y - 10 \cos x) + \tfrac12 \Phi(y - 10 \sin x)`,
        ``(N,)``."""
        x = x[:, 0]
        return 0.5 * torch.special.ndtr(y - 10.0 * torch.cos(x)) + 0.5 * torch.special.ndtr(
            y - 10.0 * torch.sin(x)
        )


def load_diabetes(
    seed: int = 0, test_fraction: float = 0.2, *, fold: int | None = None, folds: int = 5
) -> RegressionData:
    r"""scikit-learn's bundled diabetes data (Efron et al. 2004; 442 patients, 10 inputs), split
    at random (seeded) into train and test and standardised with the training statistics:
    :math:`\tilde x = (x - \bar x_{train}) / s_{x, train}` per column, likewise :math:`y`.

    The 442 patients are put in the order of ``torch.randperm`` under a generator seeded with
    ``seed``. Without ``fold``, the first ``round(test_fraction * 442)`` of them are the test
    points and the rest the training points. With ``fold`` (K-fold cross-validation,
    ``0 <= fold < folds``, ``folds >= 2``), that order is cut into ``folds`` contiguous blocks
    of near-equal size (``torch.tensor_split``: the first ``442 % folds`` blocks one longer);
    block ``fold`` is the test part and the other blocks, in order, the training part, so the
    ``folds`` test parts of one ``seed`` partition the 442 points; ``test_fraction`` is then
    not used.

    The raw (unscaled) features are read (``load_diabetes(scaled=False)``); nothing is downloaded.

    Example:
        >>> d = load_diabetes(seed=0)
        >>> d.x_train.shape, d.x_test.shape, round(float(d.y_train.mean()), 6)
        (torch.Size([354, 10]), torch.Size([88, 10]), 0.0)
        >>> [load_diabetes(seed=0, fold=k).x_test.shape[0] for k in range(5)]
        [89, 89, 88, 88, 88]
    """
    from sklearn.datasets import load_diabetes as _sk_load

    test_fraction = check_positive_float("test_fraction", test_fraction)
    if test_fraction >= 1:
        raise UsageError(f"test_fraction={test_fraction} is not allowed; expected a number in (0, 1)")
    x_np, y_np = _sk_load(return_X_y=True, scaled=False)
    x = torch.as_tensor(x_np, dtype=torch.get_default_dtype())
    y = torch.as_tensor(y_np, dtype=torch.get_default_dtype())
    n = x.shape[0]
    folds = check_positive_int("folds", folds, minimum=2)
    if folds > n:
        raise UsageError(
            f"folds={folds} is not allowed; diabetes has {n} points, so expected 2 <= folds <= {n}"
        )
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed)))
    if fold is None:
        n_test = max(1, round(test_fraction * n))
        test, train = perm[:n_test], perm[n_test:]
    else:
        allowed = f"expected an integer in [0, {folds - 1}] for folds={folds}"
        try:
            index = None if isinstance(fold, bool) else operator.index(fold)
        except TypeError:
            index = None
        if index is None:
            raise UsageError(f"fold={fold!r} is not an integer; {allowed}")
        fold = index
        if not 0 <= fold < folds:
            raise UsageError(f"fold={fold} is not allowed; {allowed}")
        blocks = torch.tensor_split(perm, folds)
        test = blocks[fold]
        train = torch.cat([b for k, b in enumerate(blocks) if k != fold])
    x_loc, x_scale = x[train].mean(0), x[train].std(0)
    y_loc, y_scale = y[train].mean(), y[train].std()
    xs, ys = (x - x_loc) / x_scale, (y - y_loc) / y_scale
    return RegressionData(xs[train], ys[train], xs[test], ys[test], train_index=train, test_index=test)


@register(
    "regression",
    "diabetes",
    summary="scikit-learn's diabetes data (442 x 10), standardised; real data, no ground truth",
    keywords=("real-data", "no-ground-truth"),
    input_dim=10,
    real_data=True,
)
class Diabetes:
    """scikit-learn's bundled diabetes data (:func:`load_diabetes`): a data set, not a process,
    so it has ``splits`` but no ``sample``, and ``log_density``, ``mean`` and ``cdf`` are ``None``.

    Example:
        >>> Diabetes().splits(seed=1).x_train.shape
        torch.Size([354, 10])
        >>> Diabetes().splits(100, 50, seed=1).x_test.shape
        torch.Size([50, 10])
    """

    log_density = mean = cdf = None

    def splits(
        self,
        n_train: int | None = None,
        n_test: int | None = None,
        seed: int = 0,
        *,
        fold: int | None = None,
        folds: int = 5,
    ) -> RegressionData:
        """The seeded 80/20 split of :func:`load_diabetes` (354 train, 88 test points), or with
        ``fold`` its ``fold``-th of ``folds`` cross-validation splits; ``n_train`` and ``n_test``,
        when given, keep the first so many points of each part."""
        data = load_diabetes(seed=seed, fold=fold, folds=folds)
        parts = {
            "n_train": (n_train, data.x_train, data.y_train, data.train_index),
            "n_test": (n_test, data.x_test, data.y_test, data.test_index),
        }
        out, index = [], []
        for name, (n, x, y, i) in parts.items():
            if n is not None:
                n = check_positive_int(name, n)
                if n > x.shape[0]:
                    raise UsageError(f"{name}={n} is not allowed; diabetes has {x.shape[0]} points there")
                x, y, i = x[:n], y[:n], i[:n]
            out += [x, y]
            index.append(i)
        return RegressionData(*out, train_index=index[0], test_index=index[1])
