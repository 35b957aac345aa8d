"""The loaders on the real datasets in $VAELAB_DATA_DIR (skipped when it is unset)."""

import os
from pathlib import Path

import pytest
import torch

from vaelab.data import CelebADataModule, MNISTDataModule

DATA = os.environ.get("VAELAB_DATA_DIR")
pytestmark = pytest.mark.skipif(not DATA, reason="VAELAB_DATA_DIR is not set (real data absent)")


def test_real_mnist_has_the_official_sizes_and_statistics(tmp_path):
    dm = MNISTDataModule(DATA, str(tmp_path), download=False)
    dm.setup()
    assert {s: len(v["images"]) for s, v in dm.splits.items()} == {
        "train": 55000,
        "val": 5000,
        "test": 10000,
    }
    full = torch.cat([dm.splits["train"]["images"], dm.splits["val"]["images"]]).float() / 255
    assert full.mean().item() == pytest.approx(0.1307, abs=1e-4)
    assert full.std().item() == pytest.approx(0.3081, abs=1e-4)
    counts = torch.bincount(dm.splits["test"]["labels"], minlength=10)
    assert counts.tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def test_real_celeba_sample_is_all_train_so_val_and_test_are_carved(tmp_path):
    root = Path(DATA) / "celeba_sample"
    dm = CelebADataModule(str(root), str(tmp_path))
    dm.setup()
    assert {s: len(v["images"]) for s, v in dm.splits.items()} == {
        "train": 9000,
        "val": 500,
        "test": 500,
    }
    images = dm.splits["train"]["images"]
    assert images.shape[1:] == (3, 64, 64) and images.dtype == torch.uint8
    mean = images[:500].float().mean().item() / 255
    assert 0.3 < mean < 0.6  # faces, not padding
    assert dm.splits["train"]["labels"].shape == (9000, 40)
