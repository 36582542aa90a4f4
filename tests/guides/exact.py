"""A test-only guide whose distribution is the exact linear-Gaussian posterior."""

import pyro.distributions as dist

from pyrofail.guides.base import AmortizedGuide


class ExactPosteriorGuide(AmortizedGuide):
    def __init__(self, process, scale_factor: float = 1.0, shift: float = 0.0):
        super().__init__()
        self.process = process
        self.latent_dim, self.data_dim = process.latent_dim, process.data_dim
        self.restarts = None
        self.scale_factor, self.shift = scale_factor, shift

    def distribution(self, x):
        post = self.process.posterior(x)
        return dist.MultivariateNormal(post.loc + self.shift, scale_tril=post.scale_tril * self.scale_factor)
