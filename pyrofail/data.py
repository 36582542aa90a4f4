"""Data sets: the :class:`Dataset` every process and loader returns, and seeded splits."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pyrofail.errors import check_positive_int

__all__ = ["Dataset", "Splits", "make_splits"]


@dataclass
class Dataset:
    """Data drawn from a process: observations ``x`` ``(N, D)``, true latents ``z`` ``(N, K)``,
    and labels ``y`` ``(N,)`` for processes that have them."""

    x: torch.Tensor
    z: torch.Tensor | None = None
    y: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.x.shape[0]

    def __getitem__(self, index) -> Dataset:
        pick = lambda t: None if t is None else t[index]  # noqa: E731
        return Dataset(pick(self.x), pick(self.z), pick(self.y))


@dataclass
class Splits:
    """Disjoint train / validation / test :class:`Dataset` s of one process."""

    train: Dataset
    val: Dataset
    test: Dataset


def make_splits(process, n_train: int = 5000, n_val: int = 2000, n_test: int = 2000, seed: int = 0) -> Splits:
    """Draw ``n_train + n_val + n_test`` points with ``process.sample(., seed)`` and split them
    in that order. The same seed gives the same data for every K, guide and objective, so
    their numbers compare on identical points."""
    n_train = check_positive_int("n_train", n_train)
    n_val = check_positive_int("n_val", n_val)
    n_test = check_positive_int("n_test", n_test)
    data = process.sample(n_train + n_val + n_test, seed=seed)
    return Splits(
        train=data[:n_train],
        val=data[n_train : n_train + n_val],
        test=data[n_train + n_val :],
    )
