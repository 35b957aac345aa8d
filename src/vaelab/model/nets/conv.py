"""Convolutional encoder/decoder (DCGAN-style), for 64×64×3 faces and also 28×28 digits.

Each stride-2 layer halves the sides; the encoder halves while every side stays even and at
least 8, using the first entries of ``channels``; the decoder mirrors it with transposed
convolutions, so its output has exactly the shape asked for. Also the image encoder/decoder
wrappers and the NHWC switch that the residual net reuses.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from vaelab.errors import UserError
from vaelab.model.nets.base import Net
from vaelab.model.nets.mlp import positive_ints, shape_of


def image_shape(owner: str, shape: int | Sequence[int]) -> tuple[int, int, int]:
    """``shape`` as (C, H, W), or a :class:`UserError`: a conv net has no meaning for vectors."""
    shape = shape_of(shape)
    if len(shape) != 3:
        raise UserError(
            f"{owner} is a convolutional net and needs image shapes (C, H, W), but was asked for the "
            f"shape {shape}. Use an MLP (net=mlp, vaelab.model.nets.mlp.MLP) for vector inputs or "
            "outputs, e.g. between the latent layers of a hierarchical VAE."
        )
    return shape


def downsampling_plan(sides: Sequence[int], channels: Sequence[int]) -> list[int]:
    """The channel counts actually used for an image with these sides (28 → 2 layers, 64 → 4)."""
    used: list[int] = []
    sides = list(sides)
    for c in channels:
        if any(s % 2 or s < 8 for s in sides):
            break
        used.append(c)
        sides = [s // 2 for s in sides]
    if not used:
        raise UserError(
            f"a conv net needs images whose sides are even and at least 8 (to halve them with a "
            f"stride-2 layer), got sides {tuple(sides)}. Use an MLP (net=mlp) for this image size."
        )
    return used


class ConvEncoder(nn.Module):
    """Images → conv ``features`` → flatten → ``head``; :func:`use_channels_last` looks for this class."""

    def __init__(self, features: nn.Module, head: nn.Module):
        super().__init__()
        self.features = features
        self.head = head

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x).flatten(start_dim=1))


class ConvDecoder(nn.Module):
    """Vector → ``fc`` → (C, h, w) feature map → conv ``net`` → images."""

    def __init__(self, fc: nn.Module, start_shape: tuple[int, int, int], net: nn.Module):
        super().__init__()
        self.fc = fc
        self.start_shape = tuple(start_shape)
        self.net = net

    def forward(self, z: Tensor) -> Tensor:
        return self.net(self.fc(z).view(-1, *self.start_shape))


def _block(conv: nn.Module, channels: int) -> nn.Sequential:
    return nn.Sequential(conv, nn.BatchNorm2d(channels), nn.LeakyReLU(0.2, inplace=True))


class Conv(Net):
    """DCGAN-style: 4×4 stride-2 convs with BatchNorm + LeakyReLU(0.2), one per entry of ``channels``."""

    def __init__(self, channels: Sequence[int] = (32, 64, 128, 256)):
        self.channels = positive_ints("Conv", "channels", channels)

    def encoder(self, in_shape: Sequence[int], out_features: int) -> nn.Module:
        c_in, h, w = image_shape("Conv", in_shape)
        plan = downsampling_plan((h, w), self.channels)
        layers = []
        for c in plan:
            layers.append(_block(nn.Conv2d(c_in, c, 4, stride=2, padding=1, bias=False), c))
            c_in = c
        flat = c_in * (h >> len(plan)) * (w >> len(plan))
        return ConvEncoder(nn.Sequential(*layers), nn.Linear(flat, out_features))

    def decoder(self, in_features: int, out_shape: Sequence[int]) -> nn.Module:
        c_out, h, w = image_shape("Conv", out_shape)
        plan = downsampling_plan((h, w), self.channels)
        start = (plan[-1], h >> len(plan), w >> len(plan))
        fc = nn.Sequential(
            nn.Linear(in_features, start[0] * start[1] * start[2]), nn.LeakyReLU(0.2, inplace=True)
        )
        layers = [
            _block(nn.ConvTranspose2d(a, b, 4, stride=2, padding=1, bias=False), b)
            for a, b in zip(plan[::-1], plan[-2::-1], strict=False)
        ]
        layers.append(nn.ConvTranspose2d(plan[0], c_out, 4, stride=2, padding=1))
        return ConvDecoder(fc, start, nn.Sequential(*layers))


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
