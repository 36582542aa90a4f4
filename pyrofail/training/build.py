"""The learned model, guide and objective of a fit, built from its configuration.

One place builds them, for a fit (batched over ``R`` restarts) and for reading a finished fit
back (un-batched), so that a saved state dict always finds the module it came from.
"""

from __future__ import annotations

from collections.abc import Sequence

from pyrofail import zoo
from pyrofail.errors import UsageError
from pyrofail.guides.m2 import M2Guide
from pyrofail.models.latent_bernoulli import LatentBernoulli
from pyrofail.models.latent_gaussian import LatentGaussian
from pyrofail.models.m2 import m2_model
from pyrofail.nn import ACTIVATION, MLP, Batched
from pyrofail.objectives.m2 import M2ELBO, M2IWAE

__all__ = ["LIKELIHOODS", "guide", "learned_model", "learned_model_for", "objective", "check_stackable"]

LIKELIHOODS = ("gaussian", "bernoulli")


def learned_model(
    latent_dim: int,
    data_dim: int,
    noise_scale: float | None,
    *,
    hidden: Sequence[int] = (50, 50, 50),
    activation: str = ACTIVATION,
    learn_noise: bool = False,
    likelihood: str = "gaussian",
    noise_per_feature: bool = False,
    num_classes: int | None = None,
    restarts: int | None = None,
):
    r"""A learned model with prior :math:`z \sim \mathcal N(0, I_K)` and an MLP decoder
    :math:`f_\theta`: ``likelihood="gaussian"``, :math:`x \mid z \sim \mathcal N(f_\theta(z),
    \operatorname{diag}\sigma^2)` with one :math:`\sigma` (or one per feature), fixed or
    learned; ``"bernoulli"``, :math:`x_d \mid z \sim \mathrm{Bernoulli}(\operatorname{sigmoid}
    f_\theta(z)_d)` for binary data. With ``num_classes``, the semi-supervised M2 model
    :math:`p(y)\, p(z)\, p(x \mid z, y)` with the decoder :math:`f_\theta(z, \operatorname{onehot}(y))`."""
    if num_classes is not None:
        if likelihood != "gaussian" or noise_per_feature:
            raise UsageError("the semi-supervised model has a Gaussian likelihood with one noise scale")
        return m2_model(
            latent_dim,
            data_dim,
            num_classes,
            hidden=hidden,
            activation=activation,
            noise_scale=noise_scale,
            learn_noise=learn_noise,
            restarts=restarts,
        )
    decoder = MLP((latent_dim, *hidden, data_dim), activation, restarts=restarts)
    if likelihood == "bernoulli":
        return LatentBernoulli(decoder, latent_dim, data_dim, restarts=restarts)
    return LatentGaussian(
        decoder,
        latent_dim,
        data_dim,
        noise_scale,
        learn_noise=learn_noise,
        noise_per_feature=noise_per_feature,
        restarts=restarts,
    )


def learned_model_for(config, restarts: int | None = None):
    """:func:`learned_model` with every setting from a resolved fit configuration
    (:class:`~pyrofail.training.config.FitConfig`)."""
    return learned_model(
        config.latent_dim,
        config.data_dim,
        config.noise_scale,
        hidden=config.hidden,
        activation=config.activation,
        learn_noise=config.learn_noise,
        likelihood=config.likelihood,
        noise_per_feature=config.noise_per_feature,
        num_classes=config.num_classes,
        restarts=restarts,
    )


def guide(
    name: str,
    latent_dim: int,
    data_dim: int,
    *,
    hidden: Sequence[int] = (50, 50, 50),
    activation: str = ACTIVATION,
    options: dict | None = None,
    num_classes: int | None = None,
    restarts: int | None = None,
):
    r"""The registered guide ``name`` with the fit's network shape (its own ``options`` win);
    with ``num_classes``, the M2 guide :math:`q(y \mid x)\, q(z \mid x, y)` whose
    :math:`q(z \mid x, y)` is that family."""
    opts = {"hidden": tuple(hidden), "activation": activation, **(options or {})}
    if num_classes is not None:
        return M2Guide(latent_dim, data_dim, num_classes, family=name, restarts=restarts, **opts)
    return zoo.guide(name, latent_dim=latent_dim, data_dim=data_dim, restarts=restarts, **opts)


# the semi-supervised versions of the objectives, for a fit with labels
LABELLED_OBJECTIVES = {"elbo": M2ELBO, "iwae": M2IWAE}


def objective(spec, options: dict | None = None, labelled: bool = False):
    """A registered objective by name (with ``options``), or an objective object as given;
    either must know its per-point value (``per_point``). With ``labelled``, the M2 objectives
    of Kingma et al. (2014): ``elbo`` (y enumerated) and ``iwae`` (y summed out)."""
    if labelled and isinstance(spec, str):
        if spec not in LABELLED_OBJECTIVES:
            raise UsageError(
                f"objective {spec!r} has no semi-supervised version; choose one of: "
                + ", ".join(LABELLED_OBJECTIVES)
            )
        return LABELLED_OBJECTIVES[spec](**(options or {}))
    loss = zoo.objective(spec, **(options or {})) if isinstance(spec, str) else spec
    if not hasattr(loss, "per_point"):
        raise UsageError("objective= must be a registered name or an objective with per_point()")
    return loss


def check_stackable(model, restarts: int, learn_model: bool) -> None:
    """A model's trainable parameters must live in :class:`Batched` modules to be batched."""
    if not learn_model or restarts == 1:
        return
    batched = {id(p) for m in model.modules() if isinstance(m, Batched) for p in m.parameters()}
    loose = [n for n, p in model.named_parameters() if p.requires_grad and id(p) not in batched]
    if loose:
        raise UsageError(
            f"model= has parameters outside restart-batchable modules ({loose[0]}, ...); "
            "use restarts=1 or build the decoder from pyrofail.nn.MLP"
        )
