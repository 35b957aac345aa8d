"""Datamodules on tiny data in the real formats: IDX files and a CelebA tree of JPEGs."""

import gzip
import os
import stat
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import make_digits, write_celeba, write_mnist

from vaelab.data import CelebADataModule, MNISTDataModule
from vaelab.data.cache import load_or_build
from vaelab.data.celeba import decode_face
from vaelab.data.idx import read_idx, write_idx
from vaelab.data.loader import EpochBatchSampler
from vaelab.errors import UserError


def _mnist(root, tmp_path, **kw):
    kw.setdefault("val_size", 20)
    return MNISTDataModule(str(root), str(tmp_path / "cache"), download=False, **kw)


# -- IDX --------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["a.idx", "a.idx.gz"])
def test_idx_round_trip(tmp_path, name):
    images, _ = make_digits(7, 0)
    write_idx(tmp_path / name, images)
    out = read_idx(tmp_path / name)
    assert out.dtype == torch.uint8 and out.shape == (7, 28, 28)
    assert np.array_equal(out.numpy(), images)


def test_truncated_idx_names_file_and_sizes(tmp_path):
    images, _ = make_digits(5, 0)
    path = tmp_path / "t.idx"
    write_idx(path, images)
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(UserError, match=r"t\.idx is truncated.*needs 3936"):
        read_idx(path)


def test_bad_magic_is_reported(tmp_path):
    (tmp_path / "x.gz").write_bytes(gzip.compress(b"\x01\x02\x03\x04rest"))
    with pytest.raises(UserError, match="not an IDX file"):
        read_idx(tmp_path / "x.gz")


# -- MNIST ------------------------------------------------------------------------
@pytest.mark.parametrize("gz", [True, False])
def test_mnist_splits_shapes_and_labels(tmp_path, gz):
    root = write_mnist(tmp_path / "d", n_train=100, n_test=30, gz=gz)
    dm = _mnist(root, tmp_path)
    dm.setup()
    sizes = {s: len(v["images"]) for s, v in dm.splits.items()}
    assert sizes == {"train": 80, "val": 20, "test": 30}
    train = dm.splits["train"]
    assert train["images"].dtype == torch.uint8 and train["images"].shape[1:] == (1, 28, 28)
    assert train["labels"].dtype == torch.int64
    # every train+val image is one of the source images, exactly once
    src, labels = make_digits(100, 0)
    both = torch.cat([dm.splits["train"]["images"], dm.splits["val"]["images"]]).squeeze(1)
    assert sorted(map(bytes, both.numpy())) == sorted(map(bytes, src))


def test_mnist_reads_a_read_only_folder_and_reuses_its_cache(tmp_path):
    root = write_mnist(tmp_path / "ro", n_train=60, n_test=10)
    for dirpath, _, files in os.walk(root):
        os.chmod(dirpath, stat.S_IRUSR | stat.S_IXUSR)
        for f in files:
            os.chmod(os.path.join(dirpath, f), stat.S_IRUSR)
    try:
        dm = _mnist(root, tmp_path)
        first = dm.load_splits()
        cache_files = list((tmp_path / "cache").glob("mnist-*.pt"))
        assert len(cache_files) == 1
        mtime = cache_files[0].stat().st_mtime_ns
        second = _mnist(root, tmp_path).load_splits()
        assert cache_files[0].stat().st_mtime_ns == mtime  # loaded, not rebuilt
        assert torch.equal(first["train"]["images"], second["train"]["images"])
    finally:
        for dirpath, _, _ in os.walk(root):
            os.chmod(dirpath, 0o755)


def test_cache_key_changes_with_preprocessing(tmp_path):
    root = write_mnist(tmp_path / "d", n_train=60, n_test=10)
    _mnist(root, tmp_path, val_size=10).load_splits()
    _mnist(root, tmp_path, val_size=20).load_splits()
    assert len(list((tmp_path / "cache").glob("mnist-*.pt"))) == 2


