"""Fully connected encoder/decoder (the pytorch/examples VAE: 784-400-20 by default)."""

from __future__ import annotations

import math

from torch import Tensor, nn


def _mlp(sizes: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class MLPEncoder(nn.Module):
    def __init__(self, image_shape: tuple[int, ...], latent_dim: int, hidden_dims=(400,)):
        super().__init__()
        self.net = _mlp([math.prod(image_shape), *hidden_dims, 2 * latent_dim])

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        mu, logvar = self.net(x.flatten(start_dim=1)).chunk(2, dim=1)
        return mu, logvar


class MLPDecoder(nn.Module):
    def __init__(self, image_shape: tuple[int, ...], latent_dim: int, hidden_dims=(400,)):
        super().__init__()
        self.image_shape = tuple(image_shape)
        self.net = _mlp([latent_dim, *reversed(hidden_dims), math.prod(image_shape)])

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z).view(-1, *self.image_shape)
