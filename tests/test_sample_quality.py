"""Sample-quality numbers: each function against a case whose answer is known."""

from __future__ import annotations

import math
import threading

import pytest
import torch
from conftest import write_mnist

from vaelab import judges
from vaelab.data import MNISTDataModule
from vaelab.judges import Judge, load_or_train_judge, train_judge
from vaelab.sample_quality import (
    class_entropy,
    confident_share,
    frechet_distance,
    image_set_scores,
    precision_recall,
)


def test_confident_share_counts_top_probabilities_at_or_above_the_threshold():
    probs = torch.tensor([[0.95, 0.05], [0.9, 0.1], [0.6, 0.4], [0.2, 0.8]])
    assert confident_share(probs) == pytest.approx(0.5)
    assert confident_share(probs, threshold=0.5) == 1.0


def test_class_entropy_is_one_for_a_uniform_histogram_and_zero_for_one_class():
    uniform = torch.eye(10).repeat(3, 1)
    assert class_entropy(uniform) == pytest.approx(1.0)
    assert class_entropy(torch.eye(10)[[4] * 7]) == pytest.approx(0.0)
    half = torch.eye(4)[[0, 1, 0, 1]]  # two of four classes, equally often: log 2 / log 4
    assert class_entropy(half) == pytest.approx(0.5)


def test_precision_and_recall_of_identical_disjoint_and_collapsed_sets():
    torch.manual_seed(0)
    real = torch.randn(200, 8)
    assert precision_recall(real, real.clone()) == (1.0, 1.0)
    assert precision_recall(real, real + 100.0) == (0.0, 0.0)
    collapsed = real[:1].repeat(200, 1) + 1e-6 * torch.randn(200, 8)  # one mode, replayed
    precision, recall = precision_recall(real, collapsed)
    assert precision == 1.0 and recall < 0.05


def _sqrtm_trace(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.linalg.eigvals(a @ b).real.clamp(min=0).sqrt().sum())


def test_frechet_distance_equals_the_closed_form_on_the_judges_features():
    torch.manual_seed(0)
    judge = Judge((1, 8, 8), n_outputs=3, multi_label=False).eval()
    real, fake = torch.rand(300, 1, 8, 8), torch.rand(300, 1, 8, 8) * 0.5
    with torch.no_grad():
        f1, f2 = judge.features(real).double(), judge.features(fake).double()
    m1, m2, c1, c2 = f1.mean(0), f2.mean(0), f1.T.cov(), f2.T.cov()
    expected = float((m1 - m2).square().sum() + c1.trace() + c2.trace()) - 2 * _sqrtm_trace(c1, c2)
    assert frechet_distance(judge, real, fake) == pytest.approx(expected, rel=1e-3)
    assert frechet_distance(judge, real, real) == pytest.approx(0.0, abs=1e-3)


def _digits(tmp_path):
    dm = MNISTDataModule(
        root=str(write_mnist(tmp_path / "data", 600, 200)), cache_dir=str(tmp_path / "c"), val_size=100
    )
    return dm, dm.load_splits()


def test_a_judge_learns_the_digits_and_scores_real_ones_as_the_floor(tmp_path):
    _, splits = _digits(tmp_path)
    judge, acc = train_judge(splits, seed=0, epochs=10, shift=0)
    assert acc > 0.95
    test = splits["test"]["images"].float() / 255
    real = image_set_scores(judge, test[:100], test[100:])
    noise = image_set_scores(judge, test[:100], torch.rand(100, 1, 28, 28))
    assert real["confident"] > 0.8 and real["class_entropy"] > 0.9
    assert real["fd"] < noise["fd"] and real["precision"] > noise["precision"]
    assert set(real) == {"fd", "precision", "recall", "confident", "class_entropy"}


def test_the_judge_is_trained_once_and_then_loaded_from_the_cache(tmp_path, monkeypatch):
    dm, _ = _digits(tmp_path)
    calls = []
    real_train = judges.train_judge
    monkeypatch.setattr(judges, "train_judge", lambda *a, **k: calls.append(1) or real_train(*a, **k))
    first, acc1 = load_or_train_judge(dm, seed=0, epochs=1)
    second, acc2 = load_or_train_judge(dm, seed=0, epochs=1)
    assert len(calls) == 1 and acc1 == acc2 and math.isfinite(acc1)
    assert list((tmp_path / "c").glob("judge-mnist-*.pt"))
    x = torch.rand(4, 1, 28, 28)
    assert torch.equal(first(x), second(x))
    load_or_train_judge(dm, seed=1, epochs=1)  # another seed: another judge
    assert len(calls) == 2


def test_a_binarised_run_uses_the_grey_runs_judge(tmp_path, monkeypatch):
    grey, _ = _digits(tmp_path)
    binary = MNISTDataModule(root=grey.root, cache_dir=grey.cache_dir, val_size=100, binarize=True)
    calls = []
    real_train = judges.train_judge
    monkeypatch.setattr(judges, "train_judge", lambda *a, **k: calls.append(1) or real_train(*a, **k))
    first, grey_acc = load_or_train_judge(grey, seed=0, epochs=1)
    second, binary_acc = load_or_train_judge(binary, seed=0, epochs=1)
    assert len(calls) == 1  # one cache entry: the binarised run found the grey run's judge
    assert len(list((tmp_path / "c").glob("judge-mnist-*.pt"))) == 1
    x = torch.rand(4, 1, 28, 28)
    assert torch.equal(first(x), second(x))
    assert 0 < grey_acc <= 1 and 0 < binary_acc <= 1  # each on the test images as its run sees them


