"""The adapter from Pyro programs to the analysis protocol, against the zoo's classes and exact answers."""

import copy
import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import SVI, Trace_ELBO
from pyro.nn import PyroModule
from pyro.optim import Adam

from pyrofail.analysis import compare
from pyrofail.analysis.reference import idata, log_px, reference_posterior
from pyrofail.errors import UsageError
from pyrofail.guides.mean_field import MeanFieldGuide
from pyrofail.models import Clusters, Figure8
from pyrofail.programs import LatentGaussianProgram, ProgramModel, adapt

F64 = torch.float64


def as_programs(zoo, guide):
    """The zoo model and mean-field guide written as plain Pyro functions with the same weights."""

    def model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample(
                "z", dist.Normal(torch.zeros((), dtype=x.dtype), 1.0).expand([zoo.latent_dim]).to_event(1)
            )
            pyro.sample("x", dist.Normal(zoo.decoder(z), zoo.noise_scale).to_event(1), obs=x)

    def guide_fn(x):
        with pyro.plate("data", x.shape[0]):
            loc, raw = guide.encoder(x).split(guide.latent_dim, -1)
            scale = torch.nn.functional.softplus(raw) + guide.min_scale
            pyro.sample("z", dist.Normal(loc, scale).to_event(1))

    return model, guide_fn


@pytest.mark.parametrize("process", [Figure8, Clusters])
def test_zoo_model_as_pyro_function_has_the_same_reference_and_bias(process):
    zoo = process().double()
    torch.manual_seed(0)
    guide = MeanFieldGuide(1, 2, hidden=(16,)).double()
    x = zoo.sample(20, seed=1).x
    m, g = adapt(*as_programs(zoo, guide), x)
    assert isinstance(m, LatentGaussianProgram) and (m.latent_dim, m.data_dim) == (1, 2)
    ref_zoo, ref = reference_posterior(zoo, x, "grid"), reference_posterior(m, x, "grid")
    # the analysis copies models before .float() or .double(): the copy shares the program, not the buffers
    copy.deepcopy(m).float()
    assert m.noise_scale.dtype == F64
    # the same mesh and integrand: the quadrature agrees to rounding
    assert torch.allclose(log_px(ref)[0], log_px(ref_zoo)[0], atol=1e-6, rtol=0)
    mean = torch.as_tensor(ref.moments["mean"].values)
    assert torch.allclose(mean, torch.as_tensor(ref_zoo.moments["mean"].values), atol=1e-6, rtol=0)
    a, b = compare(zoo, guide, x, ref_zoo), compare(m, g, x, ref)
    # Monte Carlo tolerance: four standard errors of the mean ELBO over the points (1000 draws each)
    with torch.random.fork_rng(), torch.no_grad():
        torch.manual_seed(5)
        q = guide.distribution(x)
        z = q.sample((1000,))
        lw = zoo.log_joint(z, x) - q.log_prob(z)
    tol = 4 * float((lw.var(0) / 1000).sum().sqrt() / x.shape[0])
    for key in ("elbo", "pmo_gap"):
        assert abs(a["model"]["mean"][key] - b["model"]["mean"][key]) < tol, key
    for key in ("log_px", "forward_kl", "mode_mass_error"):
        assert abs(a["model"]["mean"][key] - b["model"]["mean"][key]) < 1e-6, key
    # energy distance: about 0.01 of Monte Carlo error in units of z (analysis.compare)
    assert abs(a["model"]["mean"]["energy_distance"] - b["model"]["mean"]["energy_distance"]) < 0.03


