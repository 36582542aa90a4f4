r"""The semi-supervised objectives of M2 (Kingma, Rezende, Mohamed & Welling 2014).

For unlabelled points :math:`x` and labelled pairs :math:`(x, y)` (labels ``-1`` where unknown),

.. math::

    \mathcal J = \sum_{\text{unlabelled}} \mathcal U(x)
        + \gamma \sum_{\text{labelled}} \mathcal L(x, y)
        + \alpha \sum_{\text{labelled}} \log q_\phi(y \mid x),

maximised (the losses are :math:`-\mathcal J`). :math:`\mathcal L(x, y) \le \log p_\theta(x, y)`
and :math:`\mathcal U(x) \le \log p_\theta(x)` are bounds of the guide
:class:`~pyrofail.guides.m2.M2Guide` for the model
:class:`~pyrofail.models.m2.LabelledLatentGaussian`; the last term trains the classifier on the
labels, which the bounds alone do not (Kingma et al. use :math:`\alpha = 0.1 N` on the *mean*
over labelled points, i.e. :math:`0.1 / f` per labelled point at labelled fraction :math:`f`:
1 at 10%, the default here).

* :class:`M2ELBO` (``elbo``): :math:`\mathcal L(x, y) = \mathbb E_{q(z \mid x, y)}
  \log\frac{p(x, y, z)}{q(z \mid x, y)}` and
  :math:`\mathcal U(x) = \sum_y q(y \mid x)\,[\mathcal L(x, y) - \log q(y \mid x)]`, with Pyro's
  ``TraceEnum_ELBO`` summing :math:`y` out exactly (the guide enumerates it), as in Pyro's
  ``examples/vae/ss_vae_M2.py``.
* :class:`M2IWAE` (``iwae``): the importance-weighted bounds with :math:`y` summed out,

  .. math::

      \mathcal U_S(x) = \log \sum_y \frac1S \sum_{s=1}^S
          \frac{p(y)\, p(z_{ys})\, p(x \mid z_{ys}, y)}{q(z_{ys} \mid x, y)}, \qquad
      \mathcal L_S(x, y) = \log \frac1S \sum_{s=1}^S \frac{p(x, y, z_{s})}{q(z_{s} \mid x, y)},

  with :math:`z_{ys} \sim q(z \mid x, y)` for every class. :math:`\mathcal U_S` does not involve
  :math:`q(y \mid x)`: :math:`\mathbb E \sum_y \frac1S \sum_s w_{ys} = \sum_y p(x, y) = p(x)`,
  so :math:`\mathcal U_S \le \log p(x)` by Jensen and it tends to :math:`\log p(x)` as
  :math:`S` grows. Pyro's ``RenyiELBO`` does not enumerate discrete sites (and at
  :math:`\alpha = 0` would give a sampled :math:`y` no gradient), so the bound is written here
  on the traces of the model and the guide, with :math:`y` enumerated in parallel.

Both keep :func:`pyrofail.fit`'s conventions: ``max_plate_nesting = 2`` (``restarts`` at -2,
``data`` at -1), particles at -3, the label's enumeration at -4; the model and the guide are
called as ``model(x, y)`` and ``guide(x, y)``, and all their terms come from Pyro traces, so
masks and scales wrapped around them (such as ``fit``'s frozen restarts) apply; ``per_point``
gives the per-point bound (``(N,)`` or ``(R, N)``) with its Monte Carlo standard error.
:func:`~pyrofail.labels.hide_labels` builds the labels with ``-1`` s from a labelled fraction.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import pyro
import torch
from pyro import poutine
from pyro.infer import ELBO, TraceEnum_ELBO

from pyrofail import bounds, memory
from pyrofail.bounds import Estimate
from pyrofail.errors import UsageError, check_positive_int
from pyrofail.labels import check_labels, hide_labels
from pyrofail.objectives.elbo import MAX_PLATE_NESTING

__all__ = [
    "M2ELBO",
    "M2IWAE",
    "EnumeratedWeights",
    "classifier_log_likelihood",
    "enumerated_log_weights",
    "hide_labels",
    "m2_elbo",
    "m2_iwae",
]

PARTICLE_DIM = -(MAX_PLATE_NESTING + 1)
ENUM_DIM = -(MAX_PLATE_NESTING + 2)


def _check_weight(name: str, value, positive: bool) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise UsageError(f"{name}={value!r} is not a number") from None
    if not math.isfinite(out) or out < 0 or (positive and out == 0):
        allowed = "> 0" if positive else ">= 0"
        raise UsageError(f"{name}={value!r} is not allowed; expected a finite number {allowed}")
    return out


def _labels(x: torch.Tensor, y) -> tuple[torch.Tensor, torch.Tensor]:
    """``(known, obs)``: which points are labelled, and their labels (0 where unknown)."""
    n = x.shape[-2]
    y = check_labels(y, n)  # the classes' range is checked by the model and the guide
    if y is None:
        return torch.zeros(n, dtype=torch.bool, device=x.device), torch.zeros(
            n, dtype=torch.long, device=x.device
        )
    y = y.to(x.device)
    return y >= 0, y.clamp(min=0)


def classifier_log_likelihood(guide, x: torch.Tensor, y) -> torch.Tensor:
    r""":math:`\sum_{\text{labelled}} \log q(y \mid x)`, from the trace of
    ``guide(x, y, aux=True)`` (so that masks and scales around the guide apply); 0 without
    labels.

    Example:
        >>> import torch
        >>> from pyrofail.guides.m2 import M2Guide
        >>> guide = M2Guide(1, 2, hidden=(4,))
        >>> x, y = torch.zeros(3, 2), torch.tensor([0, -1, 1])
        >>> float(classifier_log_likelihood(guide, x, y).detach()) < 0
        True
    """
    known, _ = _labels(x, y)
    if not bool(known.any()):
        return x.new_zeros(())
    trace = poutine.trace(guide).get_trace(x, y, aux=True)
    return trace.log_prob_sum()


@dataclass
class EnumeratedWeights:
    r"""Importance log-weights with every class enumerated.

    ``log_w`` ``(C, S, *batch)``: :math:`\log p(x, y_{\text{eff}}, z_{cs}) - \log q(z_{cs} \mid
    x, y_{\text{eff}})` with :math:`y_{\text{eff}} = c` for an unlabelled point and its label for a
    labelled one (so a labelled point's rows are :math:`C` independent sets of draws given
    its label); ``log_q_y`` ``(C, *batch)``: :math:`\log q(y = c \mid x)` (0 at the label, and
    ``DELTA_LOGIT`` elsewhere, for a labelled point); ``z`` ``(C, S, *batch, K)`` the draws;
    ``known``, ``obs`` ``(N,)``; ``batch`` is ``(N,)`` or ``(R, N)``.
    """

    log_w: torch.Tensor
    log_q_y: torch.Tensor
    z: torch.Tensor
    known: torch.Tensor
    obs: torch.Tensor


def enumerated_log_weights(model, guide, x: torch.Tensor, y=None, num_samples: int = 1) -> EnumeratedWeights:
    """Trace ``guide(x, y)`` with its label site enumerated in parallel and ``num_samples``
    particles, replay ``model(x, y)`` against it, and return the log-weights per class and
    particle (:class:`EnumeratedWeights`). Differentiable (reparameterised draws)."""
    known, obs = _labels(x, y)
    with pyro.plate("m2_particles", num_samples, dim=PARTICLE_DIM):
        enumerated = poutine.enum(guide, first_available_dim=ENUM_DIM)
        guide_trace = poutine.trace(enumerated).get_trace(x, y)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(x, y)
    guide_trace.compute_log_prob()
    model_trace.compute_log_prob()
    z_site = guide_trace.nodes["z"]
    batched = any(f.name == "restarts" for f in z_site["cond_indep_stack"])
    terms = [s["log_prob"] for s in model_trace.nodes.values() if s["type"] == "sample"]
    log_p = sum(torch.broadcast_tensors(*terms, z_site["log_prob"])[:-1])
    log_w = log_p - z_site["log_prob"]
    log_q_y = guide_trace.nodes["y_unobserved"]["log_prob"]
    log_q_y = log_q_y.expand(log_w.shape)[:, 0]
    z = z_site["value"].expand(*log_w.shape, z_site["value"].shape[-1])
    if not batched:  # drop the empty restarts dim (-2) the enumeration and particles sit left of
        log_w, log_q_y, z = log_w.squeeze(-2), log_q_y.squeeze(-2), z.squeeze(-3)
    return EnumeratedWeights(log_w, log_q_y, z, known, obs)


def _label_rows(w: EnumeratedWeights) -> torch.Tensor:
    """``(S, *batch)``: the log-weights of each labelled point at its label."""
    index = w.obs.expand(w.log_w.shape[1:]).unsqueeze(0)
    return w.log_w.gather(0, index).squeeze(0)


def iwae_terms(w: EnumeratedWeights) -> torch.Tensor:
    r"""``(S, *batch)``: :math:`\log \sum_y w_{ys}` for unlabelled points and :math:`\log
    w_{ys}` at the label for labelled ones; :math:`\log\frac1S\sum_s \exp(\cdot)` of it is
    :math:`\mathcal U_S` or :math:`\mathcal L_S`."""
    return torch.where(w.known, _label_rows(w), torch.logsumexp(w.log_w, 0))


def elbo_terms(w: EnumeratedWeights) -> torch.Tensor:
    r"""``(S, *batch)``: :math:`\sum_y q(y \mid x)\,[\log w_{ys} - \log q(y \mid x)]`, whose
    mean over particles estimates :math:`\mathcal U(x)` (or :math:`\mathcal L(x, y)` where the
    guide's :math:`q(y \mid x)` is the point mass at the label)."""
    q = w.log_q_y.exp().unsqueeze(1)
    return (q * (w.log_w - w.log_q_y.unsqueeze(1))).sum(0)


def _point_weights(known: torch.Tensor, gamma: float) -> torch.Tensor:
    return torch.where(known, gamma, 1.0)


class _M2Options:
    """What both objectives share: the options, the α term and :meth:`per_point`."""

    alpha: float
    gamma: float

    def _set_options(self, alpha, gamma) -> None:
        self.alpha = _check_weight("alpha", alpha, positive=False)
        self.gamma = _check_weight("gamma", gamma, positive=True)

    def _aux(self, guide, x, y) -> torch.Tensor:
        if self.alpha == 0:
            return x.new_zeros(())
        return self.alpha * classifier_log_likelihood(guide, x, y)

    def _per_point(self, model, guide, x, y, num_samples: int, terms, budget: int, seed=None) -> Estimate:
        y = check_labels(y, x.shape[-2])
        n = x.shape[-2]
        if seed is None:  # training's validation: chunks of `budget` pairs, the global generator
            chunk = max(1, budget // max(1, 2 * num_samples * (getattr(model, "restarts", None) or 1)))
        else:  # an evaluation: blocks of points, each from its own seed (pyrofail.bounds.blockwise)
            chunk = bounds.POINT_BLOCK
        value = error = None
        with torch.no_grad():
            for b, (start, stop) in enumerate(memory.steps(n, chunk)):
                part = slice(start, stop)
                with (
                    contextlib.nullcontext()
                    if seed is None
                    else bounds.seeded(bounds.block_seed(seed, b), x.device)
                ):
                    w = enumerated_log_weights(
                        model, guide, x[part], None if y is None else y[part], num_samples
                    )
                v, e = terms(w, num_samples)
                if value is None:
                    value, error = v.new_empty((*v.shape[:-1], n)), e.new_empty((*e.shape[:-1], n))
                value[..., part], error[..., part] = v, e
        return Estimate(value, error)

    def options(self) -> dict:
        return {"num_particles": self.num_particles, "alpha": self.alpha, "gamma": self.gamma}


def _mean_and_error(t: torch.Tensor, s: int):
    err = t.std(0) / math.sqrt(s) if s > 1 else torch.zeros_like(t[0])
    return t.mean(0), err


def _log_mean_and_error(t: torch.Tensor, s: int):
    a, b = torch.logsumexp(t, 0), torch.logsumexp(2 * t, 0)
    log_mean = a - math.log(s)
    rel = torch.expm1(b - math.log(s) - 2 * log_mean).clamp_min(0)  # E w^2 / (E w)^2 - 1
    return log_mean, (rel / s).sqrt()


class M2ELBO(_M2Options, TraceEnum_ELBO):
    r"""The M2 objective with ELBO bounds, :math:`y` summed out by ``TraceEnum_ELBO`` (module
    docstring). The loss is :math:`-\mathcal J` summed over the batch (and the restarts).

    :param num_particles: reparameterised draws of :math:`z` per point, class and step.
    :param alpha: :math:`\alpha \ge 0`, weight of :math:`\log q(y \mid x)` per labelled point.
    :param gamma: :math:`\gamma > 0`, weight of :math:`\mathcal L(x, y)` per labelled point.
    :param eval_samples: draws per point for :meth:`per_point`.

    Example:
        >>> import torch
        >>> from pyrofail.guides.m2 import M2Guide
        >>> from pyrofail.models.m2 import m2_model
        >>> model = m2_model(1, 2, hidden=(8,), noise_scale=0.1, restarts=2)
        >>> guide = M2Guide(1, 2, hidden=(8,), restarts=2)
        >>> x, y = torch.randn(6, 2), torch.tensor([0, 1, -1, -1, -1, -1])
        >>> loss = M2ELBO(num_particles=2).differentiable_loss(model.model, guide, x, y)
        >>> loss.shape, M2ELBO().per_point(model, guide, x, 10, y=y).value.shape
        (torch.Size([]), torch.Size([2, 6]))
    """

    def __init__(
        self, num_particles: int = 1, alpha: float = 1.0, gamma: float = 1.0, eval_samples: int = 100
    ):
        self._set_options(alpha, gamma)
        self.eval_samples = check_positive_int("eval_samples", eval_samples)
        super().__init__(
            num_particles=check_positive_int("num_particles", num_particles),
            vectorize_particles=True,
            max_plate_nesting=MAX_PLATE_NESTING,
        )

    def _weighted(self, model, guide, x, y):
        """Model and guide with the labelled points' terms scaled by γ."""
        known, _ = _labels(x, y)
        if self.gamma == 1.0 or not bool(known.any()):
            return model, guide
        scale = _point_weights(known, self.gamma).to(x.dtype)
        return poutine.scale(model, scale=scale), poutine.scale(guide, scale=scale)

    def differentiable_loss(self, model, guide, x, y=None):
        """:math:`-\\mathcal J` as a differentiable tensor."""
        m, g = self._weighted(model, guide, x, y)
        return super().differentiable_loss(m, g, x, y) - self._aux(guide, x, y)

    def loss(self, model, guide, x, y=None):
        """:math:`-\\mathcal J` as a float."""
        m, g = self._weighted(model, guide, x, y)
        with torch.no_grad():
            return super().loss(m, g, x, y) - float(self._aux(guide, x, y))

    def loss_and_grads(self, model, guide, x, y=None):
        """:math:`-\\mathcal J` as a float, after backpropagating it."""
        loss = self.differentiable_loss(model, guide, x, y)
        loss.backward()
        return float(loss.detach())

    def per_point(
        self, model, guide, x, num_samples: int | None = None, *, y=None, budget: int = 2**20, seed=None
    ):
        r"""Per-point :math:`\mathcal U(x)` (unlabelled) or :math:`\mathcal L(x, y)` (labelled),
        without :math:`\gamma` and :math:`\alpha`: an :class:`~pyrofail.bounds.Estimate` of shape
        ``(N,)`` or ``(R, N)``, with ``num_samples`` draws per class (default ``eval_samples``).
        Without ``seed`` (training's validation), chunks of ``budget`` (draw, point) pairs from
        the global generator; with it, blocks of :data:`pyrofail.bounds.POINT_BLOCK` points, each
        from its own seed (memory one block's, the draws independent of the points' number)."""
        s = check_positive_int("num_samples", num_samples or self.eval_samples)
        return self._per_point(
            model, guide, x, y, s, lambda w, s: _mean_and_error(elbo_terms(w), s), budget, seed
        )


class M2IWAE(_M2Options, ELBO):
    r"""The M2 objective with importance-weighted bounds :math:`\mathcal U_S`,
    :math:`\mathcal L_S` and :math:`y` summed out (module docstring); usable by
    ``pyro.infer.SVI``. The loss is :math:`-\mathcal J` summed over the batch (and restarts).

    :param num_particles: :math:`S`, importance samples per point and class.
    :param alpha: :math:`\alpha \ge 0`, weight of :math:`\log q(y \mid x)` per labelled point.
    :param gamma: :math:`\gamma > 0`, weight of :math:`\mathcal L_S(x, y)` per labelled point.

    Example:
        >>> import torch
        >>> from pyrofail.guides.m2 import M2Guide
        >>> from pyrofail.models.m2 import m2_model
        >>> model, guide = m2_model(1, 2, hidden=(8,), noise_scale=0.1), M2Guide(1, 2, hidden=(8,))
        >>> x, y = torch.randn(6, 2), torch.tensor([0, 1, -1, -1, -1, -1])
        >>> M2IWAE(num_particles=5).per_point(model, guide, x, y=y).value.shape
        torch.Size([6])
    """

    def __init__(self, num_particles: int = 20, alpha: float = 1.0, gamma: float = 1.0):
        self._set_options(alpha, gamma)
        super().__init__(
            num_particles=check_positive_int("num_particles", num_particles),
            max_plate_nesting=MAX_PLATE_NESTING,
        )

    def _get_trace(self, model, guide, args, kwargs):  # the bound is computed from whole traces
        raise NotImplementedError("M2IWAE computes its bound in differentiable_loss")

    def bound(self, model, guide, x, y=None) -> torch.Tensor:
        """Per-point :math:`\\mathcal U_S` or :math:`\\mathcal L_S`, differentiable: ``(N,)`` or
        ``(R, N)``."""
        w = enumerated_log_weights(model, guide, x, y, self.num_particles)
        return torch.logsumexp(iwae_terms(w), 0) - math.log(self.num_particles)

    def differentiable_loss(self, model, guide, x, y=None):
        """:math:`-\\mathcal J` as a differentiable tensor."""
        known, _ = _labels(x, y)
        weights = _point_weights(known, self.gamma).to(x.dtype)
        return -(self.bound(model, guide, x, y) * weights).sum() - self._aux(guide, x, y)

    def loss(self, model, guide, x, y=None):
        """:math:`-\\mathcal J` as a float."""
        with torch.no_grad():
            return float(self.differentiable_loss(model, guide, x, y))

    def loss_and_grads(self, model, guide, x, y=None):
        """:math:`-\\mathcal J` as a float, after backpropagating it."""
        loss = self.differentiable_loss(model, guide, x, y)
        if loss.requires_grad:
            loss.backward()
        return float(loss.detach())

    def per_point(
        self, model, guide, x, num_samples: int | None = None, *, y=None, budget: int = 2**20, seed=None
    ):
        """Per-point :math:`\\mathcal U_S` (unlabelled) or :math:`\\mathcal L_S` (labelled) with the
        training :math:`S` (the bound is defined by :math:`S`, so ``num_samples`` does not
        change it), without γ and α, and its delta-method standard error; ``budget`` and
        ``seed`` as for :meth:`M2ELBO.per_point`."""
        s = self.num_particles
        return self._per_point(
            model, guide, x, y, s, lambda w, s: _log_mean_and_error(iwae_terms(w), s), budget, seed
        )


def m2_elbo(
    num_particles: int = 1, alpha: float = 1.0, gamma: float = 1.0, eval_samples: int = 100
) -> M2ELBO:
    """The M2 objective with ELBO bounds (:class:`M2ELBO`)."""
    return M2ELBO(num_particles=num_particles, alpha=alpha, gamma=gamma, eval_samples=eval_samples)


def m2_iwae(num_particles: int = 20, alpha: float = 1.0, gamma: float = 1.0) -> M2IWAE:
    """The M2 objective with importance-weighted bounds (:class:`M2IWAE`)."""
    return M2IWAE(num_particles=num_particles, alpha=alpha, gamma=gamma)
