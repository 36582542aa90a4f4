r"""The Hilbert–Schmidt independence criterion (HSIC) with Gaussian kernels.

For kernels :math:`k` on :math:`x` and :math:`l` on :math:`z`, the population HSIC
(Gretton, Bousquet, Smola & Schölkopf, "Measuring statistical dependence with Hilbert–Schmidt
norms", ALT 2005) is

.. math::

    \mathrm{HSIC} = \mathbb E[k(x,x')\,l(z,z')] + \mathbb E[k(x,x')]\,\mathbb E[l(z,z')]
                    - 2\,\mathbb E[k(x,x')\,l(z,z'')],

over independent copies of :math:`(x, z)`; with characteristic kernels such as the Gaussian it
is zero if and only if :math:`x` and :math:`z` are independent. Two estimators from :math:`n`
pairs with Gram matrices :math:`K, L` and centring :math:`H = I - \tfrac1n \mathbf 1 \mathbf 1^\top`:

* the biased V-statistic :math:`\widehat{\mathrm{HSIC}}_b = \tfrac{1}{n^2}\operatorname{tr}(KHLH)
  \ge 0` (Gretton et al. 2005), smooth and non-negative: the training penalty;
* the unbiased U-statistic of Song, Smola, Gretton, Bedo & Borgwardt ("Feature selection via
  dependence maximization", JMLR 2012), with :math:`\tilde K, \tilde L` the Gram matrices with
  zeroed diagonals,

  .. math::

      \widehat{\mathrm{HSIC}}_u = \frac{1}{n(n-3)}\Big[\operatorname{tr}(\tilde K \tilde L)
        + \frac{\mathbf 1^\top \tilde K \mathbf 1\, \mathbf 1^\top \tilde L \mathbf 1}{(n-1)(n-2)}
        - \frac{2}{n-2}\, \mathbf 1^\top \tilde K \tilde L \mathbf 1\Big],

  whose mean is exactly the population value (zero under independence): the measurement,
  with a jackknife standard error (:func:`hsic_jackknife`).

Gaussian kernels :math:`k(a, b) = \exp(-\lVert a-b \rVert^2 / 2h^2)` with the median heuristic
:math:`h = \operatorname{median}_{i<j} \lVert a_i - a_j \rVert` (Gretton et al. 2005, 2008), or
the mean of such kernels at fractions of :math:`h` (``INPUT_SCALES`` for the inputs of a
regression): when the inputs fall in separated clusters, as in the ``heteroscedastic`` process,
the median distance is the distance *between* clusters, and a kernel that wide cannot see a
latent that varies with the input *within* a cluster; the finer kernels can.
"""

from __future__ import annotations

import math

import torch

from pyrofail.errors import UsageError

# kernel scales (fractions of the median distance) for the inputs x of a regression
INPUT_SCALES = (0.125, 0.25, 0.5, 1.0)

__all__ = [
    "INPUT_SCALES",
    "center",
    "gaussian_gram",
    "hsic_biased",
    "hsic_jackknife",
    "hsic_unbiased",
    "median_bandwidth",
]


def _as_matrix(a: torch.Tensor) -> torch.Tensor:
    return a[:, None] if a.dim() == 1 else a


def median_bandwidth(a: torch.Tensor) -> torch.Tensor:
    r"""The median heuristic :math:`h = \operatorname{median}_{i<j}\lVert a_i - a_j\rVert` for
    points ``(n,)`` or ``(n, d)`` (detached; 1 if every distance is zero).

    Example:
        >>> float(median_bandwidth(torch.tensor([0.0, 1.0, 3.0])))  # distances 1, 3, 2
        2.0
    """
    a = _as_matrix(a.detach())
    n = a.shape[0]
    i, j = torch.triu_indices(n, n, offset=1)
    d = (a[i] - a[j]).norm(dim=-1)
    h = d.median() if d.numel() else a.new_ones(())
    return torch.where(h > 0, h, a.new_ones(()))


def gaussian_gram(a: torch.Tensor, bandwidth=None, scales=(1.0,)) -> torch.Tensor:
    r"""The Gram matrix
    :math:`K_{ij} = \frac1{|C|}\sum_{c \in C} \exp(-\lVert a_i - a_j\rVert^2 / 2 (c h)^2)`,
    ``(n, n)``, for ``a`` ``(n,)`` or ``(n, d)``: a Gaussian kernel, or with several ``scales``
    :math:`C` the mean of Gaussian kernels at bandwidths :math:`c h` (a sum of characteristic
    kernels is characteristic). ``bandwidth`` :math:`h` defaults to :func:`median_bandwidth`.
    Differentiable in ``a`` (not through the median heuristic).

    Example:
        >>> gaussian_gram(torch.tensor([0.0, 1.0]), bandwidth=1.0)
        tensor([[1.0000, 0.6065],
                [0.6065, 1.0000]])
    """
    a = _as_matrix(a)
    h = median_bandwidth(a) if bandwidth is None else torch.as_tensor(bandwidth, dtype=a.dtype)
    sq = torch.cdist(a, a).square() if a.shape[-1] > 1 else (a - a.T).square()
    return sum(torch.exp(-sq / (2 * (c * h) ** 2)) for c in scales) / len(scales)


