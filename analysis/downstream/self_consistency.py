r"""Does a VAE encode what its own decoder generates? Self-consistency and robust representations.

Cemgil, Ghaisas, Dvijotham, Gowal & Kohli ("The Autoencoding Variational Autoencoder",
NeurIPS 2020) find that a nominally trained VAE does not consistently encode the typical samples
of its decoder, and that making it self-consistent makes the representation robust to input
perturbations. The measures here:

* :func:`consistency`: for :math:`z \sim p(z)` and :math:`x = \mu_\theta(z)` (the decoder's
  mean), the distance :math:`\lVert z - m_\phi(x) \rVert_2` to the encoder's mean
  :math:`m_\phi(x) = \mathbb E_{q_\phi}[z \mid x]`; with ``exact=True`` (:math:`K \le 2`) also
  the same distance for the exact posterior mean :math:`\mathbb E_{p_\theta}[z \mid x]` of the
  model by quadrature (:mod:`pyrofail.analysis.reference.grid`), the ideal encoder, whose distance is not
  zero (the posterior shrinks towards the prior and may have several modes), and their paired
  difference;
* :func:`chain_drift`: the encode–decode chain :math:`z_{t+1} = m_\phi(\mu_\theta(z_t))` from
  :math:`z_0 \sim p(z)`, and how far it drifts, :math:`\lVert z_t - z_0 \rVert_2` and
  :math:`\lVert \mu_\theta(z_t) - \mu_\theta(z_0) \rVert_2`, for :math:`t = 1, \dots, T`;
* :func:`linear_probe`: a linear classifier (scikit-learn's ``LogisticRegression`` on
  standardised encoder means) trained on labelled data, and its accuracy on test points
  attacked by :func:`pyrofail.analysis.downstream.attacks.attack_encoder` over a sweep of :math:`\varepsilon`
  (the attack moves the encoder, not the classifier: it measures the representation);
* :func:`elbo_cost`: the test ELBO a model gives up for the term (paired over points).

Every value comes with its standard error over points (for accuracies, that of a proportion);
every draw is seeded.
"""

from __future__ import annotations

import math

import torch

from pyrofail import bounds
from pyrofail.analysis.downstream.attacks import RESTARTS, attack_encoder
from pyrofail.analysis.reference import grid
from pyrofail.errors import UsageError, check_positive_int
from pyrofail.estimate import Estimate

__all__ = ["chain_drift", "consistency", "elbo_cost", "encoder_mean", "linear_probe"]


def _summary(values: torch.Tensor) -> tuple[float, float]:
    v = values.detach().double().reshape(-1)
    se = float(v.std() / math.sqrt(v.numel())) if v.numel() > 1 else float("nan")
    return float(v.mean()), se


def _paired(a, b) -> dict:
    """:meth:`Estimate.paired <pyrofail.estimate.Estimate.paired>` of same-shaped per-point
    values, as the JSON the results hold."""
    a, b = torch.as_tensor(a), torch.as_tensor(b)
    if a.shape != b.shape:
        raise UsageError(f"paired values need the same shape; got {tuple(a.shape)} and {tuple(b.shape)}")
    return Estimate.paired(a.reshape(-1), b.reshape(-1)).to_dict()


def encoder_mean(q, num_samples: int = 256, seed: int = 0) -> torch.Tensor:
    r""":math:`\mathbb E_q[z]` ``(..., K)``: exact where the distribution has a mean, else the
    average of ``num_samples`` reparameterised draws with noise fixed by ``seed`` (a smooth
    function of :math:`q`'s parameters, so attacks can differentiate it).

    Example:
        >>> import pyro.distributions as dist
        >>> encoder_mean(dist.Normal(torch.ones(2, 1), 1.0).to_event(1)).tolist()
        [[1.0], [1.0]]
    """
    try:
        return q.mean
    except NotImplementedError:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return q.rsample((num_samples,)).mean(0)


def _prior_draws(model, n: int, seed: int) -> torch.Tensor:
    data = model.sample(check_positive_int("n", n), seed=seed)
    if data.z is None:
        raise UsageError("the model's sample() gives no z; self-consistency needs prior draws of z")
    return data.z


