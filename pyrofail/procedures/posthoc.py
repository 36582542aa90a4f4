r"""The ``posthoc_self_consistency`` procedure: retrain a trained VAE's encoder on its own samples.

Cemgil, Ghaisas, Dvijotham, Gowal & Kohli ("The Autoencoding Variational Autoencoder", NeurIPS
2020) make an already trained VAE self-consistent as a post-processing step "in an entirely self
supervised way without access to the original training data". Here: the decoder of the given
model stays fixed, and the encoder is trained by the run's objective on draws of the model
itself,

.. math::

    z \sim p(z), \qquad x \sim p_\theta(x \mid z),

never on the training data. With ``objective="self_consistent"`` this is the authors' post-hoc
step (the ELBO on the model's samples plus the re-encoding term,
:mod:`pyrofail.objectives.self_consistent`); with ``objective="elbo"`` it is plain amortised
inference on the model's own distribution, the baseline to compare it with.

How to call it::

    trained = pf.fit(x, ...)                                    # any trained model and guide
    post = pf.fit(x_like, model=trained.model, guide=trained.guide, restarts=1,
                  objective="self_consistent", procedure="posthoc_self_consistency")

* ``model=`` is the trained model, un-batched; its decoder is never updated, whatever
  ``learn_model`` says (the result records ``learn_model=False``). Without ``model=`` (as the
  command line runs it: ``--procedure posthoc_self_consistency``) the procedure first trains a
  VAE on ``x`` the usual way (``procedure="joint"`` with the plain ELBO, the run's restarts,
  steps and guide; ``truth=`` starts half the restarts at the ground truth as usual), then
  retrains that VAE's encoder on its own samples: the first stage reads the data, the second
  never does. ``history["pretrained"]`` keeps the first stage's history.
* ``guide=`` is the encoder to start from: the trained guide object (every restart starts from
  it, so one restart is enough) or a registered family name (fresh encoders, trained on model
  samples only).
* With ``model=`` given, ``x`` is not read beyond its width: pass
  ``trained.model.sample(n).x``, or anything of shape ``(N, D)``. Training draws ``samples``
  points from the model once (seeded by ``seed``) and goes through them in minibatches; the
  restart with the best objective on ``val_samples`` further model draws is kept.

Options (``procedure_options``): ``samples`` (default ``min(steps * batch_size, 50000)``),
``val_samples`` (default 1000).
"""

from __future__ import annotations

import dataclasses

from pyrofail.errors import UsageError, check_positive_int
from pyrofail.fit_result import FitResult
from pyrofail.procedures.joint import joint
from pyrofail.training.config import FitConfig, Problem
from pyrofail.zoo import register

__all__ = ["posthoc_self_consistency"]

MAX_SAMPLES = 50_000
VAL_SAMPLES = 1000
# the validation draws come from a stream of their own
VAL_SEED_OFFSET = 1_000_003


def check_options(given: dict) -> dict:
    """The given options, checked (:class:`UsageError` naming the first bad one)."""
    unknown = set(given) - {"samples", "val_samples"}
    if unknown:
        raise UsageError(
            f"posthoc_self_consistency has no option {sorted(unknown)[0]!r}; "
            "choose from: samples, val_samples"
        )
    return {k: check_positive_int(k, v) for k, v in given.items()}


def _options(config: FitConfig) -> dict:
    defaults = {"samples": min(config.steps * config.batch_size, MAX_SAMPLES), "val_samples": VAL_SAMPLES}
    return {**defaults, **check_options(config.procedure_options)}


@register(
    "procedure",
    "posthoc_self_consistency",
    summary="keep a trained decoder fixed and retrain the encoder on the model's own samples (no data)",
    keywords=("self-consistency", "post-hoc", "data-free", "avae"),
    options=("samples", "val_samples"),
    check=check_options,
)
def posthoc_self_consistency(config: FitConfig, problem: Problem) -> FitResult:
    """Train the encoder of ``problem.model`` on draws of the model by the run's objective,
    with the decoder fixed (module docstring)."""
    opts = _options(config)
    model, pretrained = problem.model, None
    if model is None and config.learn_model:
        pretrained = _pretrain(config, problem)
        model, problem = pretrained.model, dataclasses.replace(problem, guide=pretrained.guide)
    if model is None or not hasattr(model, "sample"):
        raise UsageError(
            "procedure='posthoc_self_consistency' needs model=: the trained model whose encoder to retrain"
        )
    if getattr(model, "restarts", None) is not None:
        raise UsageError("model= must be un-batched (one restart); use take_restart first")
    pool = model.sample(opts["samples"], seed=config.seed).x.detach()
    val = model.sample(opts["val_samples"], seed=config.seed + VAL_SEED_OFFSET).x.detach()
    fixed = dataclasses.replace(
        config, learn_model=False, init="random", n_train=int(pool.shape[0]), n_val=int(val.shape[0])
    )
    stage = dataclasses.replace(fixed, procedure="joint")
    result = joint(stage, dataclasses.replace(problem, model=model, x=pool.cpu(), x_val=val.cpu()))
    history = {
        **result.history,
        "posthoc": {"samples": opts["samples"], "val_samples": opts["val_samples"]},
    }
    if pretrained is not None:
        history["pretrained"] = {
            "history": pretrained.history,
            "restarts": pretrained.restarts,
            "selected_restart": pretrained.best,
        }
    return dataclasses.replace(result, history=history, config=fixed.as_dict())


def _pretrain(config: FitConfig, problem: Problem) -> FitResult:
    """The VAE to make self-consistent when none is given: ``joint`` with the plain ELBO on the
    data (no checkpoint: on a resumed run this stage is trained again, with the same seed)."""
    stage = dataclasses.replace(
        config, procedure="joint", procedure_options={}, objective="elbo", objective_options={}
    )
    return joint(stage, dataclasses.replace(problem, objective="elbo", checkpoint=None))
