"""The mixture family's gradients against closed forms and quadrature.

* The implicit reparameterisation gradient of ``MixtureOfDiagNormals.rsample`` matches the
  exact gradient of :math:`\\mathbb E_q[f(z)]` for a polynomial :math:`f`, whose expectation
  under a Gaussian mixture is closed-form, in one and in two dimensions (the second exercises
  the dependence of :math:`z_2` on :math:`z_1`).
* The stratified ELBO, run through Pyro on a one-dimensional model, has the value and the
  gradient of the ELBO computed by quadrature; the stratified IWAE bound lies between the ELBO
  and :math:`\\log p(x)` and approaches :math:`\\log p(x)` as :math:`S` grows.

Tolerances are several Monte Carlo standard errors of the estimates at the sample sizes used
(float64 throughout, fixed seeds).
"""

import math

import pyro
import pytest
import torch
from pyro import poutine
from pyro.infer import Trace_ELBO

import pyrofail as pf
from pyrofail.guides.mixture import MixtureOfDiagNormals
from pyrofail.objectives import ELBO, IWAE, stratified


@pytest.fixture
def float64():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def _polynomial_expectation(locs, scales, logits, a, b):
    r""":math:`\mathbb E[a \cdot z + b \cdot z^2 + z_1 z_K]` under the mixture, exactly."""
    w = logits.softmax(-1).unsqueeze(-1)
    first = (w * locs).sum(-2)
    second = (w * (locs**2 + scales**2)).sum(-2)
    cross = (w[..., 0] * locs[..., 0] * locs[..., -1]).sum(-1)
    if locs.shape[-1] == 1:  # z_1 z_K is z^2 there
        cross = second[..., 0]
    return (a * first).sum(-1) + (b * second).sum(-1) + cross


@pytest.mark.parametrize("k", [1, 2])
def test_implicit_gradients_match_the_closed_form(float64, k):
    torch.manual_seed(0)
    locs = torch.randn(3, k, requires_grad=True)
    scales = (torch.rand(3, k) + 0.3).requires_grad_()
    logits = torch.randn(3, requires_grad=True)
    a, b = torch.randn(k), torch.randn(k)
    exact = torch.autograd.grad(_polynomial_expectation(locs, scales, logits, a, b), (locs, scales, logits))
    z = MixtureOfDiagNormals(locs, scales, logits).rsample((400_000,))
    f = (a * z).sum(-1) + (b * z**2).sum(-1) + z[:, 0] * z[:, -1]
    estimate = torch.autograd.grad(f.mean(), (locs, scales, logits))
    for e, m in zip(exact, estimate):
        assert torch.allclose(m, e, atol=0.02), (m, e)


def test_samples_and_strata_have_the_mixture_distribution(float64):
    torch.manual_seed(1)
    locs, scales, logits = torch.randn(4, 3, 2), torch.rand(4, 3, 2) + 0.2, torch.randn(4, 3)
    q = MixtureOfDiagNormals(locs, scales, logits)
    z = q.sample((200_000,))
    assert torch.allclose(z.mean(0), q.mean, atol=0.02)
    assert torch.allclose(z.var(0), q.variance, atol=0.03)
    strata = q.rsample_strata((5,))
    assert strata.shape == (5, 3, 4, 2)
    # stratum c of point n is drawn from component c of point n
    one = q.rsample_strata((100_000,))
    assert torch.allclose(one.mean(0), locs.movedim(-2, 0), atol=0.02)
    assert torch.allclose(one.std(0), scales.movedim(-2, 0), atol=0.02)


# ---- the stratified objectives on a one-dimensional model, against quadrature ------------

GRID = torch.linspace(-9.0, 9.0, 36_001, dtype=torch.float64)


def _problem():
    """quadratic with a broad likelihood (sigma = 0.1), three points, a fixed random mixture
    of two components."""
    truth = pf.zoo.model("quadratic", noise_scale=0.1).double()
    x = torch.tensor([[0.02], [0.1], [0.2]])
    torch.manual_seed(2)
    guide = pf.zoo.guide("mixture", latent_dim=1, data_dim=1, hidden=(), components=2).double()
    with torch.no_grad():
        for p in guide.parameters():
            p.add_(0.5 * torch.randn_like(p))
        # components wider than the posterior (sd about 1), so the importance weights are
        # bounded and their standard errors honest
        guide.encoder.biases[-1][2:4] += 1.5
    return truth, guide, x