def center(k: torch.Tensor) -> torch.Tensor:
    r""":math:`HKH`, the doubly centred Gram matrix (:math:`H = I - \tfrac1n \mathbf 1 \mathbf 1^\top`).

    Example:
        >>> center(torch.ones(3, 3)).abs().max().item()
        0.0
    """
    return k - k.mean(0, keepdim=True) - k.mean(1, keepdim=True) + k.mean()


def hsic_biased(k: torch.Tensor, kz: torch.Tensor, *, centered: bool = False) -> torch.Tensor:
    r""":math:`\widehat{\mathrm{HSIC}}_b = \tfrac1{n^2}\operatorname{tr}(KHLH)` from Gram matrices
    ``k`` :math:`= K` and ``kz`` :math:`= L`, ``(n, n)`` (Gretton et al. 2005);
    non-negative for positive semi-definite ``K`` and ``L``. ``centered=True`` says ``k`` is
    already :math:`HKH` (:func:`center`), which saves the centring when ``K`` is fixed and ``L``
    changes, as in a training penalty.

    Example:
        >>> x = torch.linspace(-1, 1, 50)
        >>> bool(hsic_biased(gaussian_gram(x), gaussian_gram(x ** 3)) > 0.05)
        True
    """
    kc = k if centered else center(k)
    return (kc * kz).sum() / k.shape[0] ** 2


def _unbiased_terms(k: torch.Tensor, kz: torch.Tensor):
    kt = k - torch.diag_embed(k.diagonal())
    lt = kz - torch.diag_embed(kz.diagonal())
    return kt, lt


def _unbiased_from_sums(t1, sk, sl, t3, n):
    return (t1 + sk * sl / ((n - 1) * (n - 2)) - 2.0 * t3 / (n - 2)) / (n * (n - 3))


def hsic_unbiased(k: torch.Tensor, kz: torch.Tensor) -> torch.Tensor:
    r"""The unbiased :math:`\widehat{\mathrm{HSIC}}_u` of Song et al. (2012) from Gram matrices
    ``(n, n)``, ``n >= 4``; its expectation is the population HSIC, zero under independence.

    It is linear in ``L``: the mean of the estimates over several draws of ``z`` is the
    estimate with the mean of their Gram matrices.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> x, z = torch.randn(300, generator=g), torch.randn(300, generator=g)
        >>> abs(float(hsic_unbiased(gaussian_gram(x), gaussian_gram(z)))) < 0.005
        True
    """
    n = k.shape[0]
    if n < 4:
        raise UsageError(f"the unbiased HSIC needs n >= 4 points; got n={n}")
    kt, lt = _unbiased_terms(k, kz)
    kr, lr = kt.sum(1), lt.sum(1)
    return _unbiased_from_sums((kt * lt).sum(), kr.sum(), lr.sum(), (kr * lr).sum(), n)


def hsic_jackknife(k: torch.Tensor, kz: torch.Tensor) -> tuple[float, float]:
    r"""``(value, stderr)``: :math:`\widehat{\mathrm{HSIC}}_u` and its jackknife standard error

    .. math::

        \mathrm{se} = \Big[\tfrac{n-1}{n} \sum_i
            \big(\hat\theta_{(i)} - \bar\theta_{(\cdot)}\big)^2\Big]^{1/2},

    with :math:`\hat\theta_{(i)}` the estimate without point :math:`i` (Efron & Stein 1981; for
    U-statistics the jackknife variance is consistent, Arvesen 1969). All :math:`n`
    leave-one-out estimates come from the row sums in :math:`O(n^2)`: dropping point :math:`i`
    removes :math:`2 r_i` from :math:`\operatorname{tr}(\tilde K\tilde L)` (:math:`r` the row
    sums of :math:`\tilde K \circ \tilde L`), :math:`2 k_i` and :math:`2 l_i` from the totals
    (:math:`k = \tilde K \mathbf 1`, :math:`l = \tilde L \mathbf 1`), and
    :math:`(\tilde K l)_i + (\tilde L k)_i - r_i + k_i l_i` from
    :math:`\mathbf 1^\top \tilde K \tilde L \mathbf 1`. Needs ``n >= 5``.

    Example:
        >>> x = torch.linspace(-2, 2, 100)
        >>> value, se = hsic_jackknife(gaussian_gram(x), gaussian_gram(x.sin()))
        >>> value > 10 * se
        True
    """
    n = k.shape[0]
    if n < 5:
        raise UsageError(f"the jackknife of the unbiased HSIC needs n >= 5 points; got n={n}")
    kt, lt = _unbiased_terms(k.double(), kz.double())
    kr, lr = kt.sum(1), lt.sum(1)
    r = (kt * lt).sum(1)
    t1, sk, sl, t3 = r.sum(), kr.sum(), lr.sum(), (kr * lr).sum()
    value = _unbiased_from_sums(t1, sk, sl, t3, n)
    loo = _unbiased_from_sums(
        t1 - 2 * r, sk - 2 * kr, sl - 2 * lr, t3 - kt @ lr - lt @ kr + r - kr * lr, n - 1
    )
    se = math.sqrt((n - 1) / n * float(((loo - loo.mean()) ** 2).sum()))
    return float(value), se