@torch.no_grad()
def consistency(
    model, guide, n: int = 1000, *, seed: int = 0, exact: bool = False, num_samples: int = 256
) -> dict:
    r"""Self-consistency of ``guide`` for ``model``'s own decoder (module docstring):
    :math:`d(z) = \lVert z - m_\phi(\mu_\theta(z)) \rVert_2` for ``n`` prior draws.

    :param exact: also the ideal encoder's distance with the model's exact posterior mean by
        quadrature (``latent_dim <= 2``), and the paired excess ``encoder - exact``.
    :returns: ``{"per_point" (n,), "mean", "stderr"}``, with ``exact=True`` also
        ``"exact": {"per_point", "mean", "stderr"}`` and ``"excess": {"mean", "stderr"}``.

    Example:
        >>> import pyro.distributions as dist
        >>> from pyrofail.guides import AmortizedGuide
        >>> from pyrofail.models import LinearGaussian
        >>> truth = LinearGaussian(latent_dim=1, data_dim=1, weight=[[1.0]], noise_scale=1.0)
        >>> class Exact(AmortizedGuide):  # the exact posterior N(x / 2, 1 / 2)
        ...     latent_dim, data_dim, restarts = 1, 1, None
        ...     def distribution(self, x):
        ...         return dist.Normal(x / 2, 0.5**0.5).to_event(1)
        >>> out = consistency(truth, Exact(), 500, exact=True)
        >>> abs(out["excess"]["mean"]) < 1e-4  # the exact posterior mean is the ideal encoder
        True
    """
    z = _prior_draws(model, n, seed)
    x = model.mean(z)
    mu = encoder_mean(guide.distribution(x), num_samples, seed)
    d = (z - mu).norm(dim=-1)
    mean, se = _summary(d)
    out = {"per_point": d, "mean": mean, "stderr": se}
    if exact:
        if model.latent_dim > grid.MAX_K:
            raise UsageError(f"exact=True needs latent_dim <= {grid.MAX_K}, got {model.latent_dim}")
        post = grid.grid_posterior(model, x).mean.to(z.dtype)
        d_exact = (z - post).norm(dim=-1)
        e_mean, e_se = _summary(d_exact)
        out["exact"] = {"per_point": d_exact, "mean": e_mean, "stderr": e_se}
        out["excess"] = _paired(d, d_exact)
    return out


@torch.no_grad()
def chain_drift(
    model, guide, n: int = 500, steps: int = 10, *, seed: int = 0, num_samples: int = 256
) -> dict:
    r"""The encode–decode chain :math:`z_{t+1} = m_\phi(\mu_\theta(z_t))` from ``n`` prior draws:
    per step :math:`t = 1..T`, the mean drift :math:`\lVert z_t - z_0 \rVert_2` in latent space
    and :math:`\lVert \mu_\theta(z_t) - \mu_\theta(z_0) \rVert_2` in data space, with their
    standard errors over chains. A self-consistent pair stays put.

    :returns: ``{"step" [1..T], "latent_mean", "latent_stderr", "data_mean", "data_stderr"``
        (lists), ``"latent" (n, T), "data" (n, T)}``.

    Example:
        >>> import pyro.distributions as dist
        >>> from pyrofail.guides import AmortizedGuide
        >>> from pyrofail.models import LinearGaussian
        >>> truth = LinearGaussian(latent_dim=1, data_dim=1, weight=[[1.0]], noise_scale=1.0)
        >>> class Exact(AmortizedGuide):  # the exact posterior N(x / 2, 1 / 2)
        ...     latent_dim, data_dim, restarts = 1, 1, None
        ...     def distribution(self, x):
        ...         return dist.Normal(x / 2, 0.5**0.5).to_event(1)
        >>> out = chain_drift(truth, Exact(), 100, steps=3)
        >>> out["step"], out["latent_mean"][2] > out["latent_mean"][0]  # z_t = z_0 / 2^t
        ([1, 2, 3], True)
    """
    steps = check_positive_int("steps", steps)
    z0 = _prior_draws(model, n, seed)
    x0 = model.mean(z0)
    z, latent, data = z0, [], []
    for t in range(steps):
        z = encoder_mean(guide.distribution(model.mean(z)), num_samples, seed + 1 + t)
        latent.append((z - z0).norm(dim=-1))
        data.append((model.mean(z) - x0).norm(dim=-1))
    latent, data = torch.stack(latent, -1), torch.stack(data, -1)
    out = {"step": list(range(1, steps + 1)), "latent": latent, "data": data}
    for name, values in (("latent", latent), ("data", data)):
        stats = [_summary(values[:, t]) for t in range(steps)]
        out[f"{name}_mean"] = [m for m, _ in stats]
        out[f"{name}_stderr"] = [s for _, s in stats]
    return out


def _features(guide, x, num_samples: int, seed: int):
    with torch.no_grad():
        return encoder_mean(guide.distribution(x), num_samples, seed).double().cpu().numpy()


