"""Bernoulli p(x|z): the BCE decoder, exact on binarised data (the standard for binary MNIST)."""

from __future__ import annotations

import torch
from torch import Tensor

from vaelab.model import elbo
from vaelab.model.likelihoods.base import Likelihood


class Bernoulli(Likelihood):
    """Bernoulli(x; sigmoid(logits)), one logit per value.

    On grey levels in [0, 1] the same score is the unnormalised "continuous Bernoulli" most VAE
    code trains on; it is a true log-probability only for binary ``x``, hence ``data="binary"``.
    """

    params_per_value = 1
    data = "binary"

    def __init__(self) -> None:
        # declared so build() sees a part without options (nn.Module's own takes **kwargs)
        super().__init__()

    def log_prob(self, x: Tensor, params: Tensor) -> Tensor:
        return elbo.bernoulli_log_prob(x, params)

    def mean(self, params: Tensor) -> Tensor:
        return torch.sigmoid(params)

    def sample(self, params: Tensor) -> Tensor:
        return torch.bernoulli(self.mean(params))
