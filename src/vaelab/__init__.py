"""vaelab: variational autoencoders on PyTorch Lightning + Hydra."""

__version__ = "0.1.0"
