"""Figures: pixel sizes, what each picture shows, reproducibility, and the end-of-test result picture;
conditional VAEs (labels threaded through, samples per class), VampPrior pseudo-inputs and the
hierarchical VAE's top layer."""

import pytest
import torch
from conftest import tiny_overrides
from events import read_events
from PIL import Image

from vaelab.figures import (
    GAP,
    SCALE,
    FigureSettings,
    ResultFigure,
    evaluation_figures,
    figure_makers,
    latent_scatter,
    manifold_grid,
    pseudo_inputs_grid,
    publish,
    result_figure,
    samples_per_class,
    traversal_grid,
)
from vaelab.grids import interpolation_grid, reconstruction_grid
from vaelab.model.vae import VAE
from vaelab.train import run

TILE = 28 + 2  # an MNIST image plus make_grid's 2-pixel padding
MLP = {"_target_": "vaelab.model.nets.mlp.MLP", "hidden": [16]}
GAUSSIAN = {"_target_": "vaelab.model.likelihoods.gaussian.Gaussian"}
NORMAL = {"_target_": "vaelab.model.priors.normal.StandardNormal"}
VAMP = {"_target_": "vaelab.model.priors.vamp.VampPrior", "components": 70}


def _vae(latent_dim=2, shape=(1, 28, 28), n_conditions=0, prior=NORMAL, top_net=None):
    torch.manual_seed(0)
    dims = latent_dim if isinstance(latent_dim, list) else [latent_dim]
    return VAE(
        shape, dims, net=MLP, likelihood=GAUSSIAN, prior=prior, top_net=top_net, n_conditions=n_conditions
    ).eval()


def _conditional(n_conditions=10, shape=(1, 28, 28)):
    """A conditional VAE whose decoder listens to the label (its label weights scaled up)."""
    vae = _vae(latent_dim=3, shape=shape, n_conditions=n_conditions)
    with torch.no_grad():
        vae.decoders[0][0].weight[:, 3:] *= 20.0  # inputs: z (3), then the label
    return vae


def _tiles(image, rows, cols, tile=28):
    """The rows × cols tiles of a ``make_grid`` image (padding 2)."""
    step = tile + 2
    return [
        [
            image[:, 2 + r * step : 2 + r * step + tile, 2 + c * step : 2 + c * step + tile]
            for c in range(cols)
        ]
        for r in range(rows)
    ]


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
        vae.decoders[0][0].weight[:, 1] = 0.0  # the decoder ignores z₂
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


@pytest.mark.parametrize("components, sample_bands", [(3, 2), (0, 1)], ids=["with-expost", "prior-only"])
def test_training_writes_the_result_picture_after_the_test(
    tmp_path, mnist_root, compose_train, components, sample_bands
):
    """Test images over reconstructions, then a band of prior samples and, unless turned off,
    a band of ex-post prior samples fitted to the training codes."""
    out = tmp_path / "run"
    over = tiny_overrides(mnist_root, out, tmp_path / "cache")
    over += ["dataset.val_size=40", "callbacks.result_figure.n_images=8"]
    run(compose_train([*over, f"callbacks.result_figure.expost_components={components}"]))
    band = 2 * TILE + 2  # two rows of tiles and the grid's padding
    with Image.open(out / "figures" / "result.png") as im:
        assert im.size[1] == SCALE * (band + sample_bands * (GAP + band))
        assert im.size[0] > SCALE * (8 * TILE + 2)
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


# -- conditional VAEs ----------------------------------------------------------------------------
def test_conditional_reconstructions_use_the_images_own_labels():
    vae, x = _conditional(), torch.rand(8, 1, 28, 28)
    y = torch.tensor([3, 1, 4, 1, 5, 9, 2, 6])
    image = reconstruction_grid(vae, x, per_row=8, y=y)
    recon = _tiles(image, 2, 8)[1]  # the row under the originals
    for i in range(8):
        torch.testing.assert_close(recon[i], vae.reconstruct(x[i : i + 1], y[i : i + 1])[0].expand(3, -1, -1))
    cycled = _tiles(reconstruction_grid(vae, x, per_row=8), 2, 8)[1]  # no labels: classes 0…7
    assert (recon[0] - cycled[0]).abs().max() > 0.01  # image 0 is a 3, not a 0
    labelled = _grid(result_figure(vae, x, 8, 8, 1.0, 0, y=y), 8 * TILE + 2)
    torch.testing.assert_close(_tiles(labelled, 2, 8)[1][0], recon[0], atol=1 / 255, rtol=0)


