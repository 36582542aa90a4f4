"""The self-consistent objective against closed forms: the coupling's expectation, the term for
a linear decoder and an affine Gaussian guide, and the stop-gradient on the decoder's output."""

import math

import pyro.distributions as dist
import pytest
import torch

import pyrofail as pf
from pyrofail import zoo
from pyrofail.guides.base import AmortizedGuide
from pyrofail.models import LinearGaussian
from pyrofail.objectives.self_consistent import (
    SelfConsistentELBO,
    consistency_term,
    coupling,
    coupling_given,
)
from pyrofail.training import build
from tests.guides.exact import ExactPosteriorGuide


def test_closed_form_coupling_matches_monte_carlo():
    """E log N(z~; rho z', (1 - rho^2) I) for independent Gaussian z' and z~, against 400k draws."""
    g = torch.Generator().manual_seed(0)
    k, rho = 3, 0.7
    mu, mu_t = torch.randn(k, generator=g), torch.randn(k, generator=g)
    var, var_t = torch.rand(k, generator=g) + 0.1, torch.rand(k, generator=g) + 0.1
    n = 400_000
    z = mu + var.sqrt() * torch.randn(n, k, generator=g)
    z_t = mu_t + var_t.sqrt() * torch.randn(n, k, generator=g)
    c = 1 - rho**2
    draws = dist.Normal(rho * z, math.sqrt(c)).to_event(1).log_prob(z_t).double()
    se = float(draws.std() / math.sqrt(n))
    assert abs(float(coupling(mu, var, mu_t, var_t, rho)) - float(draws.mean())) < 4 * se


def test_paired_coupling_given_z_matches_monte_carlo():
    """E_z~ log N(z~; rho z, (1 - rho^2) I) for a fixed z and Gaussian z~, against 400k draws,
    and the paired term differs from the independent one by rho^2 (var + (z - mu)^2 terms)."""
    g = torch.Generator().manual_seed(1)
    k, rho = 2, 0.9
    z, mu_t = torch.randn(k, generator=g), torch.randn(k, generator=g)
    var_t = torch.rand(k, generator=g) + 0.1
    n = 400_000
    z_t = mu_t + var_t.sqrt() * torch.randn(n, k, generator=g)
    draws = dist.Normal(rho * z, math.sqrt(1 - rho**2)).to_event(1).log_prob(z_t).double()
    se = float(draws.std() / math.sqrt(n))
    assert abs(float(coupling_given(z, mu_t, var_t, rho)) - float(draws.mean())) < 4 * se
    # a point mass at z for q: the independent closed form equals the paired one
    tiny = torch.full((k,), 1e-12)
    assert torch.allclose(coupling(z, tiny, mu_t, var_t, rho), coupling_given(z, mu_t, var_t, rho), atol=1e-6)


def test_paired_term_uses_the_draw_that_made_x_tilde():
    q = dist.Normal(torch.zeros(4, 1), 1.0).to_event(1)
    q_t = dist.Normal(torch.full((4, 1), 0.5), 0.3).to_event(1)
    z = torch.tensor([[-1.0], [0.0], [1.0], [2.0]])
    rho, c = 0.6, 1 - 0.36
    by_hand = -(0.09 + (0.5 - rho * z[:, 0]) ** 2) / (2 * c) - 0.5 * math.log(2 * math.pi * c)
    got = consistency_term(q, q_t, rho, z=z)
    assert torch.allclose(got, by_hand + q_t.entropy(), atol=1e-6)
    with pytest.raises(pf.UsageError, match="pairing='both' is not allowed"):
        SelfConsistentELBO(pairing="both")