def _quadrature(truth, guide, x):
    """Per-point ELBO and log p(x) by the trapezoidal rule on ``GRID``."""
    q = guide.distribution(x)
    z = GRID.reshape(-1, 1, 1)
    log_q = q.log_prob(z)  # (G, N)
    log_joint = truth.log_joint(z, x)
    dz = GRID[1] - GRID[0]
    elbo = torch.trapezoid(log_q.exp() * (log_joint - log_q), dx=dz, dim=0)
    log_px = torch.logsumexp(log_joint, 0) + dz.log()
    return elbo, log_px


def test_stratified_elbo_has_the_value_and_gradient_of_the_elbo(float64):
    truth, guide, x = _problem()
    params = list(guide.parameters())
    exact_elbo, _ = _quadrature(truth, guide, x)
    exact = torch.autograd.grad(-exact_elbo.sum(), params)
    s = 20_000
    pyro.set_rng_seed(3)
    loss = ELBO(num_particles=s).differentiable_loss(truth.model, guide, x)
    pyro.set_rng_seed(4)
    with torch.no_grad():
        log_w, log_pi = stratified.log_weights(truth.model, guide, (x,), {}, s)
    per_point = stratified.selbo(log_w, log_pi)
    se = ((log_pi.exp() ** 2 * log_w.var(0)).sum(0) / s).sqrt()
    # the ELBO object's loss and the estimator on other draws both hit the quadrature ELBO
    total = float(exact_elbo.detach().sum())
    assert loss.item() == pytest.approx(-total, abs=4 * float(se.pow(2).sum().sqrt()))
    assert ((per_point - exact_elbo.detach()).abs() < 4 * se).all() and (se < 0.02).all()
    estimate = torch.autograd.grad(loss, params)
    for e, m in zip(exact, estimate):
        assert torch.allclose(m, e, atol=0.03, rtol=0.03), (m, e)


def test_stratified_iwae_lies_between_the_elbo_and_the_log_marginal(float64):
    truth, guide, x = _problem()
    reps = 2000
    with torch.no_grad():
        elbo, log_px = _quadrature(truth, guide, x)
        pyro.set_rng_seed(4)
        mean_bound = {}
        for s in (1, 10):
            log_w, log_pi = stratified.log_weights(truth.model, guide, (x,), {}, s * reps)
            draws = stratified.siwae(log_w.unflatten(0, (reps, s)).movedim(0, -1), log_pi.unsqueeze(-1))
            mean_bound[s] = draws.mean(-1)  # E[SIWAE_S] to within about 0.01
        log_w, log_pi = stratified.log_weights(truth.model, guide, (x,), {}, 40_000)
        many = stratified.siwae(log_w, log_pi)
        # delta-method error of log sum_c pi_c mean_s w_sc, the strata independent
        w = (log_w - log_px).exp()
        se = ((log_pi.exp() ** 2 * w.var(0)).sum(0) / 40_000).sqrt() / (many - log_px).exp()
    # one sample per component already beats the ELBO on average; more approach log p(x)
    assert (mean_bound[1] > elbo + 0.02).all()
    assert (mean_bound[10] > mean_bound[1] + 0.02).all()
    assert (mean_bound[10] < log_px).all()
    assert ((many - log_px).abs() < 4 * se).all() and (se < 0.02).all()
    # and the objective reports minus its sum
    pyro.set_rng_seed(4)
    assert IWAE(num_particles=4000).loss(truth.model, guide, x) == pytest.approx(
        -log_px.sum().item(), abs=0.03
    )


def test_only_stratified_guides_take_the_stratified_path():
    mixture = pf.zoo.guide("mixture", latent_dim=1, data_dim=1)
    gaussian = pf.zoo.guide("mean_field", latent_dim=1, data_dim=1)
    masked = poutine.mask(mixture, mask=torch.tensor(True))
    assert stratified.is_stratified(mixture) and stratified.is_stratified(masked)
    assert not stratified.is_stratified(gaussian)
    assert not stratified.is_stratified(pf.zoo.model("quadratic").model)


def test_a_plain_pyro_elbo_trains_the_mixture_through_its_implicit_gradients():
    truth = pf.zoo.model("quadratic")
    guide = pf.zoo.guide("mixture", latent_dim=1, data_dim=1, hidden=(8,))
    x = truth.sample(20, seed=0).x
    loss = Trace_ELBO().differentiable_loss(truth.model, guide, x)
    grads = torch.autograd.grad(loss, list(guide.parameters()))
    assert all(torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads)
    assert math.isfinite(loss.item())