def test_training_a_judge_leaves_the_runs_random_stream_alone(tmp_path):
    _, splits = _digits(tmp_path)
    torch.manual_seed(123)
    state = torch.get_rng_state()
    first, acc1 = train_judge(splits, seed=0, epochs=1)
    assert torch.equal(torch.get_rng_state(), state)  # nothing drawn from it: safe beside a run
    second, acc2 = train_judge(splits, seed=0, epochs=1)
    x = torch.rand(4, 1, 28, 28)
    assert acc1 == acc2 and torch.equal(first(x), second(x))  # its own seed decides it


class _Trainer:
    """What SampleQuality reads of a trainer, as on rank 0 of a DDP run."""

    def __init__(self, datamodule, world_size: int, epoch: int = 0, max_epochs: int = 3):
        self.datamodule, self.world_size, self.is_global_zero = datamodule, world_size, True
        self.current_epoch, self.max_epochs, self.max_steps, self.global_step = epoch, max_epochs, -1, 0
        self.should_stop = self.sanity_checking = False


def test_under_ddp_rank_0_gets_the_judge_in_the_background_and_waits_only_at_the_last_epoch(
    tmp_path, monkeypatch
):
    from vaelab import callbacks

    dm, _ = _digits(tmp_path)
    release = threading.Event()
    real_load = callbacks.load_or_train_judge

    def slow_load(*args, **kwargs):
        release.wait(timeout=60)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(callbacks, "load_or_train_judge", slow_load)
    quality = callbacks.SampleQuality(judge_epochs=1)
    quality.on_fit_start(_Trainer(dm, world_size=2), None)  # returns at once: nothing to wait for
    assert quality.judge is None and quality._background.is_alive()
    quality.on_validation_epoch_end(_Trainer(dm, world_size=2, epoch=0), None)  # not ready: skipped
    assert quality.judge is None and quality.waited_seconds == 0
    threading.Timer(0.2, release.set).start()
    quality._wait_if_last(_Trainer(dm, world_size=2, epoch=2))  # the last epoch waits for it
    assert quality.judge is not None and not quality._background.is_alive()
    assert quality.waited_seconds > 0.1 and quality.judge_seconds > 0.1  # the 0.2 s it was held back


def test_a_single_process_run_gets_the_judge_before_training_and_counts_its_time(tmp_path):
    from vaelab.callbacks import SampleQuality

    dm, _ = _digits(tmp_path)
    quality = SampleQuality(judge_epochs=1)
    quality.on_fit_start(_Trainer(dm, world_size=1), None)
    assert quality.judge is not None and quality._background is None
    assert quality.waited_seconds >= quality.judge_seconds > 0


def test_a_training_run_logs_sample_quality_at_each_validation_epoch(tmp_path):
    from conftest import compose_config, tiny_overrides
    from events import read_events

    from vaelab.train import run

    root = write_mnist(tmp_path / "data", n_train=400, n_test=100)
    over = tiny_overrides(root, tmp_path / "run", tmp_path / "cache")
    over += ["dataset.val_size=100", "trainer.max_epochs=2", "test=false", "callbacks.sample_quality.n=50"]
    metrics = run(compose_config([o for o in over if o != "trainer.max_epochs=1"]))
    scalars, _ = read_events(tmp_path / "run" / "tensorboard")
    names = {"fd", "precision", "recall", "confident", "class_entropy"}
    # after train/ and val/ in TensorBoard's alphabetical list of groups
    assert {t for t in scalars if "quality" in t} == {f"val_quality/samples/{n}" for n in names}
    assert len(scalars["val_quality/samples/fd"]) == 2  # one point per validation epoch
    assert all(0 <= v <= 1 for v in scalars["val_quality/samples/confident"])
    assert list((tmp_path / "cache").glob("judge-mnist-*.pt"))
    assert metrics["judge_seconds"] > 0 and metrics["fit_seconds"] > 0  # the judge's time, apart


def test_a_conditional_vae_reconstructs_the_held_out_images_with_their_labels():
    from vaelab.model.vae import VAE
    from vaelab.sample_quality import sample_quality

    torch.manual_seed(0)
    vae = VAE(
        (1, 8, 8),
        [2],
        net={"_target_": "vaelab.model.nets.mlp.MLP", "hidden": [8]},
        likelihood={"_target_": "vaelab.model.likelihoods.gaussian.Gaussian"},
        prior={"_target_": "vaelab.model.priors.normal.StandardNormal"},
        n_conditions=10,
    ).eval()
    seen, reconstruct = [], vae.reconstruct
    vae.reconstruct = lambda x, y=None: seen.append(y) or reconstruct(x, y)
    judge = Judge((1, 8, 8), n_outputs=10, multi_label=False).eval()
    images = torch.randint(0, 256, (20, 1, 8, 8), dtype=torch.uint8)
    labels = torch.arange(20) % 7
    scores = sample_quality(vae, judge, images, images.flip(0), 12, held_out_labels=labels)
    assert len(seen) == 1 and torch.equal(seen[0], labels[:12])  # their own labels, not cycled classes
    assert {"quality/samples/fd", "quality/reconstructions/fd", "quality/real/fd"} <= set(scores)