class _NotGaussian(AmortizedGuide):
    """The same Gaussian as ``inner`` behind an identity transform: the sampling path."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.latent_dim, self.data_dim, self.restarts = inner.latent_dim, inner.data_dim, None

    def distribution(self, x):
        q = self.inner.distribution(x)
        return dist.TransformedDistribution(q, [dist.transforms.AffineTransform(0.0, 1.0)])


def _hand_term(truth, scale_factor, shift, rho, x):
    r"""E_z[coupling + entropy] for q(z|x) = N(M (x - b) + shift, s^2 C), M = C W^T / sigma^2, and
    x~ = W z + b, so that mu~ = A z + shift with A = M W is Gaussian in z:
    E||mu~ - rho mu||^2 = tr(A S A^T) + ||A mu + shift - rho mu||^2, S = s^2 C = the cov of q."""
    post = truth.posterior(x)
    w, sigma2 = truth.decoder.weight, float(truth.noise_scale) ** 2
    c0 = post.covariance_matrix[0]
    a = c0 @ w.T @ w / sigma2
    cov = c0 * scale_factor**2
    mu = post.loc + shift
    mean_t = mu @ a.T + shift
    k, c = truth.latent_dim, 1 - rho**2
    sq = torch.trace(cov) * (1 + rho**2) + torch.trace(a @ cov @ a.T) + ((mean_t - rho * mu) ** 2).sum(-1)
    entropy = 0.5 * torch.logdet(2 * math.pi * math.e * cov)
    return -sq / (2 * c) - 0.5 * k * math.log(2 * math.pi * c) + entropy


@pytest.mark.parametrize("gaussian", [True, False])
def test_objective_value_matches_hand_computation_for_a_gaussian_guide(gaussian):
    """per_point = ELBO + term: ELBO(x) = log p(x) - KL(q || p(z|x)) and the term by hand."""
    truth = LinearGaussian()
    x = truth.sample(6, seed=1).x
    rho, scale_factor, shift = 0.6, 1.3, 0.2
    exact_guide = ExactPosteriorGuide(truth, scale_factor=scale_factor, shift=shift)
    guide = exact_guide if gaussian else _NotGaussian(exact_guide)
    elbo = truth.marginal().log_prob(x) - torch.distributions.kl_divergence(
        exact_guide.distribution(x), truth.posterior(x)
    )
    expected = elbo + _hand_term(truth, scale_factor, shift, rho, x)
    torch.manual_seed(0)
    est = zoo.objective("self_consistent", rho=rho).per_point(truth, guide, x, num_samples=2000)
    assert torch.all((est.value - expected).abs() < 4 * est.stderr + 1e-4), (est.value, expected)


def test_term_by_sampling_matches_closed_form_for_gaussians():
    n = 20000
    q = dist.Normal(torch.tensor([0.3, -0.2]).expand(n, 2), torch.tensor([0.5, 1.2])).to_event(1)
    q_t = dist.Normal(torch.tensor([-0.1, 0.4]).expand(n, 2), torch.tensor([0.8, 0.3])).to_event(1)
    rho = 0.8
    closed = float(consistency_term(q, q_t, rho)[0])
    wrap = [dist.transforms.AffineTransform(0.0, 1.0)]
    torch.manual_seed(0)
    draws = consistency_term(
        dist.TransformedDistribution(q, wrap), dist.TransformedDistribution(q_t, wrap), rho
    )
    se = float(draws.std() / math.sqrt(n))
    assert abs(float(draws.mean()) - closed) < 4 * se


def test_the_decoder_gets_no_gradient_from_the_term():
    """x~ = sg[mu(z)]: the term trains the encoder only."""
    torch.manual_seed(0)
    truth = zoo.model("figure8")
    model = build.learned_model(1, 2, 0.1, hidden=(8,))
    guide = zoo.guide("mean_field", latent_dim=1, data_dim=2, hidden=(8,))
    loss = SelfConsistentELBO(rho=0.8)
    term = loss._term(model.model, guide, (truth.sample(20, seed=0).x,))
    term.backward()
    assert all(p.grad is None for p in model.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in guide.parameters())


def test_bad_rho_and_discrete_guides_are_usage_errors():
    with pytest.raises(pf.UsageError, match="rho=1.0"):
        zoo.objective("self_consistent", rho=1.0)
    from pyrofail.guides import BernoulliLatentGuide
    from pyrofail.models import HeteroscedasticDecoder

    model = HeteroscedasticDecoder(1, 2, hidden=(4,), prior="bernoulli")
    guide = BernoulliLatentGuide(1, 2, hidden=(4,))
    with pytest.raises(pf.UsageError, match="continuous latent"):
        zoo.objective("self_consistent").loss(model.model, guide, torch.zeros(3, 2))


def test_fit_from_scratch_with_restarts():
    truth = zoo.model("linear_gaussian")
    data = truth.sample(200, seed=0)
    fit = pf.fit(
        data.x,
        truth=truth,
        objective="self_consistent",
        objective_options={"rho": 0.5},
        restarts=2,
        steps=30,
        pretrain_steps=5,
        hidden=(8,),
        eval_every=10,
    )
    assert all(r["diverged_at"] is None for r in fit.restarts)
    assert "rho = 0.5" in fit.objective.trained_on(fit.guide)
