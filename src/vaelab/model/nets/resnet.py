"""Residual conv encoder/decoder for 64×64 faces (and 28×28 digits, halving as :class:`Conv` does).

Identity skips let a deeper net train as easily as a shallow one, so it can model finer detail than
the DCGAN-style :class:`~vaelab.model.nets.conv.Conv` at a similar parameter count. Encoder: a
3×3 stem, then per stage a stride-2 conv and residual blocks, then flatten + Linear. Decoder: the
mirror, upsampling ×2 per stage (nearest + 3×3 conv by default: no checkerboard artefacts),
then a 3×3 conv to the channels asked for.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import Tensor, nn

from vaelab.errors import UserError
from vaelab.model.nets.base import Net
from vaelab.model.nets.conv import ConvDecoder, ConvEncoder, downsampling_plan, image_shape
from vaelab.model.nets.mlp import one_of, positive_ints

NORMS = ("batch", "group")
ACTIVATIONS = {"silu": nn.SiLU, "leaky_relu": lambda: nn.LeakyReLU(0.2)}
UPSAMPLES = ("nearest", "transposed")


class ResidualBlock(nn.Module):
    """x + conv-norm-act-conv-norm(x), then act: learns a correction, so it starts near identity."""

    def __init__(self, channels: int, norm: str, activation: str):
        super().__init__()
        self.body = nn.Sequential(
            *conv_norm_act(channels, channels, norm, activation),
            nn.Conv2d(channels, channels, 3, padding=1, bias=False),
            _norm(norm, channels),
        )
        self.act = ACTIVATIONS[activation]()

    def forward(self, x: Tensor) -> Tensor:
        return self.act(x + self.body(x))


def _norm(kind: str, channels: int) -> nn.Module:
    # GroupNorm: up to 32 groups, as in diffusion U-Nets; independent of the batch size
    return nn.BatchNorm2d(channels) if kind == "batch" else nn.GroupNorm(math.gcd(32, channels), channels)


def conv_norm_act(
    c_in: int, c_out: int, norm: str, activation: str, conv: nn.Module | None = None
) -> list[nn.Module]:
    """A conv (3×3, stride 1 unless given) followed by normalisation and the activation."""
    conv = conv or nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)
    return [conv, _norm(norm, c_out), ACTIVATIONS[activation]()]


class ResNet(Net):
    """Stages of widths ``channels``, each a ×2 resampling plus ``blocks_per_stage`` residual blocks."""

    def __init__(
        self,
        channels: Sequence[int] = (32, 64, 128, 256),
        blocks_per_stage: int = 1,
        norm: str = "batch",
        activation: str = "silu",
        upsample: str = "nearest",
    ):
        self.channels = positive_ints("ResNet", "channels", channels)
        if (
            not isinstance(blocks_per_stage, int)
            or isinstance(blocks_per_stage, bool)
            or blocks_per_stage < 0
        ):
            raise UserError(
                f"ResNet: blocks_per_stage={blocks_per_stage!r} is not a whole number ≥ 0 (residual "
                "blocks after each resampling; 0 gives a plain conv net); set it in conf/net/resnet.yaml "
                "or on the command line."
            )
        self.blocks_per_stage = blocks_per_stage
        self.norm = one_of("ResNet", "norm", norm, NORMS)
        self.activation = one_of("ResNet", "activation", activation, list(ACTIVATIONS))
        self.upsample = one_of("ResNet", "upsample", upsample, UPSAMPLES)

    def _blocks(self, channels: int) -> list[nn.Module]:
        return [ResidualBlock(channels, self.norm, self.activation) for _ in range(self.blocks_per_stage)]

    def _up(self, c_in: int, c_out: int) -> list[nn.Module]:
        if self.upsample == "transposed":
            conv = nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1, bias=False)
            return conv_norm_act(c_in, c_out, self.norm, self.activation, conv)
        return [
            nn.Upsample(scale_factor=2, mode="nearest"),
            *conv_norm_act(c_in, c_out, self.norm, self.activation),
        ]

    def encoder(self, in_shape: Sequence[int], out_features: int) -> nn.Module:
        c_in, h, w = image_shape("ResNet", in_shape)
        plan = downsampling_plan((h, w), self.channels)
        layers = conv_norm_act(c_in, plan[0], self.norm, self.activation)
        for a, b in zip(plan[:1] + plan[:-1], plan, strict=True):
            down = nn.Conv2d(a, b, 3, stride=2, padding=1, bias=False)
            layers += [*conv_norm_act(a, b, self.norm, self.activation, down), *self._blocks(b)]
        flat = plan[-1] * (h >> len(plan)) * (w >> len(plan))
        return ConvEncoder(nn.Sequential(*layers), nn.Linear(flat, out_features))

    def decoder(self, in_features: int, out_shape: Sequence[int]) -> nn.Module:
        c_out, h, w = image_shape("ResNet", out_shape)
        plan = downsampling_plan((h, w), self.channels)
        start = (plan[-1], h >> len(plan), w >> len(plan))
        fc = nn.Sequential(nn.Linear(in_features, math.prod(start)), ACTIVATIONS[self.activation]())
        layers: list[nn.Module] = []
        for a, b in zip(plan[::-1], plan[-2::-1] + plan[:1], strict=True):
            layers += [*self._blocks(a), *self._up(a, b)]
        layers.append(nn.Conv2d(plan[0], c_out, 3, padding=1))
        return ConvDecoder(fc, start, nn.Sequential(*layers))
