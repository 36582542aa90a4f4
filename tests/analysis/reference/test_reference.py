"""The reference layout and API: dispatch, draws, log density, save and load."""

import numpy as np
import pytest
import torch

from pyrofail import zoo
from pyrofail.analysis.reference import (
    GRID_DRAWS,
    draws,
    load,
    log_density,
    log_px,
    method,
    reference_posterior,
    save,
)
from pyrofail.errors import UsageError
from pyrofail.models import LinearGaussian


@pytest.fixture(scope="module")
def grid_ref():
    truth = zoo.model("figure8")
    x = truth.sample(8, seed=0).x
    return truth, x, reference_posterior(truth, x)


def test_auto_is_the_grid_up_to_two_latents(grid_ref):
    truth, x, ref = grid_ref
    assert method(ref) == "grid"
    z, lw = draws(ref)
    assert z.shape == (8, GRID_DRAWS, 1) and lw.shape == (8, GRID_DRAWS)
    assert torch.allclose(torch.logsumexp(lw, -1), torch.zeros(8, dtype=torch.float64))
    groups = {"posterior", "sample_stats", "observed_data", "marginal", "moments", "diagnostics"}
    assert set(ref.groups()) >= groups


def test_log_density_is_the_model_log_joint_at_the_draws(grid_ref):
    truth, x, ref = grid_ref
    z, _ = draws(ref)
    lp = log_density(ref)
    assert lp.shape == z.shape[:2]
    expected = truth.double().log_joint(z, x.double()[:, None, :])
    assert torch.allclose(lp, expected)


def test_saved_reference_reloads_identically(grid_ref, tmp_path):
    truth, x, ref = grid_ref
    back = load(save(ref, tmp_path / "run" / "reference.nc"))
    for a, b in zip(draws(ref), draws(back)):
        assert torch.equal(a, b)
    assert torch.equal(log_density(ref), log_density(back))
    assert torch.equal(log_px(ref)[0], log_px(back)[0])
    assert method(back) == "grid"
    assert not list(tmp_path.glob("run/.*.tmp"))  # the temporary file is gone


def test_foreign_and_missing_files_are_usage_errors(tmp_path):
    with pytest.raises(UsageError, match="does not exist"):
        load(tmp_path / "none.nc")
    (tmp_path / "text.nc").write_text("not netCDF")
    with pytest.raises(UsageError, match="not a netCDF reference"):
        load(tmp_path / "text.nc")


def test_bad_requests_are_usage_errors():
    truth = zoo.model("quadratic")
    with pytest.raises(UsageError, match="unknown reference method 'mcmc'"):
        reference_posterior(truth, torch.zeros(2, 1), "mcmc")
    with pytest.raises(UsageError, match=r"expected \(N, 1\)"):
        reference_posterior(truth, torch.zeros(2, 3))
    three = LinearGaussian(latent_dim=3, data_dim=3)
    with pytest.raises(UsageError, match="latent_dim <= 2"):
        reference_posterior(three, torch.zeros(2, 3), "grid")


def test_a_reference_without_lp_still_reads(grid_ref, tmp_path):
    """References written before ``lp`` was stored have no log density; consumers fall back."""
    truth, x, ref = grid_ref
    old = ref.copy()
    del old.sample_stats["lp"]
    back = load(save(old, tmp_path / "old.nc"))
    assert log_density(back) is None
    assert np.array_equal(draws(back)[0].numpy(), draws(ref)[0].numpy())