def test_corrupt_cache_is_rebuilt(tmp_path):
    root = write_mnist(tmp_path / "d", n_train=60, n_test=10)
    good = _mnist(root, tmp_path).load_splits()["test"]["images"].clone()  # not the file's pages
    (cache,) = (tmp_path / "cache").glob("mnist-*.pt")
    cache.unlink()  # a new file: truncating the mapped one in place would fault its readers
    cache.write_bytes(b"garbage")
    again = _mnist(root, tmp_path).load_splits()
    assert torch.equal(good, again["test"]["images"])
    assert cache.stat().st_size > 1000


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads Linux's /proc")
def test_a_cached_split_is_mapped_from_its_file_not_copied_into_each_process(tmp_path):
    """Memory-mapped: DDP ranks on one node share the pages of one cache file (CelebA-64: 2.5 GB)
    instead of each holding a copy, and a split costs memory only as it is read."""
    noise = torch.Generator().manual_seed(0)
    load_or_build(
        tmp_path,
        "big",
        "k",
        lambda: {"train/images": torch.randint(0, 255, (64, 2**20), generator=noise, dtype=torch.uint8)},
    )  # 64 MB
    before = _rss_mb()
    loaded, _ = load_or_build(tmp_path, "big", "k", lambda: pytest.fail("rebuilt"), ["train/images"])
    mapped = _rss_mb()
    checksum = int(loaded["train/images"].sum(dtype=torch.int64))  # touches every page
    assert mapped - before < 16 and _rss_mb() - before > 48 and checksum > 0
    loaded["train/images"][0] = 0  # copy-on-write: the file keeps its bytes
    again, _ = load_or_build(tmp_path, "big", "k", lambda: pytest.fail("rebuilt"), ["train/images"])
    assert int(again["train/images"].sum(dtype=torch.int64)) == checksum


def _mapped_files() -> str:
    with open("/proc/self/maps") as f:
        return f.read()


@pytest.mark.skipif(not os.path.exists("/proc/self/maps"), reason="reads Linux's /proc")
def test_the_builder_maps_the_file_it_wrote_instead_of_keeping_its_own_copy(tmp_path, caplog):
    """DDP's rank 0 builds the cache; were it to train from the tensors it decoded while the
    other ranks map the file, the node would hold two copies (6.6 GB at CelebA's full size)."""
    built = {"train/images": torch.arange(3 * 4096).remainder(251).to(torch.uint8).view(1, 3, 64, 64)}
    caplog.set_level("INFO", logger="vaelab.data.cache")
    tensors, path = load_or_build(tmp_path, "big", "k", lambda: {k: v.clone() for k, v in built.items()})
    assert path == tmp_path / "big-k.pt" and str(path) in _mapped_files()
    assert torch.equal(tensors["train/images"], built["train/images"])
    assert f"cached big: 1 images, 0 MB at {path}, in " in caplog.text  # one 12 KB tensor


def test_an_unwritable_cache_serves_the_decoded_tensors_and_says_so(tmp_path, caplog, monkeypatch):
    import vaelab.data.cache as cache

    def refuse(obj, path):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(cache, "atomic_torch_save", refuse)
    tensors, path = load_or_build(tmp_path, "x", "k", lambda: {"train/images": torch.ones(2, 3)})
    assert path is None and tensors["train/images"].sum() == 6
    assert "cannot write the data cache" in caplog.text and "No space left on device" in caplog.text


def test_placement_says_mapped_and_shared_once(tmp_path, caplog):
    root = write_mnist(tmp_path / "d", n_train=60, n_test=10)
    caplog.set_level("INFO", logger="vaelab.data.base")
    dm = _mnist(root, tmp_path, binarize=True)
    dm.setup()
    lines = {r.getMessage().split(":")[0]: r.getMessage() for r in caplog.records}
    assert len(caplog.records) == 4, caplog.text  # where it looks, then one line per split
    assert "mapped from the cache mnist-" in lines["mnist train"]
    assert lines["mnist train"].endswith("one copy, shared between processes")
    assert lines["mnist test"].endswith("MB in cpu memory")  # binarised: its own tensor
    caplog.clear()
    other_rank = SimpleNamespace(
        is_global_zero=False, world_size=2, strategy=SimpleNamespace(root_device=torch.device("cpu"))
    )
    rank1 = _mnist(root, tmp_path)
    rank1.trainer = other_rank
    rank1.setup("fit")
    assert len(rank1.splits["train"]["images"]) == 40 and not caplog.records  # rank 0 said it


def test_missing_mnist_says_where_to_put_files(tmp_path):
    dm = _mnist(tmp_path / "nothing", tmp_path)
    with pytest.raises(UserError) as err:
        dm.check()
    msg = str(err.value)
    assert str(tmp_path / "nothing" / "MNIST" / "raw") in msg
    assert "train-images-idx3-ubyte.gz" in msg and "paths.data_dir" in msg


