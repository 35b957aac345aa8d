"""Figures: pixel sizes, what each picture shows, reproducibility, and the end-of-test result picture."""

import pytest
import torch
from conftest import tiny_overrides
from events import read_events
from PIL import Image

from vaelab.figures import (
    GAP,
    FigureSettings,
    evaluation_figures,
    figure_makers,
    latent_scatter,
    manifold_grid,
    publish,
    result_figure,
    traversal_grid,
)
from vaelab.train import run
from vaelab.vae import VAE

TILE = 28 + 2  # an MNIST image plus make_grid's 2-pixel padding


def _vae(latent_dim=2, shape=(1, 28, 28)):
    torch.manual_seed(0)
    return VAE(shape, latent_dim=latent_dim, hidden_dims=(16,)).eval()


def _png_size(tmp_path, image):
    path = publish({"f": image}, tmp_path)["f"]
    with Image.open(path) as im:
        return im.size, im.mode


def test_result_figure_stacks_originals_reconstructions_and_samples(tmp_path):
    x = torch.rand(16, 1, 28, 28)
    image = result_figure(_vae(), x, n_samples=16, per_row=8, temperature=1.0, seed=0)
    recon_block, sample_block = 4 * TILE + 2, 2 * TILE + 2  # 2×(originals, recons); 2 sample rows
    assert _png_size(tmp_path, image) == ((8 * TILE + 2, recon_block + GAP + sample_block), "RGB")
    torch.testing.assert_close(image[:, 2 : 2 + 28, 2 : 2 + 28], x[0].expand(3, -1, -1))  # first original


def test_result_figure_is_reproducible_and_temperature_scales_samples():
    vae, x = _vae(), torch.rand(8, 1, 28, 28)
    a = result_figure(vae, x, 8, 8, temperature=1.0, seed=3)
    assert torch.equal(a, result_figure(vae, x, 8, 8, temperature=1.0, seed=3))
    assert not torch.equal(a, result_figure(vae, x, 8, 8, temperature=1.0, seed=4))
    cold = result_figure(vae, x, 8, 8, temperature=0.0, seed=3)  # every sample decodes z = 0
    samples = cold[:, -(TILE + 2) :]
    tiles = [samples[:, 2:30, 2 + i * TILE : 30 + i * TILE] for i in range(8)]
    assert all(torch.equal(t, tiles[0]) for t in tiles)


def test_traversal_changes_only_along_the_swept_dimension(tmp_path):
    vae = _vae(latent_dim=3)
    with torch.no_grad():
        vae.decoder.net[0].weight[:, 1] = 0.0  # the decoder ignores z₂
    image = traversal_grid(vae, torch.zeros(3), dims=[0, 1], values=torch.linspace(-3, 3, 5))
    assert _png_size(tmp_path, image)[0] == (5 * TILE + 2, 2 * TILE + 2)
    row = lambda r: [image[:, 2 + r * TILE : 30 + r * TILE, 2 + i * TILE : 30 + i * TILE] for i in range(5)]  # noqa: E731
    assert (row(0)[0] - row(0)[-1]).abs().max() > 1e-3
    assert all((t - row(1)[0]).abs().max() < 1e-6 for t in row(1))  # equal up to BLAS rounding


def test_manifold_is_a_square_of_decoded_gaussian_quantiles():
    vae = _vae(latent_dim=2)
    image = manifold_grid(vae, size=5)
    assert image.shape == (3, 5 * 28, 5 * 28)
    q = torch.distributions.Normal(0.0, 1.0).icdf(torch.tensor([0.05, 0.95]))
    top_left = vae.generate(torch.tensor([[q[0], q[1]]]))[0, 0]  # smallest z₁, largest z₂
    torch.testing.assert_close(image[0, :28, :28], top_left)


@pytest.mark.parametrize(
    "dim,labels",
    [(2, torch.arange(300) % 10), (5, torch.randint(0, 2, (300, 40))), (5, torch.zeros(300, 0)), (3, None)],
)
def test_latent_scatter_is_a_500px_picture_for_any_latent_size_and_labels(tmp_path, dim, labels):
    mu = torch.randn(300, dim)
    assert _png_size(tmp_path, latent_scatter(mu, labels, attribute=20, names=["a"] * 40)) == (
        (500, 500),
        "RGB",
    )


def test_evaluation_figures_add_the_manifold_only_for_a_2d_latent():
    x = torch.rand(16, 1, 28, 28)
    names = {"result", "interpolations", "traversals", "latent_scatter"}
    for dim, expected in ((2, names | {"manifold"}), (3, names)):
        vae = _vae(latent_dim=dim)
        mu = torch.randn(40, dim)
        figs = evaluation_figures(
            vae, x, mu, mu.var(0), torch.arange(40) % 10, FigureSettings(traversal_dims=2)
        )
        assert set(figs) == expected
        assert figs["traversals"].shape[1] == 2 * TILE + 2  # the two most active dims


def test_figure_makers_draw_one_figure_per_call_the_same_as_evaluation_figures():
    x, mu, labels = torch.rand(16, 1, 28, 28), torch.randn(40, 2), torch.arange(40) % 10
    makers = figure_makers(_vae(), x, mu, mu.var(0), labels, FigureSettings())
    assert list(makers) == ["result", "interpolations", "traversals", "latent_scatter", "manifold"]
    drawn = evaluation_figures(_vae(), x, mu, mu.var(0), labels, FigureSettings())
    for name, make in makers.items():  # seeded draws: each figure alone equals the batch's
        assert torch.equal(make(), drawn[name]), name


def test_training_writes_the_result_picture_after_the_test(tmp_path, mnist_root, compose_train):
    out = tmp_path / "run"
    over = tiny_overrides(mnist_root, out, tmp_path / "cache")
    run(compose_train([*over, "dataset.val_size=40", "callbacks.result_figure.n_images=8"]))
    with Image.open(out / "figures" / "result.png") as im:
        assert im.size == (8 * TILE + 2, 2 * TILE + 2 + GAP + 2 * TILE + 2)
    _, images = read_events(out / "tensorboard")
    assert "figures/result" in images
