"""Convolutional encoder/decoder (DCGAN-style), for 64×64×3 faces and also 28×28 digits.

Each stride-2 layer halves the side; the encoder halves while the side stays even and
at least 8, using the first ``len`` entries of ``channels``; the decoder mirrors it with
transposed convolutions, so the output shape equals the input shape exactly.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def downsampling_plan(side: int, channels: tuple[int, ...]) -> list[int]:
    """The channel counts actually used for an input of this side (28 → 2 layers, 64 → 4)."""
    used = []
    for c in channels:
        if side % 2 or side < 8:
            break
        used.append(c)
        side //= 2
    if not used:
        raise ValueError(f"conv net needs an even image side of at least 8, got {side}")
    return used


def _block(conv: nn.Module, channels: int) -> nn.Sequential:
    return nn.Sequential(conv, nn.BatchNorm2d(channels), nn.LeakyReLU(0.2, inplace=True))


class ConvEncoder(nn.Module):
    def __init__(self, image_shape: tuple[int, int, int], latent_dim: int, channels=(32, 64, 128, 256)):
        super().__init__()
        c_in, side, _ = image_shape
        plan = downsampling_plan(side, tuple(channels))
        layers = []
        for c in plan:
            layers.append(_block(nn.Conv2d(c_in, c, 4, stride=2, padding=1, bias=False), c))
            c_in = c
        self.features = nn.Sequential(*layers, nn.Flatten())
        flat = c_in * (side // 2 ** len(plan)) ** 2
        self.head = nn.Linear(flat, 2 * latent_dim)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        mu, logvar = self.head(self.features(x)).chunk(2, dim=1)
        return mu, logvar


class ConvDecoder(nn.Module):
    def __init__(self, image_shape: tuple[int, int, int], latent_dim: int, channels=(32, 64, 128, 256)):
        super().__init__()
        c_out, side, _ = image_shape
        plan = downsampling_plan(side, tuple(channels))
        self.start_shape = (plan[-1], side // 2 ** len(plan), side // 2 ** len(plan))
        self.fc = nn.Sequential(
            nn.Linear(latent_dim, plan[-1] * self.start_shape[1] ** 2),
            nn.LeakyReLU(0.2, inplace=True),
        )
        layers = []
        for c_from, c_to in zip(plan[::-1], plan[-2::-1], strict=False):
            layers.append(_block(nn.ConvTranspose2d(c_from, c_to, 4, 2, 1, bias=False), c_to))
        layers.append(nn.ConvTranspose2d(plan[0], c_out, 4, stride=2, padding=1))
        self.net = nn.Sequential(*layers)

    def forward(self, z: Tensor) -> Tensor:
        return self.net(self.fc(z).view(-1, *self.start_shape))


def use_channels_last(model: nn.Module) -> nn.Module:
    """Store conv weights, and feed each :class:`ConvEncoder` its images, in NHWC layout.

    Tensor-core convolutions (cuDNN, bf16/fp16) run in NHWC; in the default NCHW layout every
    conv pays two transposes. In place; the parameters' values and names are unchanged.
    """
    model.to(memory_format=torch.channels_last)
    for m in model.modules():
        if isinstance(m, ConvEncoder):
            m.register_forward_pre_hook(_nhwc_input)
    return model


def _nhwc_input(module: nn.Module, args: tuple) -> tuple:
    return (args[0].contiguous(memory_format=torch.channels_last), *args[1:])
