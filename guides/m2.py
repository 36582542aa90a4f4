r"""The guide of the semi-supervised VAE M2: a classifier :math:`q(y \mid x)` and
:math:`q(z \mid x, y)` from any registered family.

.. math::

    q_\phi(y, z \mid x) = q_\phi(y \mid x)\, q_\phi(z \mid x, y), \qquad
    q_\phi(y \mid x) = \operatorname{Cat}\big(\operatorname{softmax} g_\phi(x)\big),

with :math:`g_\phi` an :class:`~pyrofail.nn.MLP` and :math:`q_\phi(z \mid x, y)` any family of
:mod:`pyrofail.guides` whose encoder reads :math:`x` and :math:`\operatorname{onehot}(y)`
concatenated (Kingma, Rezende, Mohamed & Welling 2014, model M2).

**Which family this is.** With the label summed out, the implied posterior over :math:`z` is a
mixture over the classes,

.. math::

    q_\phi(z \mid x) = \sum_y q_\phi(y \mid x)\, q_\phi(z \mid x, y),

so a mean-field :math:`q(z \mid x, y)` already gives a :math:`C`-component mixture for
:math:`q(z \mid x)`: it can hold one posterior mode per class (the bimodal :math:`p(z \mid x)`
of ``semicircle``), but within a class it is as restricted as the family. With
``label_in_encoder=False`` the encoder reads :math:`x` alone, :math:`q(z \mid x, y) = q(z \mid
x)` (a variant some M2 implementations use): then the implied :math:`q(z \mid x)` is the
family itself, unimodal for a mean-field Gaussian, whatever the classifier says.

**Labelled points.** The Pyro guide samples the model's ``"y_unobserved"`` site (marked for
parallel enumeration, so ``TraceEnum_ELBO`` sums it out exactly) for every point; for a
labelled point its distribution is the point mass at the label (log-probability 0 there and
``DELTA_LOGIT`` elsewhere, a finite stand-in for :math:`-\infty` so that
:math:`0 \cdot \log 0` stays 0), so the sum over :math:`y` reduces to the labelled bound
:math:`\mathcal L(x, y)` with no entropy term. ``guide(x, y, aux=True)`` instead runs only the
classifier and observes the known labels (site ``"y_classify"``): the auxiliary term
:math:`\alpha \sum_{\text{labelled}} \log q(y \mid x)` of Kingma et al., which the objectives
of :mod:`pyrofail.objectives.m2` add (through a trace, so that masks such as
:func:`pyrofail.fit`'s frozen restarts apply).
"""

from __future__ import annotations

from collections.abc import Sequence

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.nn import PyroModule

from pyrofail import zoo
from pyrofail.errors import UsageError, check_positive_int
from pyrofail.labels import check_labels, one_hot
from pyrofail.nn import ACTIVATION, MLP, Batched, data_plates

__all__ = ["DELTA_LOGIT", "M2Guide"]

# log q(y | x) of the classes a labelled point does not have: exp(-1e4) is exactly 0 in
# float32 and float64, and 0 * 1e4 = 0 where -inf would give NaN.
DELTA_LOGIT = -1e4