@pytest.mark.parametrize("vectorize", [True, False])
def test_log_joint_and_guide_density_in_every_layout_the_analysis_uses(vectorize):
    zoo = Figure8().double()
    torch.manual_seed(0)
    guide = MeanFieldGuide(1, 2, hidden=(8,)).double()
    x = zoo.sample(6, seed=2).x
    m, g = adapt(*as_programs(zoo, guide), x, vectorize=vectorize)
    assert m.program.vectorized is vectorize and g.program.vectorized is vectorize
    gen = torch.Generator().manual_seed(3)
    layouts = [
        (torch.randn(5, 6, 1, generator=gen, dtype=F64), x),  # draws (S, N, K)
        (torch.randn(6, 1, generator=gen, dtype=F64), x),  # one draw per point
        (torch.randn(7, 1, 1, generator=gen, dtype=F64), x[None]),  # grid nodes (G, 1, K)
        (torch.randn(6, 4, 1, generator=gen, dtype=F64), x[:, None]),  # draws per point (N, S, K)
        (torch.randn(6, 3, 2, 1, generator=gen, dtype=F64), x[:, None, None]),  # KL*'s (N, I, G, K)
        (torch.randn(4, 1, generator=gen, dtype=F64), x[0]),  # one point
    ]
    for z, xx in layouts:
        got, want = m.log_joint(z, xx), zoo.log_joint(z, xx)
        assert got.shape == want.shape and torch.allclose(got, want, atol=1e-10, rtol=0), tuple(z.shape)
    z = torch.randn(5, 6, 1, generator=gen, dtype=F64)
    want = guide.distribution(x).log_prob(z)
    assert torch.allclose(g.distribution(x).log_prob(z), want, atol=1e-10, rtol=0)
    assert torch.allclose(
        g.distribution(x).log_prob(z[:, :1]), guide.distribution(x).log_prob(z[:, :1]), atol=1e-10
    )
    assert tuple(g.distribution(x).sample((3, 2)).shape) == (3, 2, 6, 1)


def two_site_model(x):
    """a ~ N(0, 1), b ~ LogNormal(0, 0.5), x_d | a, b ~ N(a, b^2) for d = 1..D."""
    with pyro.plate("data", x.shape[0]):
        a = pyro.sample("a", dist.Normal(0.0, 1.0))
        b = pyro.sample("b", dist.LogNormal(0.0, 0.5))
        loc, scale = (
            a.unsqueeze(-1).expand(*a.shape, x.shape[-1]),
            b.unsqueeze(-1).expand(*b.shape, x.shape[-1]),
        )
        pyro.sample("x", dist.Normal(loc, scale).to_event(1), obs=x)


def two_site_guide(x):
    with pyro.plate("data", x.shape[0]):
        pyro.sample("a", dist.Normal(0.5 * x.mean(-1), 0.5))
        pyro.sample("b", dist.LogNormal(0.0, 0.4))


def two_site_exact(x):
    r"""log p(x) and E[(a, log b) | x] by 1-D quadrature over s = log b, the a-integral in closed
    form: x | s ~ N(0, e^{2s} I + 1 1^T), a | x, s ~ N(sum x / (D + e^{2s}), .)."""
    s = torch.linspace(-5.0, 5.0, 40001, dtype=F64)
    d = x.shape[-1]
    cov = torch.exp(2 * s)[:, None, None] * torch.eye(d, dtype=F64) + torch.ones(d, d, dtype=F64)
    lik = torch.distributions.MultivariateNormal(torch.zeros(d, dtype=F64), covariance_matrix=cov)
    lj = lik.log_prob(x[:, None, :]) + torch.distributions.Normal(0.0, 0.5).log_prob(s)  # (N, G)
    h = float(s[1] - s[0])
    w = torch.full_like(s, h)
    w[0] = w[-1] = h / 2  # trapezoid
    lpx = torch.logsumexp(lj + w.log(), -1)
    post = torch.exp(lj + w.log() - lpx[:, None])
    mean_a = (post * x.sum(-1, keepdim=True) / (d + torch.exp(2 * s))).sum(-1)
    return lpx, torch.stack([mean_a, (post * s).sum(-1)], -1)


def test_two_latent_sites_one_positive_match_exact_quadrature():
    x = torch.tensor([[0.3, -0.2, 1.1], [2.0, 1.5, 2.6], [-1.0, -0.4, -2.2], [0.0, 0.1, -0.1]], dtype=F64)
    m, g = adapt(two_site_model, two_site_guide, x)
    assert type(m) is ProgramModel and m.latent_dim == 2
    assert [(s.name, s.size, s.support) for s in m.program.layout.sites] == [
        ("a", 1, "Real()"),
        ("b", 1, "GreaterThan(lower_bound=0.0)"),
    ]
    ref = reference_posterior(m, x, "grid", base_width=0.05)
    lpx, mean = two_site_exact(x)
    # measured: 2e-11 nats and 5e-11 in the means (cells of 0.05; 3e-12 with the default 0.02)
    assert torch.allclose(log_px(ref)[0], lpx, atol=1e-8, rtol=0)
    assert torch.allclose(torch.as_tensor(ref.moments["mean"].values), mean, atol=1e-8, rtol=0)
    z, _ = idata.draws(ref)
    assert bool((m.sites(z)["b"] > 0).all())