def test_batches_become_floats_in_unit_range_and_binarised_on_request(tmp_path):
    root = write_mnist(tmp_path / "d", n_train=60, n_test=10)
    dm = _mnist(root, tmp_path, batch_size=8, binarize=True)
    dm.setup()
    images, labels = next(iter(dm.train_dataloader()))
    x, y = dm.on_after_batch_transfer((images, labels), 0)  # no trainer: evaluation path
    assert x.dtype == torch.float32 and x.shape == (8, 1, 28, 28)
    assert x.min() >= 0.0 and x.max() <= 1.0
    assert len(torch.unique(x)) > 2  # training images are grey-level until binarised per step
    assert set(torch.unique(dm.splits["test"]["images"]).tolist()) <= {0, 255}

    class Training:  # what Lightning's trainer reports while fitting
        training = True

    dm.trainer = Training()
    draws = [dm.on_after_batch_transfer((images, labels), 0)[0] for _ in range(2)]
    assert all(set(torch.unique(d).tolist()) <= {0.0, 1.0} for d in draws)
    assert not torch.equal(draws[0], draws[1])  # dynamic: a fresh binarisation every step


def test_every_batch_of_a_density_is_dequantised_and_seeded_noise_repeats(tmp_path):
    """Training, validation and test batches alike: (k + u)/256, the data src/eval.py scores; the
    module seeds validation's and test's noise (VAEModule.EVAL_SEED), so a seed repeats it."""
    root = write_mnist(tmp_path / "d", n_train=60, n_test=10)
    dm = _mnist(root, tmp_path, batch_size=8)
    dm.setup()
    images, labels = next(iter(dm.train_dataloader()))
    for training in (False, True):

        class Trainer:  # what Lightning's trainer reports while fitting or evaluating
            pass

        Trainer.training = training
        dm.trainer = Trainer()
        x = dm.on_after_batch_transfer((images, labels), 0)[0]
        assert torch.equal((x * 256).floor(), images.float())  # each value inside its 8-bit bin
        assert 0.4 < float((x * 256 - images.float()).mean()) < 0.6  # u ~ U[0, 1): mean 1/2
        assert not torch.equal(x, dm.on_after_batch_transfer((images, labels), 0)[0])  # fresh noise
        torch.manual_seed(3)
        again = dm.on_after_batch_transfer((images, labels), 0)[0]
        torch.manual_seed(3)
        assert torch.equal(again, dm.on_after_batch_transfer((images, labels), 0)[0])
    assert dm.scored_data() == "uniformly dequantised 8-bit data (k + u)/256, fixed noise seed"
    dm.dequantize = False
    torch.testing.assert_close(dm.on_after_batch_transfer((images, labels), 0)[0], images.float() / 255)
    assert dm.scored_data() == "the 8-bit values k/255"


# -- CelebA -----------------------------------------------------------------------
def _celeba(root, tmp_path, **kw):
    return CelebADataModule(str(root), str(tmp_path / "cache"), decode_workers=1, **kw)


def test_celeba_official_splits_and_64px_colour(tmp_path):
    root = write_celeba(tmp_path / "d", n=40)
    dm = _celeba(root, tmp_path)
    dm.setup()
    assert {s: len(v["images"]) for s, v in dm.splits.items()} == {"train": 24, "val": 8, "test": 8}
    assert dm.splits["train"]["images"].shape[1:] == (3, 64, 64)
    assert dm.splits["train"]["labels"].shape == (24, 40)
    assert set(dm.splits["train"]["labels"].unique().tolist()) == {0, 1}


def test_celeba_partial_copy_keeps_present_rows_and_carves_empty_splits(tmp_path, caplog):
    root = write_celeba(tmp_path / "d", partition={i: 0 for i in range(1, 41)})
    with open(root / "celeba" / "list_eval_partition.txt", "a") as f:
        f.write("999999.jpg 1\n999998.jpg 2\n")  # listed but absent: must be dropped
    dm = _celeba(root, tmp_path, carve_fraction=0.1)
    dm.setup()
    assert {s: len(v["images"]) for s, v in dm.splits.items()} == {"train": 32, "val": 4, "test": 4}
    assert "carved 4 images each from train" in caplog.text


@pytest.mark.parametrize("size", [(178, 218), (89, 109)])
def test_crop_is_a_fraction_of_the_width(tmp_path, size):
    # a 2-pixel red frame just outside the 148/178 crop must not appear in the 64×64 result
    from PIL import Image

    w, h = size
    arr = np.full((h, w, 3), 128, np.uint8)
    side = round(w * 148 / 178)
    left = (w - side) // 2
    arr[:, : left - 1] = arr[:, left + side + 1 :] = (255, 0, 0)
    path = tmp_path / "img.png"
    Image.fromarray(arr).save(path)
    out = decode_face(str(path), 64, 148 / 178)
    assert out.shape == (3, 64, 64)
    assert abs(int(out[0].max()) - 128) <= 3  # no red at the edges