def test_conditional_interpolations_encode_and_decode_with_the_labels():
    vae, x = _conditional(), torch.rand(4, 1, 28, 28)
    y = torch.tensor([7, 2, 7, 5])
    image = interpolation_grid(vae, x[:2], x[2:], steps=3, y_start=y[:2], y_end=y[2:])
    ends = _tiles(image, 2, 3)
    z_a, z_b = vae.encode(x[:2], y[:2])[0], vae.encode(x[2:], y[2:])[0]
    torch.testing.assert_close(ends[0][0], vae.generate(z_a[:1], y[:1])[0].expand(3, -1, -1))
    torch.testing.assert_close(ends[1][2], vae.generate(z_b[1:], y[3:])[0].expand(3, -1, -1))


def test_samples_per_class_show_the_same_codes_in_one_row_per_digit(tmp_path):
    vae = _conditional()
    labelled = samples_per_class(vae, per_row=8, seed=0)
    image = _grid(labelled, 8 * TILE + 2)
    assert image.shape[1:] == (10 * TILE + 2, 8 * TILE + 2)  # 10 classes × 8 codes
    (width, height), _ = _png_size(tmp_path, labelled)
    assert height == SCALE * (10 * TILE + 2) and width > SCALE * (8 * TILE + 2)  # a label margin
    rows = _tiles(image, 10, 8)
    z = vae.prior_sample(8, generator=torch.Generator().manual_seed(0))
    for c in (0, 7):  # row c: the 8 codes decoded as class c
        expected = vae.generate(z, torch.full((8,), c))
        for i in (0, 5):
            torch.testing.assert_close(rows[c][i], expected[i].expand(3, -1, -1), atol=1 / 255, rtol=0)
    assert all((rows[0][0] - rows[c][0]).abs().max() > 0.01 for c in range(1, 10))  # the rows differ


def test_samples_per_class_toggle_named_attributes_of_test_images():
    vae = _conditional(n_conditions=6, shape=(3, 16, 16))
    names = ["Bald", "Smiling", "Young", "Male", "Eyeglasses", "Blond_Hair"]
    labels = torch.tensor([[0, 0, 1, 1, 0, 0], [1, 1, 0, 0, 0, 1], [0, 0, 0, 0, 0, 0]], dtype=torch.int8)
    labelled = samples_per_class(vae, per_row=4, seed=1, labels=labels, names=names, n_images=2)
    tile = 16 + 2
    rows = 2 * (1 + 4)  # each of 2 images: as it is, then Smiling, Male, Eyeglasses, Blond_Hair toggled
    image = _grid(labelled, 4 * tile + 2)
    assert image.shape[1:] == (rows * tile + 2, 4 * tile + 2)
    tiles = _tiles(image, rows, 4, tile=16)
    z = vae.prior_sample(4, generator=torch.Generator().manual_seed(1))
    smiling = labels[0].float().clone()
    smiling[1] = 1.0  # found by name: column 1 here, not CelebA's 31
    torch.testing.assert_close(tiles[1][2], vae.generate(z[2:3], smiling[None])[0], atol=1 / 255, rtol=0)
    torch.testing.assert_close(tiles[5][0], vae.generate(z[:1], labels[1:2].float())[0], atol=1 / 255, rtol=0)
    assert all((tiles[0][0] - tiles[r][0]).abs().max() > 1e-3 for r in range(1, 5))  # each toggle shows


