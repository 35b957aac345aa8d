"""dataset=folder on folders of tiny PNGs and JPEGs: splits, labels, grey or colour, skipped files,
the cache, errors, and runs (a conditional VAE on two sub-folders)."""

import logging

import numpy as np
import pytest
import torch
from conftest import run_train_cli, tiny_overrides
from PIL import Image

from vaelab.data import FolderDataModule
from vaelab.errors import UserError
from vaelab.train import run


def write_folder(root, n_per_class=30, size=(40, 48), grey=False, classes=("cats", "dogs")):
    """Images in one sub-folder per class (a bright and a dark family), PNG and JPEG mixed."""
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(c)
        for i in range(n_per_class):
            shape = (size[1], size[0]) if grey else (size[1], size[0], 3)
            pixels = (rng.random(shape) * 60 + 150 * c).astype(np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i:03d}.{'png' if i % 2 else 'jpg'}")
    return root


def _dm(root, tmp_path, **kw):
    return FolderDataModule(str(root), str(tmp_path / "cache"), image_size=16, decode_workers=1, **kw)


def test_a_folder_is_split_labelled_and_cached_skipping_broken_files_with_one_warning(tmp_path, caplog):
    root = write_folder(tmp_path / "imgs")
    (root / "empty.png").write_bytes(b"")
    (root / "dogs" / "notes.jpg").write_text("not an image")
    caplog.set_level(logging.WARNING)
    dm = _dm(root, tmp_path, labels=True, val_fraction=0.1, test_fraction=0.1)
    dm.check()
    splits = dm.load_splits()
    sizes = {s: len(v["images"]) for s, v in splits.items()}
    # drawn over the 61 files by the seed; the unreadable one had drawn test
    assert sizes == {"train": 49, "val": 6, "test": 5} and dm.n_conditions == 2
    assert (
        splits["train"]["images"].shape[1:] == (3, 16, 16) and splits["train"]["images"].dtype == torch.uint8
    )
    labels = torch.cat([v["labels"] for v in splits.values()])
    assert sorted(labels.tolist()) == [0] * 30 + [1] * 30  # cats 0, dogs 1
    dark = torch.cat([v["images"][v["labels"] == 0] for v in splits.values()]).float().mean()
    assert dark < 120 < torch.cat([v["images"][v["labels"] == 1] for v in splits.values()]).float().mean()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    broken = root / "dogs" / "notes.jpg"
    assert warnings == [
        f"dataset=folder: skipped 2 file(s) that are not readable images (1 empty, e.g. {broken}); "
        "the other 60 images are used"
    ]
    again = _dm(root, tmp_path, labels=True, val_fraction=0.1, test_fraction=0.1)
    assert torch.equal(again.load_splits()["val"]["images"], splits["val"]["images"])  # cached, same split
    assert list((tmp_path / "cache").glob("folder-*.pt"))


def test_grey_images_give_one_channel_no_labels_and_a_split_file(tmp_path):
    root = write_folder(tmp_path / "imgs", n_per_class=10, grey=True)
    split = tmp_path / "split.txt"
    split.write_text("cats/000.jpg val\ncats/001.png test\ndogs/002.jpg test\n")
    dm = _dm(root, tmp_path, split_file=str(split))
    splits = dm.load_splits()
    assert dm.image_shape == (1, 16, 16) and dm.n_conditions == 0
    assert {s: len(v["images"]) for s, v in splits.items()} == {"train": 17, "val": 1, "test": 2}
    assert splits["train"]["labels"].shape == (17, 0)  # no labels: the judge says it has none
    split.write_text("cats/000.jpg validation\n")
    with pytest.raises(
        UserError, match=r"split.txt, line 1: expected '<image path relative to dataset.root>"
    ):
        _dm(root, tmp_path / "other", split_file=str(split)).load_splits()


@pytest.mark.parametrize(
    "setup, kw, message",
    [
        (
            lambda r: r.mkdir(),
            {},
            r"holds no images: dataset=folder reads every PNG, JPG, JPEG, BMP and WEBP",
        ),
        (lambda r: write_folder(r, n_per_class=3), {}, r"holds 6 image\(s\): too few for the train/val/test"),
        (lambda r: write_folder(r, classes=("one",)), {"labels": True}, r"has 1 with images"),
        (lambda r: write_folder(r, size=(12, 20)), {}, r"smaller than dataset.image_size=16 after the crop"),
    ],
    ids=["empty", "too-few", "one-class", "too-small"],
)
def test_unusable_folders_are_refused_with_what_to_do(tmp_path, setup, kw, message):
    root = tmp_path / "imgs"
    setup(root)
    dm = _dm(root, tmp_path, **kw)
    with pytest.raises(UserError, match=message):
        dm.check()
        dm.load_splits()
    with pytest.raises(UserError, match=r"crop_fraction=1.5 is invalid"):
        _dm(root, tmp_path, crop_fraction=1.5)


def test_a_conditional_vae_trains_on_the_sub_folders_and_draws_its_pictures(tmp_path, compose_train):
    root = write_folder(tmp_path / "imgs")
    over = tiny_overrides(tmp_path / "unused", tmp_path / "run", tmp_path / "cache")
    over += ["dataset=folder", f"dataset.root={root}", "dataset.image_size=16", "dataset.labels=true"]
    over += [
        "dataset.decode_workers=1",
        "model=conditional",
        "net.channels=[8,8]",
        "callbacks.sample_quality=null",
    ]
    metrics = run(compose_train(over))
    assert metrics["scored_data"].startswith("uniformly dequantised") and metrics["test/elbo"] is not None
    figures = tmp_path / "run" / "figures"
    assert (figures / "result.png").is_file() and (figures / "samples_per_class.png").is_file()


def test_an_empty_folder_stops_the_command_before_any_run_folder(tmp_path):
    (tmp_path / "imgs").mkdir()
    proc = run_train_cli(
        ["dataset=folder", f"dataset.root={tmp_path / 'imgs'}", f"hydra.run.dir={tmp_path / 'run'}"]
    )
    assert proc.returncode != 0 and "holds no images" in proc.stderr
    assert proc.stderr.count("\n\n") <= 1 and "Traceback" not in proc.stderr  # one paragraph
    assert not (tmp_path / "run").exists()
