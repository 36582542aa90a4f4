"""The paper's initialisation: restarts that start from the ground truth.

Yacoby et al. (2020), Section 5: half of the restarts start at the ground truth — the MLP
decoder first regressed onto the true :math:`f` on prior draws of :math:`z`, then the encoder
trained with that decoder held fixed ("the best encoder for it") — and half at random.
"""

from __future__ import annotations

from collections.abc import Callable

import pyro
import torch
from pyro import poutine
from pyro.infer import SVI

from pyrofail.nn import MLP
from pyrofail.optim import FusedAdam
from pyrofail.training.loop import Batches

__all__ = ["ground_truth_target", "pretrain_decoder", "warm_up_encoder"]


def ground_truth_target(truth, latent_dim: int) -> Callable:
    """:math:`z \\mapsto f_{GT}(z_{1:K_{GT}})`: extra latent dimensions are ignored, missing
    ones are set to zero, so a model of any ``K`` can start at the ground truth."""
    k_true = truth.latent_dim

    def target(z):
        if latent_dim >= k_true:
            return truth.mean(z[..., :k_true])
        pad = z.new_zeros(*z.shape[:-1], k_true - latent_dim)
        return truth.mean(torch.cat((z, pad), -1))

    return target


def pretrain_decoder(
    decoder: MLP, target: Callable, mask: torch.Tensor, latent_dim: int, steps: int, lr: float, device
) -> None:
    """Regress the masked restarts of a batched MLP decoder onto ``target`` (mean squared
    error on fresh prior draws each step, cosine-annealed Adam)."""
    params = list(decoder.parameters())
    opt = torch.optim.Adam(params, lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    weight = mask.to(device=device, dtype=torch.get_default_dtype())
    for _ in range(steps):
        z = torch.randn(decoder.restarts, 512, latent_dim, device=device)
        with torch.no_grad():
            y = target(z)
        err = (decoder(z) - y).pow(2).sum(-1).mean(-1)  # (R,)
        opt.zero_grad()
        (err * weight).sum().backward()
        opt.step()
        sched.step()


def pretrain_labelled_decoder(model, truth, mask: torch.Tensor, steps: int, lr: float, device) -> None:
    """Regress the masked restarts of a batched M2 decoder :math:`f_\\theta(z, y)` onto the true
    class curves ``truth.curve(z, y)`` (fresh prior draws of z and uniform labels each step)."""
    opt = torch.optim.Adam(model.decoder.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    weight = mask.to(device=device, dtype=torch.get_default_dtype())
    for _ in range(steps):
        z = torch.randn(model.restarts, 512, model.latent_dim, device=device)
        y = torch.randint(0, model.num_classes, (model.restarts, 512), device=device)
        with torch.no_grad():
            target = truth.curve(z, y)
        err = (model.curve(z, y) - target).pow(2).sum(-1).mean(-1)
        opt.zero_grad()
        (err * weight).sum().backward()
        opt.step()
        sched.step()


def warm_up_encoder(bmodel, bguide, loss, data, mask, steps, lr, batch_size, seed) -> None:
    """Fit the encoders of the masked restarts to their fixed (ground-truth) decoders, on
    ``data`` = ``x`` or ``(x, [y])``."""
    data = data if isinstance(data, tuple) else (data,)
    x = data[0]
    frozen = [p for p in bmodel.parameters() if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    bmodel.train(False)
    model_fn = poutine.block(poutine.mask(bmodel.model, mask=mask.unsqueeze(-1)), hide_types=["param"])
    guide_fn = poutine.mask(bguide, mask=mask.unsqueeze(-1))
    svi = SVI(model_fn, guide_fn, FusedAdam(lr), loss)
    batches = Batches(x.shape[0], batch_size, seed + 2)
    with pyro.validation_enabled(False):
        for step in range(steps):
            idx = batches(step).to(x.device)
            svi.step(*(t[idx] for t in data))
    for p in frozen:
        p.requires_grad_(True)
    bmodel.train(True)