class M2Guide(Batched, PyroModule):
    r""":math:`q(y \mid x)\, q(z \mid x, y)` for :class:`~pyrofail.models.m2.LabelledLatentGaussian`
    (see the module docstring).

    :param latent_dim: :math:`K`.
    :param data_dim: :math:`D`.
    :param num_classes: :math:`C`.
    :param family: a registered guide name (``pyrofail.zoo.names("guide")``), built with
        ``data_dim = D + C``, or such a guide object (un-batched or with matching restarts).
    :param hidden: hidden widths of the classifier and of the family's encoder.
    :param classifier_hidden: hidden widths of the classifier (default ``hidden``).
    :param label_in_encoder: whether the family's encoder reads ``onehot(y)`` beside ``x``
        (Kingma et al.'s :math:`q(z \mid x, y)`, the default) or ``x`` alone.
    :param restarts: ``None``, or ``R`` independent copies in one batched module.
    :param family_options: passed to the family (``min_scale``, ``components``, ``base``, ...).

    Example:
        >>> import torch
        >>> from pyrofail.guides.m2 import M2Guide
        >>> guide = M2Guide(1, 2, family="mean_field", hidden=(8,))
        >>> x = torch.randn(5, 2)
        >>> guide.classify(x).shape, guide.distribution(x, torch.ones(5, dtype=torch.long)).batch_shape
        (torch.Size([5, 2]), torch.Size([5]))
    """

    def __init__(
        self,
        latent_dim: int,
        data_dim: int,
        num_classes: int = 2,
        family="mean_field",
        *,
        hidden: Sequence[int] = (50, 50, 50),
        activation: str = ACTIVATION,
        classifier_hidden: Sequence[int] | None = None,
        label_in_encoder: bool = True,
        restarts: int | None = None,
        **family_options,
    ):
        super().__init__()
        self.latent_dim = check_positive_int("latent_dim", latent_dim)
        self.data_dim = check_positive_int("data_dim", data_dim)
        self.num_classes = check_positive_int("num_classes", num_classes, minimum=2)
        self.restarts = restarts
        self.label_in_encoder = bool(label_in_encoder)
        encoder_dim = self.data_dim + (self.num_classes if self.label_in_encoder else 0)
        widths = tuple(hidden if classifier_hidden is None else classifier_hidden)
        self.classifier = MLP((self.data_dim, *widths, self.num_classes), activation, restarts)
        if isinstance(family, str):
            self.family = family
            self.posterior = zoo.guide(
                family,
                latent_dim=self.latent_dim,
                data_dim=encoder_dim,
                hidden=tuple(hidden),
                activation=activation,
                restarts=restarts,
                **family_options,
            )
        else:
            if family_options:
                raise UsageError("family_options apply only when family is a registered name")
            if getattr(family, "restarts", None) != restarts:
                raise UsageError(f"the family object has restarts={family.restarts}, expected {restarts}")
            if (family.latent_dim, family.data_dim) != (self.latent_dim, encoder_dim):
                raise UsageError(
                    f"the family object has latent_dim={family.latent_dim}, data_dim={family.data_dim}; "
                    f"expected {self.latent_dim} and {encoder_dim} (D + C, or D without the label)"
                )
            self.family = type(family).__name__
            self.posterior = family

    # -- the classifier q(y | x) ----------------------------------------------------------
    def class_logits(self, x: torch.Tensor) -> torch.Tensor:
        r""":math:`\log q(y \mid x)` for every class: ``(N, C)``, or ``(R, N, C)`` when batched."""
        return torch.log_softmax(self.classifier(x), -1)

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        r"""Class probabilities :math:`q(y \mid x)`: ``(N, C)``, or ``(R, N, C)`` when batched.

        Example:
            >>> import torch
            >>> from pyrofail.guides.m2 import M2Guide
            >>> p = M2Guide(1, 2, hidden=(4,)).classify(torch.zeros(3, 2))
            >>> torch.allclose(p.sum(-1), torch.ones(3))
            True
        """
        return self.class_logits(x).exp()

    # -- q(z | x, y) ------------------------------------------------------------------------
    def encoder_input(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``x`` and ``onehot(y)`` concatenated, broadcast to a common batch shape (with the
        restart dimension made explicit when batched, as the batched MLPs expect it); ``x``
        alone when ``label_in_encoder`` is off."""
        if not self.label_in_encoder:
            return x
        lead = torch.broadcast_shapes(x.shape[:-1], y.shape)
        if self.restarts is not None:
            lead = torch.broadcast_shapes(lead, (self.restarts, x.shape[-2]))
        code = one_hot(y, self.num_classes, x.dtype)
        return torch.cat((x.expand(*lead, x.shape[-1]), code.expand(*lead, self.num_classes)), -1)

    def distribution(self, x: torch.Tensor, y: torch.Tensor) -> dist.Distribution:
        r""":math:`q(z \mid x, y)` for long labels ``y`` broadcastable against the points of
        ``x`` (``(N,)``, or ``(C, 1, ..., 1)`` for every class at once)."""
        return self.posterior.distribution(self.encoder_input(x, y))

    # -- the Pyro guide ---------------------------------------------------------------------
    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None, *, aux: bool = False):
        """The Pyro guide ``guide(x, y)`` (module docstring); returns ``(z, y)``. With
        ``aux=True``, only the classifier's observation of the known labels."""
        n = x.shape[-2]
        y = check_labels(y, n, self.num_classes)
        known = torch.zeros(n, dtype=torch.bool) if y is None else y >= 0
        obs = torch.zeros(n, dtype=torch.long) if y is None else y.clamp(min=0)
        known, obs = known.to(x.device), obs.to(x.device)
        with data_plates(n, self.restarts):
            if aux:
                with poutine.mask(mask=known):
                    pyro.sample("y_classify", dist.Categorical(logits=self.class_logits(x)), obs=obs)
                return None
            logits = self.class_logits(x)
            delta = torch.where(one_hot(obs, self.num_classes, logits.dtype) > 0, 0.0, DELTA_LOGIT)
            logits = torch.where(known.unsqueeze(-1), delta, logits)
            guess = pyro.sample(
                "y_unobserved", dist.Categorical(logits=logits), infer={"enumerate": "parallel"}
            )
            label = torch.where(known, obs, guess)
            z = pyro.sample("z", self.distribution(x, label))
        return z, label

    def extra_repr(self) -> str:
        return (
            f"latent_dim={self.latent_dim}, data_dim={self.data_dim}, num_classes={self.num_classes}, "
            f"family={self.family!r}, label_in_encoder={self.label_in_encoder}, restarts={self.restarts}"
        )
