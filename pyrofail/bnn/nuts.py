r"""The reference: Pyro's NUTS over all weights and all training latents of a BNN+LV.

One chain of the No-U-Turn sampler (Hoffman & Gelman 2014; Pyro's multinomial variant) runs on
the potential :math:`U(W, z) = -\log p(W, z, y \mid x)` (:meth:`BNNLV.log_joint
<pyrofail.bnn.network.BNNLV.log_joint>`), :math:`P + N` coordinates, with a diagonal mass
matrix adapted during warm-up. The chain starts from
:meth:`BNNLV.initial_weights <pyrofail.bnn.network.BNNLV.initial_weights>` and :math:`z = 0`.

What it does not promise: a BNN posterior is multimodal (at least the hidden units'
permutations and sign flips), and one chain explores the neighbourhood of one mode, so "the
reference" here means asymptotically exact within the region the chain visits, not a sample of
every mode. Its cost grows with :math:`N` (a gradient is :math:`O(N P)`) and with the tree
depth the warm-up settles on; ``info`` records the time, the gradient evaluations, the adapted
step size and the divergences.
"""

from __future__ import annotations

import time

import torch
from pyro.infer import MCMC, NUTS

from pyrofail.bnn.network import BNNLV
from pyrofail.errors import check_positive_int

__all__ = ["nuts_posterior"]


def nuts_posterior(
    network: BNNLV,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    seed: int = 0,
    num_draws: int = 500,
    warmup: int = 500,
    max_tree_depth: int = 8,
    target_accept: float = 0.8,
) -> dict:
    r"""``num_draws`` joint draws ``{"w": (S, P), "z": (S, N), "z_mean": (N,), "info": {...}}``
    from :math:`p(W, z \mid x, y)` by NUTS after ``warmup`` adaptation steps, in the units of
    ``x`` and ``y`` (the caller standardises).

    Example:
        >>> net = BNNLV(hidden=(2,))
        >>> out = nuts_posterior(net, torch.zeros(4, 1), torch.zeros(4), num_draws=5, warmup=5)
        >>> out["w"].shape, out["z"].shape
        (torch.Size([5, 9]), torch.Size([5, 4]))
    """
    num_draws = check_positive_int("num_draws", num_draws)
    warmup = check_positive_int("warmup", warmup, minimum=0)
    max_tree_depth = check_positive_int("max_tree_depth", max_tree_depth)
    evaluations = [0]

    def potential(params):
        evaluations[0] += 1
        return -network.log_joint(params["w"], params["z"], x, y)

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        gen = torch.Generator().manual_seed(int(seed))
        init = {"w": network.initial_weights(gen).to(x.dtype), "z": x.new_zeros(x.shape[0])}
        kernel = NUTS(
            potential_fn=potential,
            adapt_step_size=True,
            adapt_mass_matrix=True,
            full_mass=False,
            max_tree_depth=max_tree_depth,
            target_accept_prob=target_accept,
        )
        mcmc = MCMC(
            kernel, num_samples=num_draws, warmup_steps=warmup, initial_params=init, disable_progbar=True
        )
        start = time.perf_counter()
        mcmc.run()
        seconds = time.perf_counter() - start
        draws = mcmc.get_samples()
        divergences = mcmc.diagnostics()["divergences"]["chain 0"]
    info = {
        "seconds": seconds,
        "gradient_evaluations": evaluations[0],
        "step_size": float(kernel.step_size),
        "divergences": len(divergences),
        "warmup": warmup,
        "num_draws": num_draws,
        "max_tree_depth": max_tree_depth,
    }
    return {"w": draws["w"], "z": draws["z"], "z_mean": draws["z"].mean(0), "info": info}
