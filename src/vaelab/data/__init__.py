"""LightningDataModules serving cached uint8 image tensors."""

from vaelab.data.base import ImageDataModule, to_unit_float
from vaelab.data.celeba import CelebADataModule
from vaelab.data.folder import FolderDataModule
from vaelab.data.mnist import FashionMNISTDataModule, MNISTDataModule

__all__ = [
    "ImageDataModule",
    "CelebADataModule",
    "FolderDataModule",
    "MNISTDataModule",
    "FashionMNISTDataModule",
    "to_unit_float",
]
