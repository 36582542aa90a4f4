r"""Bayesian neural networks with latent input noise (BNN+LV) and their non-identifiability.

The model (Depeweg et al. 2018, "Decomposition of uncertainty in Bayesian deep learning"):
:math:`y = f_W(x, z) + \varepsilon`, :math:`W \sim \mathcal N(0, s_w^2 I)`,
:math:`z_n \sim \mathcal N(0, s_z^2)`, :math:`\varepsilon \sim \mathcal N(0, \sigma^2)`
(:mod:`~pyrofail.bnn.network`). Explanatory power can move between the weights and the
per-point input noise while the training data are fit equally well (Yacoby, Pan &
Doshi-Velez, JMLR 2022, arXiv:1911.00569); this package fits the model three ways
(:func:`infer`: NUTS, mean-field VI, and VI with a penalty on the dependence between inputs and
inferred noise, this project's reading of the paper's mitigation,
:mod:`~pyrofail.bnn.noise_constrained`), measures prediction and that dependence
(:func:`evaluate`), and compares them on the ``"regression"`` zoo (:func:`experiment`; on a
data set, over K cross-validation folds with every point tested once: :func:`cross_validate`).

Example:
    >>> import torch, pyrofail.bnn as bnn
    >>> x = torch.linspace(-2, 2, 40)[:, None]; y = 2 * x[:, 0]
    >>> post = bnn.infer(x, y, inference="mean_field", hidden=(8,), steps=50, num_draws=20)
    >>> ev = bnn.evaluate(post, x, y, num_z=5)
    >>> isinstance(ev["test_ll"].mean, float)
    True
"""

from pyrofail.bnn.crossval import CrossValidation, cross_validate, format_folds
from pyrofail.bnn.experiment import Experiment, experiment, format_table
from pyrofail.bnn.hsic import gaussian_gram, hsic_biased, hsic_jackknife, hsic_unbiased, median_bandwidth
from pyrofail.bnn.inference import METHODS, infer
from pyrofail.bnn.metrics import Estimate, Evaluation, dependence_r2, evaluate
from pyrofail.bnn.network import BNNLV
from pyrofail.bnn.posterior import BNNPosterior, Scaling

__all__ = [
    "BNNLV",
    "METHODS",
    "BNNPosterior",
    "CrossValidation",
    "Estimate",
    "Evaluation",
    "Experiment",
    "Scaling",
    "cross_validate",
    "dependence_r2",
    "evaluate",
    "experiment",
    "infer",
    "format_folds",
    "format_table",
    "gaussian_gram",
    "hsic_biased",
    "hsic_jackknife",
    "hsic_unbiased",
    "median_bandwidth",
]