def test_simplex_site_dirichlet_multinomial_closed_form():
    alpha = torch.tensor([3.0, 4.0, 5.0], dtype=F64)

    def model(x):
        with pyro.plate("data", x.shape[0]):
            theta = pyro.sample("theta", dist.Dirichlet(alpha))
            pyro.sample("x", dist.Multinomial(10, theta), obs=x)

    def exact_guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("theta", dist.Dirichlet(alpha + x))

    # every count at least 1: the posterior's tails on the stick-breaking coordinates fall as
    # exp(-4 |u|) or faster, so the grid's box [-6, 6]^2 loses below 1e-7 of the mass
    x = torch.tensor([[2.0, 3.0, 5.0], [7.0, 1.0, 2.0], [1.0, 1.0, 8.0]], dtype=F64)
    m, g = adapt(model, exact_guide, x)
    assert m.latent_dim == 2  # the stick-breaking coordinates of the 3-simplex
    lbeta = lambda a: torch.lgamma(a).sum(-1) - torch.lgamma(a.sum(-1))  # noqa: E731
    exact = (
        torch.lgamma(torch.tensor(11.0, dtype=F64))
        - torch.lgamma(x + 1).sum(-1)
        + lbeta(alpha + x)
        - lbeta(alpha)
    )
    # cells of 0.05 (the default 0.02 is 6x slower; measured: both agree with the closed form
    # to 1.5e-8 nats)
    ref = reference_posterior(m, x, "grid", base_width=0.05)
    assert torch.allclose(log_px(ref)[0], exact, atol=1e-6, rtol=0)
    theta = m.sites(idata.draws(ref)[0])["theta"]  # (N, S, 3), equally weighted grid draws
    assert torch.allclose(theta.mean(1), (alpha + x) / (alpha.sum() + 10), atol=0.02)
    # the guide is the exact posterior: log p(x, z) - log q(z | x) = log p(x) at every draw
    q = g.distribution(x)
    z = q.sample((50,))
    assert torch.allclose(m.log_joint(z, x) - q.log_prob(z), exact.expand(50, -1), atol=1e-9, rtol=0)


def test_interval_site_beta_bernoulli_closed_form():
    def model(x):
        with pyro.plate("data", x.shape[0]):
            p = pyro.sample("p", dist.Beta(2.0, 3.0))
            pyro.sample("x", dist.Bernoulli(p.unsqueeze(-1).expand(*p.shape, x.shape[-1])).to_event(1), obs=x)

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("p", dist.Beta(1.0 + x.sum(-1), 1.0 + (1 - x).sum(-1)))

    x = torch.tensor([[1.0, 1, 0, 1, 1, 1], [0.0, 0, 0, 0, 1, 0]], dtype=F64)
    m, _ = adapt(model, guide, x)
    heads = x.sum(-1)
    lbeta = lambda a, b: torch.lgamma(a) + torch.lgamma(b) - torch.lgamma(a + b)  # noqa: E731
    exact = lbeta(2 + heads, 3 + 6 - heads) - lbeta(torch.tensor(2.0), torch.tensor(3.0))
    # on u = logit(p) the posterior Beta(3, 8) falls as exp(3 u) only: the default box [-6, 6]
    # would lose 1.8e-6 of its mass, a box of radius 9 below 1e-10
    assert torch.allclose(log_px(reference_posterior(m, x, "grid", radius=9.0))[0], exact, atol=1e-7, rtol=0)


def _plain_guide(x):
    with pyro.plate("data", x.shape[0]):
        pyro.sample("z", dist.Normal(torch.zeros(x.shape[0], 1), 1.0).to_event(1))


def _model(body):
    def model(x):
        body(x)

    return model


def _global(x):
    w = pyro.sample("w", dist.Normal(0.0, 1.0))
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([1]).to_event(1))
        pyro.sample("x", dist.Normal(w * z, 1.0).to_event(1), obs=x)


def _discrete(x):
    with pyro.plate("data", x.shape[0]):
        c = pyro.sample("c", dist.Categorical(torch.ones(2) / 2))
        z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([1]).to_event(1))
        pyro.sample("x", dist.Normal(z + c.unsqueeze(-1), 1.0).to_event(1), obs=x)