def test_missing_celeba_folder_and_partition_file(tmp_path):
    with pytest.raises(UserError, match=r"img_align_celeba does not exist.*list_eval_partition"):
        _celeba(tmp_path / "none", tmp_path).check()
    root = write_celeba(tmp_path / "d", n=20)
    (root / "celeba" / "list_eval_partition.txt").unlink()
    with pytest.raises(UserError, match=r"partition file not found: .*list_eval_partition.txt"):
        _celeba(root, tmp_path).check()


def test_unreadable_jpeg_is_skipped_and_counted(tmp_path, caplog):
    root = write_celeba(tmp_path / "d", n=40)
    (root / "celeba" / "img_align_celeba" / "000003.jpg").write_bytes(b"")
    dm = _celeba(root, tmp_path)
    dm.setup()
    assert len(dm.splits["train"]["images"]) == 23
    assert "skipped 1 unreadable CelebA image(s)" in caplog.text and "000003.jpg" in caplog.text


# -- loader -----------------------------------------------------------------------
def test_sampler_is_seeded_per_epoch_and_covers_every_index():
    s = EpochBatchSampler(10, 4, shuffle=True, seed=1)
    e0 = torch.cat(list(s))
    again = torch.cat(list(s))
    s.set_epoch(1)
    e1 = torch.cat(list(s))
    assert len(s) == 3 and sorted(e0.tolist()) == list(range(10))
    assert torch.equal(e0, again) and not torch.equal(e0, e1)


def test_sampler_shards_across_ranks(monkeypatch):
    import vaelab.data.loader as loader

    shards = []
    for rank in (0, 1):
        monkeypatch.setattr(loader, "_dist_rank_world", lambda r=rank: (r, 2))
        s = EpochBatchSampler(9, 2, shuffle=True, seed=0)
        shards.append(torch.cat(list(s)).tolist())
        assert len(s) == 3
    assert len(shards[0]) == len(shards[1]) == 5
    assert set(shards[0]) | set(shards[1]) == set(range(9))


def test_celeba_cache_notices_an_image_replaced_under_the_same_name(tmp_path):
    root = write_celeba(tmp_path / "d", n=40)
    first = _celeba(root, tmp_path).load_splits()
    path = root / "celeba" / "img_align_celeba" / "000001.jpg"
    from PIL import Image

    Image.fromarray(np.zeros((109, 89, 3), np.uint8)).save(path)
    os.utime(path, ns=(1, 1))
    second = _celeba(root, tmp_path).load_splits()
    assert len(list((tmp_path / "cache").glob("celeba-*.pt"))) == 2
    assert not torch.equal(first["train"]["images"][0], second["train"]["images"][0])


def test_celeba_build_logs_its_work_and_draws_no_bar_without_a_terminal(
    tmp_path, caplog, capsys, monkeypatch
):
    """A log file gets a line per tenth of the work, not tqdm's carriage returns (at CelebA's
    full size, one 28 KB line), and says what was cached, how fast, how big and where."""
    import vaelab.data.decode as decode

    monkeypatch.setattr(decode, "DECODE_CHUNK", 4)
    root = write_celeba(tmp_path / "d", n=40)
    caplog.set_level("INFO")
    dm = CelebADataModule(str(root), str(tmp_path / "cache"), decode_workers=2)
    dm.prepare_data()
    text = caplog.text
    assert (
        f"decoding 40 CelebA images from {root / 'celeba' / 'img_align_celeba'} to 64x64 with 2 process"
        in text
    )
    tenths = [r.getMessage() for r in caplog.records if "elapsed, about" in r.getMessage()]
    assert [t.split(" (")[1].split(")")[0] for t in tenths] == [f"{p}%" for p in range(10, 100, 10)]
    assert "caching CelebA 64x64: 40 images in " in text and "images/s" in text
    (cache,) = (tmp_path / "cache").glob("celeba-*.pt")
    assert f"cached celeba: 40 images, {cache.stat().st_size / 1e6:.0f} MB at {cache}, in " in text
    assert str(cache) in _mapped_files()
    assert "\r" not in capsys.readouterr().err