def linear_probe(
    guide,
    x_train,
    y_train,
    x_test,
    y_test,
    eps=(0.0, 0.05, 0.1, 0.2),
    *,
    norm: str = "linf",
    objective: str = "mean",
    steps: int = 50,
    restarts: int = RESTARTS,
    scale: float = 1.0,
    seed: int = 0,
    num_samples: int = 256,
) -> dict:
    r"""Robustness of the representation: a linear classifier on the encoder means and its
    test accuracy under the encoder attack, for every :math:`\varepsilon` in ``eps``.

    The classifier is scikit-learn's ``LogisticRegression`` on the standardised means
    :math:`m_\phi(x)` of ``x_train`` (fitted once, on clean data); for each :math:`\varepsilon > 0`
    the test points are replaced by :math:`x + \delta^*` from
    :func:`~pyrofail.analysis.downstream.attacks.attack_encoder` (``objective="mean"`` by default: the
    perturbation that moves :math:`m_\phi(x)` furthest, which is what the classifier reads), and
    :math:`\varepsilon = 0` is the clean accuracy. ``eps`` is in units of ``scale``
    (:func:`~pyrofail.analysis.downstream.attacks.data_scale`); each attack takes the best of
    ``restarts`` starts.

    :returns: ``{"eps", "accuracy", "stderr"`` (lists; the standard error of a proportion,
        :math:`\sqrt{a(1 - a)/n}`), ``"correct" (len(eps), n)`` booleans (pair them across
        encoders with :meth:`~pyrofail.estimate.Estimate.paired`), ``"shift"`` (the attack's
        mean divergence per
        :math:`\varepsilon`), ``"norm", "objective"}``.

    Example:
        >>> import pyro.distributions as dist
        >>> from pyrofail.guides import AmortizedGuide
        >>> class Identity(AmortizedGuide):
        ...     latent_dim, data_dim, restarts = 1, 1, None
        ...     def distribution(self, x):
        ...         return dist.Normal(x, 1.0).to_event(1)
        >>> x = torch.tensor([[-2.0], [-1.0], [1.0], [2.0]])
        >>> y = torch.tensor([0, 0, 1, 1])
        >>> out = linear_probe(Identity(), x, y, x, y, eps=(0.0, 0.5), steps=5)
        >>> out["accuracy"], tuple(out["correct"].shape)  # a shift of 0.5 moves no point across 0
        ([1.0, 1.0], (2, 4))
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x_train, x_test = torch.as_tensor(x_train), torch.as_tensor(x_test)
    y_train = torch.as_tensor(y_train).cpu().numpy()
    y_test = torch.as_tensor(y_test).cpu()
    if len(y_train) != x_train.shape[0] or len(y_test) != x_test.shape[0]:
        raise UsageError("labels and points differ in number; pass one label per row")
    eps = [float(e) for e in eps]
    if any(not math.isfinite(e) or e < 0 for e in eps):
        raise UsageError(f"eps={eps} is not allowed; expected finite numbers >= 0")
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000))
    clf.fit(_features(guide, x_train, num_samples, seed), y_train)
    correct, accuracy, stderr, shift = [], [], [], []
    for e in eps:
        if e == 0:
            x_eval, moved = x_test, 0.0
        else:
            attack = attack_encoder(
                guide,
                x_test,
                e,
                scale=scale,
                norm=norm,
                objective=objective,
                steps=steps,
                restarts=restarts,
                seed=seed,
            )
            x_eval, moved = attack["x_adv"], attack["mean"]
        pred = torch.as_tensor(clf.predict(_features(guide, x_eval, num_samples, seed)))
        ok = pred == y_test
        a = float(ok.double().mean())
        correct.append(ok)
        accuracy.append(a)
        stderr.append(math.sqrt(a * (1 - a) / len(ok)))
        shift.append(moved)
    return {
        "eps": eps,
        "accuracy": accuracy,
        "stderr": stderr,
        "correct": torch.stack(correct),
        "shift": shift,
        "norm": norm,
        "objective": objective,
    }


@torch.no_grad()
def elbo_cost(reference, other, x, *, num_samples: int = 100, seed: int = 0) -> dict:
    r"""The test ELBO that ``other`` gives up against ``reference`` (each a ``(model, guide)``
    pair), paired over the points of ``x``: the mean of
    :math:`\mathcal L_{\text{ref}}(x_i) - \mathcal L_{\text{other}}(x_i)` with its standard error
    (which includes the Monte Carlo noise of both estimates), and each mean ELBO.

    :returns: ``{"cost", "cost_stderr", "reference", "reference_stderr", "other", "other_stderr"}``.

    Example:
        >>> import pyro.distributions as dist
        >>> from pyrofail.guides import AmortizedGuide
        >>> from pyrofail.models import LinearGaussian
        >>> truth = LinearGaussian(latent_dim=1, data_dim=1, weight=[[1.0]], noise_scale=1.0)
        >>> class Posterior(AmortizedGuide):  # N(x / 2, (scale / 2)^2 * 2): exact at scale 1
        ...     latent_dim, data_dim, restarts = 1, 1, None
        ...     def __init__(self, scale):
        ...         super().__init__()
        ...         self.scale = scale
        ...     def distribution(self, x):
        ...         return dist.Normal(x / 2, self.scale * 0.5**0.5).to_event(1)
        >>> x = truth.sample(200, seed=0).x
        >>> out = elbo_cost((truth, Posterior(1.0)), (truth, Posterior(3.0)), x)
        >>> exact = 4 - math.log(3)  # the extra KL(N(0, 9 v) || N(0, v)) of the wider guide
        >>> abs(out["cost"] - exact) < 3 * out["cost_stderr"]
        True
    """
    values = []
    for model, guide in (reference, other):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            values.append(bounds.elbo(model, guide, x, num_samples).value)
    diff = _paired(values[0], values[1])
    ref, ref_se = _summary(values[0])
    oth, oth_se = _summary(values[1])
    return {
        "cost": diff["mean"],
        "cost_stderr": diff["stderr"],
        "reference": ref,
        "reference_stderr": ref_se,
        "other": oth,
        "other_stderr": oth_se,
    }