def _no_plate(x):
    z = pyro.sample("z", dist.Normal(torch.zeros(x.shape[0], 1), 1.0).to_event(2))
    pyro.sample("x", dist.Normal(z, 1.0).to_event(2), obs=x)


def _wrong_size(x):
    with pyro.plate("data", 100):
        z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([1]).to_event(1))
        pyro.sample("x", dist.Normal(z, 1.0).to_event(1), obs=x)


def _subsampled(x):
    with pyro.plate("data", 1000, subsample_size=x.shape[0]):
        z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([1]).to_event(1))
        pyro.sample("x", dist.Normal(z, 1.0).to_event(1), obs=x)


def _fixed_size(x):
    with pyro.plate("data", 8):
        z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([1]).to_event(1))
        pyro.sample("x", dist.Normal(z, 1.0).to_event(1), obs=x)


def _standard(x):
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([1]).to_event(1))
        pyro.sample("x", dist.Normal(z, 1.0).to_event(1), obs=x)


def _two_latents(x):
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([1]).to_event(1))
        s = pyro.sample("s", dist.LogNormal(0.0, 1.0))
        pyro.sample("x", dist.Normal(z, s.unsqueeze(-1)).to_event(1), obs=x)


def _auxiliary_guide(x):
    with pyro.plate("data", x.shape[0]):
        pyro.sample("aux", dist.Normal(0.0, 1.0))
        pyro.sample("z", dist.Normal(0.0, 1.0).expand([1]).to_event(1))


def _scaled(x):
    with pyro.plate("data", x.shape[0]), poutine.scale(scale=0.5):
        z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([1]).to_event(1))
        pyro.sample("x", dist.Normal(z, 1.0).to_event(1), obs=x)


def _real_guide_for_two(x):
    with pyro.plate("data", x.shape[0]):
        pyro.sample("z", dist.Normal(0.0, 1.0).expand([1]).to_event(1))
        pyro.sample("s", dist.Normal(0.0, 1.0))


@pytest.mark.parametrize(
    "model, guide, words",
    [
        (_global, _plain_guide, ["global latent site 'w'", "data plate 'data'"]),
        (_discrete, _plain_guide, ["discrete local latent site 'c'", "enumeration is not implemented"]),
        (_no_plate, _plain_guide, ["no data plate", "'x'"]),
        (_wrong_size, _plain_guide, ["data plate 'data' has size 100", "N = 8"]),
        (_subsampled, _plain_guide, ["site 'z' is scaled", "subsampling"]),
        (_fixed_size, _plain_guide, ["model fails on 3 rows", "size x.shape[0]"]),
        (_standard, _auxiliary_guide, ["guide site 'aux' is not a latent site", "auxiliary"]),
        (_two_latents, _plain_guide, ["does not sample the model's latent site 's'"]),
        (_two_latents, _real_guide_for_two, ["guide site 's' has support Real()", "GreaterThan"]),
        (_scaled, _plain_guide, ["site 'z' is scaled"]),
    ],
)
def test_refusals_are_one_line_naming_the_site(model, guide, words):
    x = torch.randn(8, 1)
    with pytest.raises(UsageError) as err:
        adapt(model, guide, x)
    msg = str(err.value)
    assert "\n" not in msg
    for w in words:
        assert w in msg, msg


class _Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.dec = torch.nn.Linear(1, 4)
        self.enc = torch.nn.Linear(4, 2)

    def model(self, x, scale=1.0):
        pyro.module("dec", self.dec)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(x.shape[0], 1), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(self.dec(z), scale).to_event(1), obs=x.reshape(-1, 4))

    def guide(self, x, scale=1.0):
        pyro.module("enc", self.enc)
        with pyro.plate("data", x.shape[0]):
            loc, raw = self.enc(x.reshape(-1, 4)).split(1, -1)
            pyro.sample("z", dist.Normal(loc, raw.exp()).to_event(1))