def test_figure_makers_add_samples_per_class_for_a_conditional_vae():
    vae, x = _conditional(), torch.rand(16, 1, 28, 28)
    mu, labels = torch.randn(40, 3), torch.arange(40) % 10
    makers = figure_makers(vae, x, mu, mu.var(0), labels, FigureSettings(traversal_dims=2))
    assert list(makers) == ["result", "interpolations", "traversals", "latent_scatter", "samples_per_class"]
    drawn = {name: make() for name, make in makers.items()}
    assert drawn["samples_per_class"].shape[1] == SCALE * (10 * TILE + 2)
    plain = figure_makers(_vae(3), x, mu, mu.var(0), labels, FigureSettings())
    assert "samples_per_class" not in plain and "pseudo_inputs" not in plain


# -- VampPrior and the hierarchical VAE ----------------------------------------------------------
def test_vamp_prior_adds_a_grid_of_its_first_64_pseudo_inputs(tmp_path):
    vae, x = _vae(latent_dim=2, prior=VAMP), torch.rand(16, 1, 28, 28)
    mu = torch.randn(40, 2)
    makers = figure_makers(vae, x, mu, mu.var(0), None, FigureSettings())
    assert list(makers)[-1] == "pseudo_inputs"
    image = makers["pseudo_inputs"]()
    assert image.shape == (3, 8 * TILE + 2, 8 * TILE + 2)  # 64 of the 70, 8 a row
    tiles = _tiles(image, 8, 8)
    u = vae.prior.pseudo_inputs()
    torch.testing.assert_close(tiles[0][0], u[0].expand(3, -1, -1))
    torch.testing.assert_close(tiles[7][7], u[63].expand(3, -1, -1))
    assert torch.equal(image, pseudo_inputs_grid(vae))
    assert _png_size(tmp_path, image)[0] == (8 * TILE + 2, 8 * TILE + 2)


def test_the_end_of_test_figures_of_a_vamp_and_a_conditional_vae(tmp_path):
    callback = ResultFigure(str(tmp_path), n_images=8, n_samples=8)
    callback._images, callback._labels = torch.rand(8, 1, 28, 28), torch.arange(8)
    assert set(callback.figures(_vae(prior=VAMP))) == {"result", "pseudo_inputs"}
    figures = callback.figures(_conditional())
    assert set(figures) == {"result", "samples_per_class"}
    assert figures["samples_per_class"].shape[1] == SCALE * (10 * TILE + 2)


def test_hierarchical_figures_work_on_the_top_layer():
    top = {"_target_": "vaelab.model.nets.mlp.MLP", "hidden": [8], "activation": "tanh"}
    vae, x = _vae(latent_dim=[4, 2], top_net=top), torch.rand(16, 1, 28, 28)
    assert vae.latent_dim == 2 and vae.encode(x)[0].shape == (16, 2)
    mu = vae.encode(x)[0]
    figs = evaluation_figures(vae, x, mu, mu.var(0), None, FigureSettings(traversal_dims=2))
    assert set(figs) == {"result", "interpolations", "traversals", "latent_scatter", "manifold"}
    assert figs["traversals"].shape[1] == SCALE * (2 * TILE + 2)
    assert figs["interpolations"].shape[1:] == (4 * TILE + 2, 10 * TILE + 2)  # 4 pairs × 10 steps
    start = _tiles(figs["interpolations"], 4, 10)[0][0]
    torch.testing.assert_close(start, vae.generate(mu[:1])[0].expand(3, -1, -1))  # top-layer means


def test_training_a_conditional_vae_writes_samples_per_class_after_the_test(
    tmp_path, mnist_root, compose_train
):
    out = tmp_path / "run"
    over = tiny_overrides(mnist_root, out, tmp_path / "cache")
    run(
        compose_train(
            [*over, "dataset.val_size=40", "model=conditional", "callbacks.result_figure.n_images=8"]
        )
    )
    with Image.open(out / "figures" / "samples_per_class.png") as im:
        assert im.size[1] == SCALE * (10 * TILE + 2) and im.size[0] > SCALE * (8 * TILE + 2)
    assert (out / "figures" / "result.png").is_file()
    _, images = read_events(out / "tensorboard")
    assert {"figures/result", "figures/samples_per_class"} <= set(images)
