"""Decoder likelihoods p(x|z): from the decoder's raw output to log-probability and mean image.

The decoder network always emits unconstrained logits, one per pixel; a likelihood maps
them to the data range [0, 1] (via a sigmoid) and scores data under its distribution with
the functions of :mod:`vaelab.elbo`. The learned σ of the calibrated Gaussian decoder is a
parameter here, so it is trained and checkpointed with the model.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from vaelab import elbo

LIKELIHOODS = ("gaussian", "bernoulli")


class GaussianLikelihood(nn.Module):
    """N(x; sigmoid(logits), σ² I), σ fixed (scaled-MSE decoder) or one learned scalar."""

    def __init__(self, sigma: float = 0.1, learn_sigma: bool = False):
        super().__init__()
        log_sigma = torch.tensor(math.log(sigma))
        if learn_sigma:
            self.log_sigma = nn.Parameter(log_sigma)
        else:
            self.register_buffer("log_sigma", log_sigma)

    def mean(self, logits: Tensor) -> Tensor:
        return torch.sigmoid(logits)

    def log_prob(self, x: Tensor, logits: Tensor) -> Tensor:
        return elbo.gaussian_log_prob(x, self.mean(logits), self.log_sigma)

    def sample(self, logits: Tensor) -> Tensor:
        return self.mean(logits) + self.log_sigma.exp() * torch.randn_like(logits)

    @property
    def sigma(self) -> float:
        return float(self.log_sigma.detach().exp())


class BernoulliLikelihood(nn.Module):
    """Bernoulli(x; sigmoid(logits)): the BCE decoder, standard for (binarised) MNIST."""

    def mean(self, logits: Tensor) -> Tensor:
        return torch.sigmoid(logits)

    def log_prob(self, x: Tensor, logits: Tensor) -> Tensor:
        return elbo.bernoulli_log_prob(x, logits)

    def sample(self, logits: Tensor) -> Tensor:
        return torch.bernoulli(self.mean(logits))


def build_likelihood(name: str, sigma: float = 0.1, learn_sigma: bool = False) -> nn.Module:
    if name == "gaussian":
        return GaussianLikelihood(sigma=sigma, learn_sigma=learn_sigma)
    if name == "bernoulli":
        return BernoulliLikelihood()
    raise ValueError(f"unknown likelihood {name!r}; valid: {', '.join(LIKELIHOODS)}")
