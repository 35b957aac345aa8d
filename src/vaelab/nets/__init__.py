"""Encoder/decoder architectures, built from the image shape and the latent size."""

from __future__ import annotations

from torch import nn

from vaelab.nets.conv import ConvDecoder, ConvEncoder
from vaelab.nets.mlp import MLPDecoder, MLPEncoder

NETS = ("mlp", "conv")


def build_nets(
    net: str,
    image_shape: tuple[int, int, int],
    latent_dim: int,
    hidden_dims: tuple[int, ...] = (400,),
    channels: tuple[int, ...] = (32, 64, 128, 256),
) -> tuple[nn.Module, nn.Module]:
    """(encoder, decoder) for ``net``: the encoder maps x → (μ, log σ²), the decoder z → logits."""
    image_shape = tuple(image_shape)
    if net == "mlp":
        return MLPEncoder(image_shape, latent_dim, hidden_dims), MLPDecoder(
            image_shape, latent_dim, hidden_dims
        )
    if net == "conv":
        return ConvEncoder(image_shape, latent_dim, channels), ConvDecoder(image_shape, latent_dim, channels)
    raise ValueError(f"unknown net {net!r}; valid: {', '.join(NETS)}")


__all__ = ["NETS", "build_nets", "ConvEncoder", "ConvDecoder", "MLPEncoder", "MLPDecoder"]
