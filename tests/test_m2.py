"""The M2 model, guide and objectives: against closed forms on a linear model, a hand-written
importance-weighted bound, quadrature on semicircle, masks, and short training runs."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import SVI
from torch import nn

from pyrofail import zoo
from pyrofail.analysis.reference import grid
from pyrofail.analysis.semisupervised import class_log_likelihoods, log_px
from pyrofail.errors import UsageError
from pyrofail.guides.base import AmortizedGuide
from pyrofail.guides.m2 import DELTA_LOGIT, M2Guide
from pyrofail.labels import check_labels, hide_labels
from pyrofail.models.m2 import LabelledLatentGaussian, m2_model
from pyrofail.nn import stack_restarts, take_restart
from pyrofail.objectives.m2 import M2ELBO, M2IWAE, classifier_log_likelihood, enumerated_log_weights
from pyrofail.optim import FusedAdam

LOG_2PI = math.log(2 * math.pi)


class LinearCurves(nn.Module):
    """f(z, y) = a_y z + b_y: the labelled linear-Gaussian model, every bound in closed form."""

    def __init__(self, a, b):
        super().__init__()
        self.register_buffer("a", a)
        self.register_buffer("b", b)

    def forward(self, h):
        z, code = h[..., :1], h[..., 1:]
        return z * (code @ self.a) + code @ self.b


A = torch.tensor([[0.5, -0.3], [-0.4, 0.2]])
B = torch.tensor([[0.2, 0.1], [-0.3, 0.4]])
SIGMA, PI = 0.5, (0.3, 0.7)


@pytest.fixture(params=[True, False], ids=["q(z|x,y)", "q(z|x)"])
def linear(request):
    """The linear model, points with two labels and four unknown, and a guide whose encoder
    reads the label or not (both are valid M2 guides; the bounds must hold for both)."""
    torch.manual_seed(0)
    model = LabelledLatentGaussian(LinearCurves(A, B), 1, 2, 2, SIGMA, class_probs=PI)
    guide = M2Guide(1, 2, hidden=(6,), label_in_encoder=request.param)
    x = torch.randn(6, 2)
    y = torch.tensor([0, 1, -1, -1, -1, -1])
    return model, guide, x, y


def _normal_log_pdf(v, loc, scale):
    return -0.5 * ((v - loc) / scale) ** 2 - math.log(scale) - 0.5 * LOG_2PI


def _exact_elbo(guide, xn, c):
    """ELBO of one point and class, in closed form for a Gaussian q and a linear decoder."""
    q = guide.distribution(xn[None], torch.tensor([c]))
    mu, s = float(q.base_dist.loc[0, 0]), float(q.base_dist.scale[0, 0])
    value = math.log(PI[c]) - 0.5 * (mu**2 + s**2) - 0.5 * LOG_2PI
    for d in range(2):
        a, b = float(A[c, d]), float(B[c, d])
        value -= 0.5 * ((float(xn[d]) - a * mu - b) ** 2 + a**2 * s**2) / SIGMA**2
        value -= math.log(SIGMA) + 0.5 * LOG_2PI
    return value + 0.5 * math.log(2 * math.pi * math.e * s**2)


def _exact_per_point(guide, x, y):
    """U(x) = sum_y q(y|x) [L(x, y) - log q(y|x)] for unlabelled points, L(x, y) for labelled."""
    with torch.no_grad():
        lq = guide.class_logits(x)
        out = []
        for n in range(x.shape[0]):
            if y[n] >= 0:
                out.append(_exact_elbo(guide, x[n], int(y[n])))
            else:
                out.append(
                    sum(
                        float(lq[n, c].exp()) * (_exact_elbo(guide, x[n], c) - float(lq[n, c]))
                        for c in (0, 1)
                    )
                )
    return torch.tensor(out, dtype=torch.float64), lq


def _exact_log_px(x, y):
    """log p(x, y) for labelled points and log p(x) for unlabelled ones (x | y is Gaussian)."""
    per = []
    for c in (0, 1):
        cov = torch.outer(A[c], A[c]) + SIGMA**2 * torch.eye(2)
        per.append(math.log(PI[c]) + dist.MultivariateNormal(B[c], cov).log_prob(x))
    per = torch.stack(per)
    return torch.where(y >= 0, per.gather(0, y.clamp(min=0)[None])[0], torch.logsumexp(per, 0))


# ---- model and guide -----------------------------------------------------------------------


def test_model_trace_with_mixed_labels_matches_log_joint(linear):
    """obs_mask observes the labelled points and samples the others: the trace's log-density
    is log_joint at the labels it ended with."""
    model, _, x, y = linear
    z = torch.randn(6, 1)
    trace = poutine.trace(poutine.condition(model.model, data={"z": z})).get_trace(x, y)
    labels = trace.nodes["y"]["value"]
    assert torch.equal(labels[:2], y[:2])
    assert float(trace.log_prob_sum()) == pytest.approx(float(model.log_joint(z, x, labels).sum()), rel=1e-6)


def test_batched_model_and_guide_are_their_restarts():
    torch.manual_seed(1)
    model = m2_model(1, 2, hidden=(8,), noise_scale=0.2, restarts=3)
    guide = M2Guide(1, 2, family="mean_field", hidden=(8,), restarts=3)
    x, z = torch.randn(5, 2), torch.randn(4, 3, 5, 1)
    y = torch.tensor([0, 1, -1, 1, -1])
    joint = model.log_joint(z, x, y)
    probs = guide.classify(x)
    assert joint.shape == (4, 3, 5) and probs.shape == (3, 5, 2)
    for r in range(3):
        one_model, one_guide = take_restart(model, r), take_restart(guide, r)
        assert torch.allclose(one_model.log_joint(z[:, r], x, y), joint[:, r], atol=1e-5)
        assert torch.allclose(one_guide.classify(x), probs[r], atol=1e-6)
        loc = guide.distribution(x, y.clamp(min=0)).base_dist.loc[r]
        assert torch.allclose(one_guide.distribution(x, y.clamp(min=0)).base_dist.loc, loc, atol=1e-6)
    again = stack_restarts([take_restart(guide, r) for r in range(3)])
    assert torch.allclose(again.classify(x), probs)


def test_guide_puts_a_point_mass_on_known_labels(linear):
    _, guide, x, y = linear
    trace = poutine.trace(guide).get_trace(x, y)
    logits = trace.nodes["y_unobserved"]["fn"].logits
    assert torch.allclose(logits[0], torch.tensor([0.0, DELTA_LOGIT]))
    assert torch.allclose(logits[1], torch.tensor([DELTA_LOGIT, 0.0]))
    assert torch.allclose(logits[2:], guide.class_logits(x)[2:])


def test_bad_input_is_a_usage_error(linear):
    model, guide, x, _ = linear
    with pytest.raises(UsageError, match="labels y range"):
        model.model(x, torch.tensor([0, 1, 2, 0, 0, 0]))
    with pytest.raises(UsageError, match="shape"):
        guide(x, torch.tensor([0.0, 1.0, 0, 0, 0, 0]))
    with pytest.raises(UsageError, match="alpha"):
        M2ELBO(alpha=-1.0)
    with pytest.raises(UsageError, match="gamma"):
        M2IWAE(gamma=0.0)
    with pytest.raises(UsageError, match="D \\+ C"):
        M2Guide(1, 2, family=zoo.guide("mean_field", latent_dim=1, data_dim=2))
    with pytest.raises(UsageError, match="fraction"):
        hide_labels(torch.zeros(4, dtype=torch.long), fraction=1.5)


def test_hide_labels_keeps_a_seeded_fraction():
    y = torch.arange(200) % 2
    a, b = hide_labels(y, 0.1, seed=3), hide_labels(y, 0.1, seed=3)
    assert torch.equal(a, b) and int((a >= 0).sum()) == 20
    assert torch.equal(a[a >= 0], y[a >= 0]) and not torch.equal(a, hide_labels(y, 0.1, seed=4))
    assert torch.equal(check_labels(a, 200, 2), a)


# ---- objectives against exact answers --------------------------------------------------------


def test_enumerated_elbo_equals_the_exact_sum_over_labels(linear):
    """TraceEnum_ELBO with the label enumerated, and per_point, against the closed-form
    J = sum_unl U + gamma sum_lab L + alpha sum_lab log q(y|x): within 4 Monte Carlo standard
    errors (20,000 draws)."""
    model, guide, x, y = linear
    alpha, gamma = 0.7, 2.5
    exact, lq = _exact_per_point(guide, x, y)
    exact_j = float((exact * torch.where(y >= 0, gamma, 1.0)).sum()) + alpha * float(lq[0, 0] + lq[1, 1])
    objective = M2ELBO(num_particles=20000, alpha=alpha, gamma=gamma)
    est = objective.per_point(model, guide, x, 20000, y=y)
    assert torch.all((est.value.double() - exact).abs() < 4 * est.stderr.double() + 1e-5)
    se_j = float((est.stderr.double() * torch.where(y >= 0, gamma, 1.0)).pow(2).sum().sqrt())
    assert -objective.loss(model.model, guide, x, y) == pytest.approx(exact_j, abs=4 * se_j)
    differentiable = objective.differentiable_loss(model.model, guide, x, y)
    assert float(-differentiable.detach()) == pytest.approx(exact_j, abs=4 * se_j)


def test_enumerated_elbo_is_per_restart_when_batched(linear):
    model, guide, x, y = linear
    exact, _ = _exact_per_point(guide, x, y)
    bmodel, bguide = stack_restarts([model] * 3), stack_restarts([guide] * 3)
    est = M2ELBO().per_point(bmodel, bguide, x, 20000, y=y)
    assert est.value.shape == (3, 6)
    assert torch.all((est.value.double() - exact).abs() < 4 * est.stderr.double() + 1e-5)


def test_iwae_equals_a_hand_written_bound(linear):
    """The loss from the same draws, recomputed with explicit loops over classes, particles
    and points."""
    model, guide, x, y = linear
    s, alpha, gamma = 5, 0.3, 2.0
    objective = M2IWAE(num_particles=s, alpha=alpha, gamma=gamma)
    torch.manual_seed(11)
    loss = objective.loss(model.model, guide, x, y)
    torch.manual_seed(11)
    with torch.no_grad():
        z = enumerated_log_weights(model.model, guide, x, y, s).z  # (C, S, N, 1)
        lq_y = guide.class_logits(x)
        total = 0.0
        for n in range(6):
            classes = [int(y[n])] if y[n] >= 0 else [0, 1]
            weights = []
            for c in classes:
                q = guide.distribution(x[n : n + 1], torch.tensor([c])).base_dist
                mu, sd = float(q.loc[0, 0]), float(q.scale[0, 0])
                for i in range(s):
                    zi = float(z[c, i, n, 0])
                    lw = math.log(PI[c]) + _normal_log_pdf(zi, 0.0, 1.0) - _normal_log_pdf(zi, mu, sd)
                    for d in range(2):
                        lw += _normal_log_pdf(float(x[n, d]), float(A[c, d]) * zi + float(B[c, d]), SIGMA)
                    weights.append(lw)
            top = max(weights)
            bound = top + math.log(sum(math.exp(w - top) for w in weights) / s)
            if y[n] >= 0:
                total += gamma * bound + alpha * float(lq_y[n, y[n]])
            else:
                total += bound
    assert loss == pytest.approx(-total, rel=1e-5)


def test_iwae_bound_is_below_log_px_and_tends_to_it(linear):
    """E U_S <= log p(x) (log p(x, y) for labelled points), rising to it with S: the gap, on
    average over points and seeds, shrinks from S = 1 to 10 to 100, and at S = 20,000 is inside
    4 Monte Carlo standard errors."""
    model, guide, x, y = linear
    exact = _exact_log_px(x, y)
    gaps = {}
    for s in (1, 10, 100):
        runs = []
        for seed in range(10):
            torch.manual_seed(seed)
            runs.append(M2IWAE(num_particles=s).per_point(model, guide, x, y=y).value.double())
        gaps[s] = float((exact - torch.stack(runs).mean(0)).mean())
    assert gaps[1] > gaps[10] > gaps[100] > -0.02, gaps
    torch.manual_seed(0)
    big = M2IWAE(num_particles=20000).per_point(model, guide, x, y=y)
    assert torch.all(big.value.double() - exact < 4 * big.stderr.double() + 1e-3)
    assert torch.all((big.value.double() - exact).abs() < 4 * big.stderr.double() + 0.02)


class PosteriorMoments(AmortizedGuide):
    """Test-only q(z | x, y): a Gaussian with the exact posterior mean and 1.5 times the exact
    posterior sd of the truth at label y (quadrature); reads x and onehot(y) like any family."""

    def __init__(self, truth):
        super().__init__()
        self.truth = truth
        self.latent_dim, self.data_dim, self.restarts = 1, 4, None

    def distribution(self, h):
        lead, flat = h.shape[:-1], h.reshape(-1, 4)
        x, y = flat[:, :2], flat[:, 2:].argmax(-1)
        loc, scale = torch.zeros(len(flat)), torch.ones(len(flat))
        for c in (0, 1):
            rows = y == c
            if rows.any():
                post = grid.grid_posterior(self.truth.given_label(c), x[rows])
                loc[rows] = post.mean[:, 0].float()
                scale[rows] = 1.5 * post.cov[:, 0, 0].sqrt().float()
        return dist.Normal(loc.reshape(*lead, 1), scale.reshape(*lead, 1)).to_event(1)


def test_iwae_on_semicircle_against_quadrature():
    """With y summed out, the bound sits below log p(x) by quadrature and closes on it with S."""
    truth = zoo.model("semicircle")
    data = truth.sample(8, seed=1)
    y = data.y.clone()
    y[:5] = -1
    guide = M2Guide(1, 2, family=PosteriorMoments(truth), hidden=(4,))
    per_class = class_log_likelihoods(truth, data.x)
    labelled = per_class.gather(0, y.clamp(min=0)[None])[0] + math.log(0.5)
    exact = torch.where(y >= 0, labelled, log_px(truth, data.x, per_class))
    gaps = {}
    for s, seeds in ((1, 6), (100, 6), (3000, 1)):
        runs, se = [], None
        for seed in range(seeds):
            torch.manual_seed(seed)
            est = M2IWAE(num_particles=s).per_point(truth, guide, data.x, y=y)
            runs.append(float((exact - est.value.double()).mean()))
            se = float(est.stderr.double().pow(2).sum().sqrt() / 8)  # delta method, one run
        gaps[s] = sum(runs) / seeds
        if seeds > 1:
            se = float(torch.tensor(runs).std() / math.sqrt(seeds))
        assert gaps[s] > -4 * se - 1e-3, (s, gaps[s], se)
    assert gaps[1] > gaps[100] and abs(gaps[3000]) < 0.02, gaps


@pytest.mark.parametrize(
    "family, labels",
    [
        ("mean_field", "mixed"),
        ("mean_field", "none"),
        ("mean_field", "x only"),
        ("full_rank", "mixed"),
        ("flow", "mixed"),
        ("mixture", "mixed"),
    ],
)
@pytest.mark.parametrize(
    "objective", [M2ELBO(num_particles=2), M2IWAE(num_particles=3)], ids=["elbo", "iwae"]
)
def test_every_family_trains_batched_with_both_objectives(family, objective, labels):
    """q(z | x, y) from any registered family, batched restarts, labels or none, the encoder
    reading the label or x only: a finite loss, gradients for the decoder and the classifier,
    and per-point values (R, N). (U_S does not involve q(y | x): without labels the IWAE
    objective gives the classifier no gradient.) With x only, q(z | x, y) is the same for both
    labels; reading the label, it is not (each case the other's negative control)."""
    torch.manual_seed(3)
    model = m2_model(1, 2, hidden=(8,), noise_scale=0.1, restarts=2)
    guide = M2Guide(1, 2, family=family, hidden=(8,), restarts=2, label_in_encoder=labels != "x only")
    x = torch.randn(5, 2)
    y = None if labels == "none" else torch.tensor([0, -1, 1, -1, -1])
    loss = objective.differentiable_loss(model.model, guide, x, y)
    loss.backward()
    assert torch.isfinite(loss)
    grads = [p.grad for p in model.parameters()] + [p.grad for p in guide.posterior.parameters()]
    if isinstance(objective, M2ELBO) or y is not None:
        grads += [p.grad for p in guide.classifier.parameters()]
    else:
        assert all(p.grad is None for p in guide.classifier.parameters())
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    batched = objective.per_point(model, guide, x, 4, y=y)
    one = objective.per_point(take_restart(model, 1), take_restart(guide, 1), x, 4, y=y)
    assert batched.value.shape == (2, 5) and one.value.shape == (5,)
    assert torch.isfinite(batched.value).all() and torch.isfinite(batched.stderr).all()
    with torch.no_grad():
        z = torch.randn(2, 5, 1)
        log_q = [guide.distribution(x, torch.full((5,), c)).log_prob(z) for c in (0, 1)]
    assert log_q[0].shape == (2, 5)
    assert bool(torch.equal(log_q[0], log_q[1])) == (labels == "x only"), log_q


# ---- masks and training ------------------------------------------------------------------------


@pytest.mark.parametrize("objective", [M2ELBO(num_particles=2), M2IWAE(num_particles=3)])
def test_masked_restarts_get_no_gradient(objective):
    """pf.fit freezes a restart by masking it (poutine.mask with an (R, 1) mask): every term of
    both objectives, the alpha term included, comes through the traces and honours it."""
    torch.manual_seed(2)
    model = m2_model(1, 2, hidden=(8,), noise_scale=0.1, restarts=2)
    guide = M2Guide(1, 2, hidden=(8,), restarts=2)
    x, y = torch.randn(6, 2), torch.tensor([0, 1, -1, 1, -1, -1])
    mask = torch.tensor([[True], [False]])
    loss = objective.differentiable_loss(
        poutine.mask(model.model, mask=mask), poutine.mask(guide, mask=mask), x, y
    )
    loss.backward()
    for p in list(model.parameters()) + list(guide.parameters()):
        assert p.grad is not None and bool((p.grad[1] == 0).all()) and bool((p.grad[0] != 0).any())
    aux = classifier_log_likelihood(poutine.mask(guide, mask=mask), x, y)
    assert float(aux.detach()) == pytest.approx(
        float(guide.class_logits(x).detach()[0, [0, 1, 3], [0, 1, 1]].sum())
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    "family, objective",
    [("mean_field", M2ELBO()), ("mean_field", M2IWAE(num_particles=5)), ("flow", M2ELBO())],
    ids=["mean_field-elbo", "mean_field-iwae", "flow-elbo"],
)
def test_a_short_training_run_improves_the_objective(family, objective):
    """A hand-written SVI loop over the batched model (two restarts) on semicircle with 10% of
    the labels: the per-point objective on held-out points rises for every restart (100 steps)."""
    truth = zoo.model("semicircle")
    data = truth.sample(300, seed=0)
    y = hide_labels(data.y, 0.1, seed=0)
    pyro.set_rng_seed(0)
    model = m2_model(1, 2, hidden=(16, 16), noise_scale=0.05, restarts=2)
    options = {"base": "gaussian"} if family == "flow" else {}
    guide = M2Guide(1, 2, family=family, hidden=(16, 16), restarts=2, **options)
    held_out = truth.sample(100, seed=1).x

    def score():
        torch.manual_seed(5)
        return objective.per_point(model, guide, held_out, 8).value.mean(-1)

    before = score()
    svi = SVI(model.model, guide, FusedAdam(3e-3), objective)
    gen = torch.Generator().manual_seed(0)
    for _ in range(100):
        idx = torch.randint(0, 300, (50,), generator=gen)
        assert math.isfinite(svi.step(data.x[idx], y[idx]))
    after = score()
    # from a random decoder (about -250 nats a point at sigma = 0.05) to tens of nats
    assert torch.all(after > before + 10), (before, after)
