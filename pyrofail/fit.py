r"""Fit a VAE (or only its guide), with ``R`` restarts vectorised into one model.

The protocol is that of Yacoby et al. (2020), Section 5: with the latent dimension and the
noise scale fixed, train ``R`` restarts and keep the one with the best validation objective;
half of the restarts start from the ground truth (:mod:`pyrofail.training.init`). How the
objective is applied is the *procedure* (:mod:`pyrofail.procedures`): ``"joint"`` trains
decoder and encoder together by SVI (:mod:`pyrofail.training.loop`).

Example:
    >>> import pyrofail as pf
    >>> truth = pf.zoo.model("quadratic")
    >>> data = truth.sample(200, seed=0)
    >>> result = pf.fit(data.x, truth=truth, restarts=2, steps=20, pretrain_steps=5, hidden=(8,))
    >>> result.model.latent_dim, len(result.restarts)
    (1, 2)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from pyrofail import zoo
from pyrofail.fit_result import FitResult
from pyrofail.nn import ACTIVATION
from pyrofail.training.config import resolve

__all__ = ["FitResult", "fit"]


def fit(
    x,
    *,
    y=None,
    y_val=None,
    truth=None,
    model=None,
    learn_model: bool = True,
    latent_dim: int | None = None,
    guide="mean_field",
    objective="elbo",
    procedure: str = "joint",
    procedure_options: dict | None = None,
    restarts: int = 10,
    steps: int = 6000,
    batch_size: int = 100,
    lr: float = 1e-3,
    seed: int = 0,
    device: str = "cpu",
    noise_scale: float | None = None,
    learn_noise: bool = False,
    likelihood: str = "gaussian",
    noise_per_feature: bool = False,
    hidden: Sequence[int] = (50, 50, 50),
    activation: str = ACTIVATION,
    init: str = "paper",
    pretrain_steps: int = 2000,
    warmup_steps: int | None = None,
    x_val=None,
    val_fraction: float = 0.2,
    guide_options: dict | None = None,
    objective_options: dict | None = None,
    eval_every: int | None = None,
    checkpoint: str | Path | None = None,
    progress: bool = False,
    callbacks: Sequence[Callable] = (),
    compile: bool | None = None,
) -> FitResult:
    r"""Train a VAE (decoder and encoder) or only a guide, with vectorised restarts.

    :param x: training data ``(N, D)`` (a tensor, an array or a :class:`~pyrofail.data.Dataset`).
    :param y: labels ``(N,)`` (long, ``-1`` where unknown) for a semi-supervised fit: the M2
        model and guide of Kingma et al. (2014) (:mod:`pyrofail.models.m2`,
        :mod:`pyrofail.guides.m2`), trained by the ``elbo`` (labels enumerated) or ``iwae``
        (labels summed out) objective; the guide then has ``classify(x)``.
    :param y_val: labels of ``x_val`` (default: all unknown).
    :param truth: the ground-truth process: gives :math:`\sigma` and, for the paper's
        initialisation, the true decoder :math:`f`.
    :param model: a process to start from; with ``learn_model=False`` its decoder stays fixed
        and only the guide is fitted (amortization-gap studies).
    :param latent_dim: :math:`K` of the learned model (default: that of ``truth``/``model``).
    :param guide: a registered guide name (``pyrofail.zoo.names("guide")``) or a guide object.
    :param objective: a registered objective name, or a Pyro ``ELBO`` with ``per_point``.
    :param procedure: a registered procedure name (``pyrofail.zoo.names("procedure")``), e.g.
        ``"libi"`` (likelihood before inference, :mod:`pyrofail.procedures.libi`).
    :param procedure_options: the procedure's own options.
    :param restarts: number of restarts ``R``, run as one batched model.
    :param steps: Adam steps of the training (after initialisation).
    :param batch_size: data points per step.
    :param lr: Adam learning rate: constant for half the steps, then a cosine decay to 1/100
        of it (:func:`pyrofail.training.loop.lr_factor`).
    :param seed: seeds the weights, the minibatch order, the Monte Carlo draws and the
        validation split: same seed, same numbers on CPU.
    :param device: ``"cpu"`` or ``"cuda"`` (or any torch device string).
    :param noise_scale: :math:`\sigma` of the learned model (default: the truth's).
    :param learn_noise: train :math:`\log\sigma` as well.
    :param likelihood: ``"gaussian"`` or ``"bernoulli"`` (binary data, decoder logits).
    :param noise_per_feature: one :math:`\sigma_d` per feature (with ``learn_noise``).
    :param hidden: hidden widths of the MLP decoder (and of the guide unless
        ``guide_options`` says otherwise).
    :param init: ``"paper"`` (half the restarts at the ground truth, half random),
        ``"random"`` or ``"ground_truth"``; the ground-truth kinds need ``truth``.
    :param pretrain_steps: regression steps that fit the decoder to the true :math:`f`.
    :param warmup_steps: encoder steps with the ground-truth decoder fixed (default
        ``steps // 6``).
    :param x_val: validation data for selection; by default ``val_fraction`` of ``x`` is held
        out (seeded).
    :param eval_every: steps between validation evaluations (default ``steps // 20``).
    :param checkpoint: a file to save progress to at every evaluation; if it exists, the fit
        resumes from it and gives the same result as an uninterrupted fit.
    :param callbacks: functions ``cb(step, state)`` called after every step, where ``state``
        has ``model``, ``guide`` (batched), ``loss``, ``active``.
    :param compile: take the training steps without Pyro's per-step tracing
        (:mod:`pyrofail.training.compiled`: the same loss and gradients, the same draws);
        ``None`` (default) does so for the mean-field guide with ``elbo`` or ``iwae``, ``False``
        never, ``True`` insists (a :class:`~pyrofail.errors.UsageError` elsewhere).
    """
    options = {k: v for k, v in locals().items() if k != "x"}
    config, problem = resolve(x, **options)
    return zoo.procedure(config.procedure)(config, problem)
