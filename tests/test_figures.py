"""Figures: pixel sizes, what each picture shows, reproducibility, and the end-of-test result picture."""

import pytest
import torch
from conftest import tiny_overrides
from events import read_events
from PIL import Image

from vaelab.figures import (
    GAP,
    SCALE,
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


def _grid(image, width):
    """The grid inside a labelled figure of a ``width``-pixel grid: label margin cut off,
    enlargement undone."""
    assert image.shape[2] > SCALE * width  # a margin for the row labels
    return image[:, ::SCALE, image.shape[2] - SCALE * width :: SCALE]


def _png_size(tmp_path, image):
    path = publish({"f": image}, tmp_path)["f"]
    with Image.open(path) as im:
        return im.size, im.mode


def test_result_figure_stacks_originals_reconstructions_and_samples(tmp_path):
    x = torch.rand(16, 1, 28, 28)
    labelled = result_figure(_vae(), x, n_samples=16, per_row=8, temperature=1.0, seed=0)
    image = _grid(labelled, 8 * TILE + 2)
    recon_block, sample_block = 4 * TILE + 2, 2 * TILE + 2  # 2×(originals, recons); 2 sample rows
    assert image.shape[1:] == (recon_block + GAP + sample_block, 8 * TILE + 2)
    assert _png_size(tmp_path, labelled)[0][1] == SCALE * image.shape[1]  # enlarged twice
    torch.testing.assert_close(image[:, 2 : 2 + 28, 2 : 2 + 28], x[0].expand(3, -1, -1), atol=1 / 255, rtol=0)


def test_result_figure_is_reproducible_and_temperature_scales_samples():
    vae, x = _vae(), torch.rand(8, 1, 28, 28)
    a = result_figure(vae, x, 8, 8, temperature=1.0, seed=3)
    assert torch.equal(a, result_figure(vae, x, 8, 8, temperature=1.0, seed=3))
    assert not torch.equal(a, result_figure(vae, x, 8, 8, temperature=1.0, seed=4))
    cold = _grid(result_figure(vae, x, 8, 8, temperature=0.0, seed=3), 8 * TILE + 2)  # z = 0 each
    samples = cold[:, -(TILE + 2) :]
    tiles = [samples[:, 2:30, 2 + i * TILE : 30 + i * TILE] for i in range(8)]
    assert all(torch.equal(t, tiles[0]) for t in tiles)


def test_traversal_changes_only_along_the_swept_dimension(tmp_path):
    vae = _vae(latent_dim=3)
    with torch.no_grad():
        vae.decoder.net[0].weight[:, 1] = 0.0  # the decoder ignores z₂
    values = torch.linspace(-3, 3, 5).expand(2, 5)
    image = _grid(traversal_grid(vae, torch.zeros(3), dims=[0, 1], values=values), 5 * TILE + 2)
    assert image.shape[1:] == (2 * TILE + 2, 5 * TILE + 2)
    row = lambda r: [image[:, 2 + r * TILE : 30 + r * TILE, 2 + i * TILE : 30 + i * TILE] for i in range(5)]  # noqa: E731
    assert (row(0)[0] - row(0)[-1]).abs().max() > 1e-3
    assert all((t - row(1)[0]).abs().max() < 1.5 / 255 for t in row(1))  # equal up to rounding


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
        assert figs["traversals"].shape[1] == SCALE * (2 * TILE + 2)  # the two most active dims


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
        assert im.size[1] == SCALE * (2 * TILE + 2 + GAP + 2 * TILE + 2) and im.size[0] > SCALE * (
            8 * TILE + 2
        )
    _, images = read_events(out / "tensorboard")
    assert "figures/result" in images


def test_manifold_and_traversals_cover_the_aggregate_posterior():
    from vaelab.figures import aggregate_quantiles

    mu = torch.stack([torch.linspace(-10, 10, 101), torch.linspace(0, 1, 101)], dim=1)
    q = aggregate_quantiles(mu, torch.tensor([0.05, 0.5, 0.95]))
    torch.testing.assert_close(q, torch.tensor([[-9.0, 0.0, 9.0], [0.05, 0.5, 0.95]]))
    vae = _vae(latent_dim=2)
    image = manifold_grid(vae, 3, z1=q[0], z2=q[1])
    corner = vae.generate(torch.tensor([[-9.0, 0.95]]))[0, 0]  # smallest z₁, largest z₂: top left
    torch.testing.assert_close(image[0, :28, :28], corner)


def test_labelled_rows_carry_text_in_the_margin():
    from vaelab.annotate import row_bands, with_row_labels

    grid = torch.zeros(3, 2 * TILE + 2, 3 * TILE + 2)
    labelled = with_row_labels(grid, list(zip(row_bands(2, 28), ["first", "second"], strict=True)), scale=2)
    margin = labelled[:, :, : labelled.shape[2] - 2 * grid.shape[2]]
    assert labelled.shape[1] == 2 * grid.shape[1] and margin.shape[2] > 30
    dark = (margin.mean(0) < 0.5).nonzero()[:, 0]  # the text's pixel rows
    assert dark.min() > 2 * 2 and dark.max() < 2 * (2 + 2 * TILE)  # inside the two tile rows
    assert all((margin.mean(0)[2 * r0 : 2 * r1] < 0.5).any() for r0, r1 in row_bands(2, 28))  # each row