def test_images_keyword_arguments_and_the_weights_left_as_they_were():
    net = _Net()
    x = torch.randn(5, 2, 2, generator=torch.Generator().manual_seed(0))  # images, flattened by the model
    m, g = adapt(net.model, net.guide, x, kwargs={"scale": 0.3})
    assert isinstance(m, LatentGaussianProgram) and (m.latent_dim, m.data_dim) == (1, 4)
    assert torch.allclose(m.noise_scale, torch.full((4,), 0.3))
    xf = x.reshape(5, 4)
    z = torch.randn(3, 5, 1, requires_grad=True)
    with torch.no_grad():
        f = net.dec(z)
    want = dist.Normal(0.0, 1.0).log_prob(z).sum(-1) + dist.Normal(f, 0.3).log_prob(xf).sum(-1)
    got = m.log_joint(z, xf)
    assert torch.allclose(got, want, atol=1e-5)
    # gradients reach z, never the user's weights
    (got.sum() + g.distribution(xf).log_prob(z).sum()).backward()
    assert z.grad is not None
    assert all(p.grad is None and p.requires_grad for p in net.parameters())
    assert set(pyro.get_param_store().keys()) == {"dec$$$weight", "dec$$$bias", "enc$$$weight", "enc$$$bias"}


class _Decoder(PyroModule):
    """A PyroModule model: its weights live in the param store under their module names."""

    def __init__(self):
        super().__init__()
        self.lin = PyroModule[torch.nn.Linear](1, 2)

    def forward(self, x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(x.shape[0], 1), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(self.lin(z), 0.5).to_event(1), obs=x)


def test_pyro_module_trained_with_svi_is_used_as_trained():
    decoder = _Decoder()
    enc = torch.nn.Linear(2, 2)

    def guide(x):
        pyro.module("enc", enc)
        with pyro.plate("data", x.shape[0]):
            loc, raw = enc(x).split(1, -1)
            pyro.sample("z", dist.Normal(loc, raw.exp()).to_event(1))

    x = torch.randn(30, 2, generator=torch.Generator().manual_seed(0)) + torch.tensor([2.0, -1.0])
    svi = SVI(decoder, guide, Adam({"lr": 0.05}), Trace_ELBO())
    for _ in range(20):
        svi.step(x)
    trained = {k: v.detach().clone() for k, v in pyro.get_param_store().items()}
    m, _ = adapt(decoder, guide, x)
    assert isinstance(m, LatentGaussianProgram)
    z = torch.randn(4, 30, 1)
    w, b = trained["lin.weight"], trained["lin.bias"]
    want = dist.Normal(0.0, 1.0).log_prob(z).sum(-1) + dist.Normal(z @ w.T + b, 0.5).log_prob(x).sum(-1)
    assert torch.allclose(m.log_joint(z, x), want, atol=1e-5)
    assert all(torch.equal(v, trained[k]) for k, v in pyro.get_param_store().items())


def test_a_program_that_does_not_broadcast_runs_flat_with_the_same_numbers():
    zoo = Figure8().double()

    def model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(x.shape[0], 1, dtype=x.dtype), 1.0).to_event(1))
            f = zoo.decoder(z.reshape(x.shape[0], 1))  # a view to (N, K): no room for a draws dim
            pyro.sample("x", dist.Normal(f, zoo.noise_scale).to_event(1), obs=x)

    x = zoo.sample(4, seed=0).x
    m, _ = adapt(model, _plain64, x)
    assert m.program.vectorized is False
    z = torch.randn(6, 4, 1, dtype=F64)
    assert torch.allclose(m.log_joint(z, x), zoo.log_joint(z, x), atol=1e-10, rtol=0)
    assert torch.allclose(m.log_joint(z[:, :1], x), zoo.log_joint(z[:, :1], x), atol=1e-10, rtol=0)


def _plain64(x):
    with pyro.plate("data", x.shape[0]):
        pyro.sample("z", dist.Normal(torch.zeros(x.shape[0], 1, dtype=x.dtype), 1.0).to_event(1))


def test_bad_arguments_are_refused():
    with pytest.raises(UsageError, match="expected \\(N, ...\\)"):
        adapt(_standard, _plain_guide, torch.zeros(3))
    with pytest.raises(UsageError, match="vectorize"):
        adapt(_standard, _plain_guide, torch.zeros(3, 1), vectorize="yes")
    m, _ = adapt(_standard, _plain_guide, torch.zeros(3, 1))
    assert math.isclose(
        float(m.log_joint(torch.zeros(1), torch.zeros(1))), -math.log(2 * math.pi), rel_tol=1e-6
    )
