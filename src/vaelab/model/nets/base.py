"""What a network is to the model: a builder of an encoder and a decoder for given shapes.

The model decides the shapes (image channels plus any conditioning planes in, two numbers per
latent dimension out; latent size plus any label in, as many channels per pixel as the
likelihood asks for out), so one network YAML serves every likelihood, prior and depth.
"""

from __future__ import annotations

from torch import nn


class Net:
    """Subclasses set their options in ``__init__`` (checking them) and build modules on request."""

    def encoder(self, in_shape: tuple[int, ...], out_features: int) -> nn.Module:
        """A module mapping (B, *in_shape) → (B, out_features)."""
        raise NotImplementedError

    def decoder(self, in_features: int, out_shape: tuple[int, ...]) -> nn.Module:
        """A module mapping (B, in_features) → (B, *out_shape)."""
        raise NotImplementedError
