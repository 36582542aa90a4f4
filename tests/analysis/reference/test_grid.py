"""The grid reference against closed forms: linear-Gaussian posteriors and quadratic's symmetry."""

import pytest
import torch
from torch import nn

from pyrofail import zoo
from pyrofail.analysis.reference.grid import build_mesh, grid_posterior
from pyrofail.models import LatentGaussian, LinearGaussian

TOL = 1e-3  # posterior mean and variance: the grid's accuracy target


@pytest.mark.parametrize("k,d,sigma", [(1, 1, 0.05), (1, 2, 0.1), (2, 3, 0.5), (2, 2, 0.2)])
def test_grid_matches_linear_gaussian_posterior(k, d, sigma):
    truth = LinearGaussian(latent_dim=k, data_dim=d, noise_scale=sigma, seed=k + d)
    x = truth.sample(40, seed=0).x.double()
    post = grid_posterior(truth, x, num_draws=500)
    exact = truth.double().posterior(x)
    assert torch.allclose(post.mean, exact.mean, atol=TOL)
    assert torch.allclose(post.cov, exact.covariance_matrix, atol=TOL)
    assert torch.allclose(post.log_px, truth.marginal().log_prob(x), atol=1e-4)
    # draws follow the posterior: their mean within 5 standard errors of the exact one
    se = exact.covariance_matrix.diagonal(dim1=-2, dim2=-1).sqrt() / 500**0.5
    assert ((post.draws.mean(1) - exact.mean).abs() < 5 * se).float().mean() > 0.95


def test_quadratic_posterior_masses_are_exactly_one_half():
    truth = zoo.model("quadratic")
    x = truth.sample(200, seed=0).x
    post = grid_posterior(truth, x, regions=[lambda z: z[:, 0] < 0, lambda z: z[:, 0] > 0])
    assert torch.allclose(post.region_mass, torch.full_like(post.region_mass, 0.5), atol=1e-9)


def test_mesh_refines_where_the_decoder_is_steep():
    class Kink(nn.Module):  # flat, then very steep near z = 1
        def forward(self, z):
            return torch.tanh(40 * (z - 1.0))

    model = LatentGaussian(Kink(), 1, 1, 0.05)
    mesh = build_mesh(model, tol=0.5)
    z = mesh.nodes[:, 0]
    near = ((z - 1).abs() < 0.05).sum()
    far = ((z + 2).abs() < 0.05).sum()
    assert near > 10 * far
    x = torch.tensor([[0.0], [0.5]], dtype=torch.float64)
    post = grid_posterior(model, x)
    # the posterior of x = 0 is a narrow mode at z = 1 (width ~ 0.05 / 40): not missed
    assert abs(float(post.mean[0, 0]) - 1.0) < 1e-3
    assert float(post.cov[0, 0, 0]) < 1e-4


def test_box_widens_when_mass_reaches_the_edge():
    class Far(nn.Module):  # only z near 7 explains x = 0
        def forward(self, z):
            return z - 7.0

    model = LatentGaussian(Far(), 1, 1, 0.3)
    post = grid_posterior(model, torch.zeros(1, 1, dtype=torch.float64))
    exact_mean = 7.0 / (1 + 0.3**2)  # conjugate: mean = 7 / (1 + sigma^2)
    assert float(post.mean[0, 0]) == pytest.approx(exact_mean, abs=1e-3)


def test_grid_refuses_three_latent_dimensions():
    with pytest.raises(ValueError, match="latent_dim <= 2"):
        grid_posterior(LinearGaussian(latent_dim=3, data_dim=3), torch.zeros(1, 3))


def test_figure8_log_marginal_against_a_mesh_four_times_finer():
    """The accuracy the module docstring states: the default mesh against one whose cells may
    change f by a quarter as much (the difference bounds the default mesh's own error, as the
    finer mesh's is smaller still)."""
    truth = zoo.model("figure8")
    x = truth.sample(300, seed=0).x
    coarse, fine = grid_posterior(truth, x), grid_posterior(truth, x, tol=0.125)
    assert fine.mesh_info["nodes"] > 1.5 * coarse.mesh_info["nodes"]
    err = (coarse.log_px - fine.log_px).abs()
    assert float(err.max()) < 2e-3 and float(err.median()) < 1e-4


class Kink(nn.Module):  # flat, then very steep near z = 1
    def forward(self, z):
        return torch.tanh(40 * (z - 1.0))


def test_unresolved_cells_warn_and_carry_their_posterior_mass():
    model = LatentGaussian(Kink(), 1, 1, 0.05)
    x = torch.tensor([[0.0], [-1.0]], dtype=torch.float64)  # on the steep part; on the flat part
    with pytest.warns(UserWarning, match="unresolved"):
        post = grid_posterior(model, x, max_nodes=200)
    assert post.mesh_info["unresolved_cells"] > 0
    # the first posterior sits on the kink, in the cells left coarse; the second far from it
    assert float(post.unresolved_mass[0]) > 0.5 and float(post.unresolved_mass[1]) < 0.1
