r"""``infer``: one entry point for the three ways of inferring a BNN+LV's weights and latents.

* ``"nuts"``: Pyro's NUTS over all weights and latents, the reference
  (:func:`pyrofail.bnn.nuts.nuts_posterior`);
* ``"mean_field"``: mean-field Gaussian VI over the weights and the per-point latents
  (:func:`pyrofail.bnn.variational.fit_variational` without a penalty);
* ``"noise_constrained"``: the same VI plus :math:`\lambda N` times the HSIC between the inputs
  and draws of the inferred latents, :math:`\lambda` chosen on validation data
  (:func:`pyrofail.bnn.noise_constrained.fit_noise_constrained`; this project's reading of
  Yacoby, Pan & Doshi-Velez, JMLR 2022, whose procedure we know only from its abstract).

The inputs and outputs are standardised with the training statistics before inference
(``standardize=True``), so that the priors and :math:`\sigma` are on the scale of the data
whatever its units; the returned :class:`~pyrofail.bnn.posterior.BNNPosterior` predicts in the
user's units.
"""

from __future__ import annotations

import inspect

import torch

from pyrofail.bnn.network import BNNLV
from pyrofail.bnn.noise_constrained import fit_noise_constrained
from pyrofail.bnn.nuts import nuts_posterior
from pyrofail.bnn.posterior import BNNPosterior, Scaling
from pyrofail.bnn.variational import fit_variational
from pyrofail.errors import UsageError, check_choice

__all__ = ["METHODS", "OPTIONS", "infer"]


def _mean_field(network, x, y, **options):
    return fit_variational(network, x, y, penalty=0.0, **options)


METHODS = {"nuts": nuts_posterior, "mean_field": _mean_field, "noise_constrained": fit_noise_constrained}


def _keywords(fn) -> list[str]:
    params = inspect.signature(fn).parameters.values()
    return [
        p.name
        for p in params
        if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name not in ("seed", "penalty")
    ]


# the options each method takes (noise_constrained passes the VI options on)
OPTIONS = {
    "nuts": _keywords(nuts_posterior),
    "mean_field": _keywords(fit_variational),
    "noise_constrained": _keywords(fit_noise_constrained) + _keywords(fit_variational),
}


def _check_options(method: str, options: dict) -> None:
    for name in options:
        if name not in OPTIONS[method]:
            raise UsageError(
                f"unknown option {name!r} for inference={method!r}; choose from: {', '.join(OPTIONS[method])}"
            )


def infer(
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    inference: str = "mean_field",
    hidden=(50,),
    seed: int = 0,
    activation: str = "tanh",
    noise_scale: float = 0.1,
    weight_scale: float = 1.0,
    latent_scale: float = 1.0,
    standardize: bool = True,
    **options,
) -> BNNPosterior:
    r"""Infer the weights and latents of the BNN+LV
    :math:`y = f_W(x, z) + \varepsilon`, :math:`W \sim \mathcal N(0, s_w^2 I)`,
    :math:`z_n \sim \mathcal N(0, s_z^2)`, :math:`\varepsilon \sim \mathcal N(0, \sigma^2)`
    (Depeweg et al. 2018; :class:`~pyrofail.bnn.network.BNNLV`) from inputs ``x`` ``(N, D)``
    and outputs ``y`` ``(N,)``.

    ``noise_scale`` :math:`\sigma`, ``weight_scale`` :math:`s_w` and ``latent_scale`` :math:`s_z`
    are in standardised units when ``standardize`` is true. ``options`` go to the method
    (e.g. ``steps``, ``lr``, ``num_particles`` for VI; ``warmup``, ``num_draws``,
    ``max_tree_depth`` for NUTS; ``lam`` or ``lams`` for ``noise_constrained``). The same
    ``seed`` gives the same result on CPU.

    Example:
        >>> x = torch.linspace(-1, 1, 12)[:, None]
        >>> post = infer(x, x[:, 0] ** 2, inference="mean_field", hidden=(4,), steps=10, num_draws=6)
        >>> post.w.shape, post.z.shape, post.predictive(torch.zeros(2, 1), num_z=3).shape
        (torch.Size([6, 17]), torch.Size([6, 12]), torch.Size([18, 2]))
    """
    check_choice("inference", inference, METHODS)
    if not (isinstance(x, torch.Tensor) and x.dim() == 2):
        raise UsageError(
            f"x of shape {tuple(getattr(x, 'shape', ()))} is not allowed; expected a tensor (N, D)"
        )
    if not (isinstance(y, torch.Tensor) and y.shape == (x.shape[0],)):
        raise UsageError(
            f"y of shape {tuple(getattr(y, 'shape', ()))} is not allowed; expected a tensor ({x.shape[0]},)"
        )
    if x.shape[0] < 5:
        raise UsageError(f"{x.shape[0]} points are too few; expected at least 5")
    if not (torch.isfinite(x).all() and torch.isfinite(y).all()):
        raise UsageError("x and y must be finite; found NaN or infinity")
    _check_options(inference, options)
    network = BNNLV(
        input_dim=x.shape[1],
        hidden=hidden,
        activation=activation,
        noise_scale=noise_scale,
        weight_scale=weight_scale,
        latent_scale=latent_scale,
    )
    dtype = torch.get_default_dtype()
    x, y = x.detach().to(dtype), y.detach().to(dtype)
    scaling = Scaling.fit(x, y) if standardize else Scaling.identity(x.shape[1])
    out = METHODS[inference](network, scaling.x(x), scaling.y(y), seed=seed, **options)
    info = dict(out["info"], seed=seed)
    return BNNPosterior(
        network=network,
        w=out["w"],
        z=out["z"],
        z_mean=out["z_mean"],
        x_train=x,
        y_train=y,
        scaling=scaling,
        inference=inference,
        info=info,
    )
