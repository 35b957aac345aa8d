"""The pictures of a trained VAE, as PNG files and TensorBoard images.

Every figure is a (3, H, W) float image in [0, 1], like the grids of :mod:`vaelab.grids`
(which draws reconstructions, samples and interpolations for both training and evaluation);
this module adds the project's result picture, latent traversals, the 2-D manifold, a
scatter of posterior means, a conditional VAE's samples per class and a VampPrior's
pseudo-inputs, and writes them out. Random draws come from a seeded generator, so the same
checkpoint and settings give the same pictures.

Latent figures work on the top stochastic layer (``vae.encode``, ``vae.generate``), so a
hierarchical VAE's traversals and interpolations move its top code. A conditional VAE
reconstructs and encodes test images with their own labels, and decodes a traversal or the
manifold with the label of the test image whose code they start from.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from torch import Tensor
from torchvision.utils import make_grid, save_image

from vaelab.annotate import row_bands, with_row_labels
from vaelab.expost import ExpostSettings, load_or_fit
from vaelab.grids import interpolation_grid, labels_for, reconstruction_grid, sample_grid

log = logging.getLogger(__name__)

GAP = 6  # white rows between the reconstruction block and the sample block of the result picture
SCALE = 2  # labelled figures are enlarged this many times: 28-pixel digits are too small to read
# CelebA attributes toggled in samples_per_class, and their columns in list_attr_celeba.txt (used
# when the file's header is absent or names them otherwise)
CLASS_ATTRIBUTES = ("Smiling", "Male", "Eyeglasses", "Blond_Hair")
CELEBA_COLUMNS = {"Blond_Hair": 9, "Eyeglasses": 15, "Male": 20, "Smiling": 31}
N_PSEUDO_INPUTS = 64  # VampPrior pseudo-inputs shown in pseudo_inputs.png


@dataclass(frozen=True)
class FigureSettings:
    """What the evaluation draws; the YAML comments in conf/eval.yaml explain each field."""

    n_images: int = 16
    n_samples: int = 16
    per_row: int = 8
    sample_temperature: float = 1.0
    seed: int = 0
    interpolation_pairs: int = 4
    interpolation_steps: int = 10
    traversal_dims: int = 8
    traversal_steps: int = 9
    traversal_quantile: float = 0.05
    manifold_size: int = 20
    scatter_attribute: int = 20
    class_attributes: tuple[str, ...] = CLASS_ATTRIBUTES
    class_images: int = 2


# -- the pictures ----------------------------------------------------------------------------
def _stack(grids: list[Tensor], gap: int = GAP) -> Tensor:
    """Grids one above the other, right-padded with white to the widest, ``gap`` rows apart."""
    width = max(g.shape[2] for g in grids)
    parts = []
    for i, g in enumerate(grids):
        if i:
            parts.append(torch.ones(3, gap, width))
        parts.append(torch.nn.functional.pad(g, (0, width - g.shape[2]), value=1.0))
    return torch.cat(parts, dim=1)


def _tile_rows(grid: Tensor, tile: int, padding: int = 2) -> int:
    return (grid.shape[1] - padding) // (tile + padding)


@torch.no_grad()
def result_figure(
    vae,
    x: Tensor,
    n_samples: int,
    per_row: int,
    temperature: float,
    seed: int,
    scale: int = SCALE,
    y: Tensor | None = None,
    more: Sequence[tuple[str, Tensor]] = (),
) -> Tensor:
    """The project's result picture: rows of test images, each over its reconstructions (with
    the images' labels ``y`` on a conditional VAE), then rows of decoded prior samples
    z ~ N(0, temperature² I) (cycling through the classes on a conditional VAE), then the
    decodings of each (label, codes) in ``more`` (another sampler's draws); enlarged ``scale``
    times, each row labelled."""
    z = vae.prior_sample(n_samples, temperature, generator=torch.Generator().manual_seed(seed))
    recon = reconstruction_grid(vae, x, per_row, y)
    tile = x.shape[-2]
    kinds = ("test image", "reconstruction")
    labels = [(band, kinds[r % 2]) for r, band in enumerate(row_bands(_tile_rows(recon, tile), tile))]
    grids, top = [recon], recon.shape[1]
    for label, codes in [(f"sample, T = {temperature:g}", z), *more]:
        grid = sample_grid(vae, codes, per_row)
        labels += [(band, label) for band in row_bands(_tile_rows(grid, tile), tile, top=top + GAP)]
        grids.append(grid)
        top += GAP + grid.shape[1]
    return with_row_labels(_stack(grids), labels, scale)


def expost_rows(mixture, n: int, seed: int) -> list[tuple[str, Tensor]]:
    """The result picture's rows of ex-post prior draws (none without a mixture): n seeded codes."""
    if mixture is None:
        return []
    z = mixture.sample(n, torch.Generator().manual_seed(seed))
    return [(f"ex-post sample ({len(mixture.weights)} Gaussians)", z)]


@torch.no_grad()
def labelled_samples(vae, z: Tensor, per_row: int, label: str, scale: int = SCALE) -> Tensor:
    """Decodings of the codes ``z``, every row labelled ``label`` (e.g. which sampler drew them)."""
    grid = sample_grid(vae, z, per_row)
    tile = vae.image_shape[1]
    return with_row_labels(grid, [(band, label) for band in row_bands(_tile_rows(grid, tile), tile)], scale)


@torch.no_grad()
def traversal_grid(
    vae, z0: Tensor, dims: list[int], values: Tensor, scale: int = SCALE, y0: Tensor | None = None
) -> Tensor:
    """One row per latent dim: z0 with that one coordinate swept over its row of ``values``
    (len(dims), steps), the others fixed; each row labelled with its dim and range. A
    conditional VAE decodes every tile with ``y0``, the label of the image z0 encodes."""
    steps = values.shape[1]
    z = z0.reshape(1, -1).repeat(len(dims) * steps, 1)
    for row, dim in enumerate(dims):
        z[row * steps : (row + 1) * steps, dim] = values[row].to(z)
    images = vae.generate(z, _repeated(vae, y0, len(z))).float().cpu()
    grid = make_grid(images, nrow=steps, padding=2, pad_value=1.0)
    bands = row_bands(len(dims), images.shape[-2])
    text = [f"z{d}: {v[0]:.2f} … {v[-1]:.2f}" for d, v in zip(dims, values.tolist(), strict=True)]
    return with_row_labels(grid, list(zip(bands, text, strict=True)), scale)


@torch.no_grad()
def manifold_grid(
    vae, size: int, z1: Tensor | None = None, z2: Tensor | None = None, y0: Tensor | None = None
) -> Tensor:
    """The classic 2-D figure: decodings over a size×size grid, z₁ growing to the right and z₂
    upwards, at the given values (say the 5 %…95 % quantiles of the test set's posterior means,
    so the grid covers where the codes are); N(0, 1) quantiles when none are given. A
    conditional VAE decodes the whole grid with the one label ``y0``."""
    prior = torch.distributions.Normal(0.0, 1.0).icdf(torch.linspace(0.05, 0.95, size))
    z1, z2 = (prior if v is None else v.float().cpu() for v in (z1, z2))
    rows, cols = torch.meshgrid(z2.flip(0), z1, indexing="ij")
    z = torch.stack([cols.flatten(), rows.flatten()], dim=1).to(next(vae.parameters()).device)
    return make_grid(vae.generate(z, _repeated(vae, y0, len(z))).float().cpu(), nrow=size, padding=0)


def _repeated(vae, y0: Tensor | None, n: int) -> Tensor | None:
    """One example's label (a class index or an attribute vector) n times, for a conditional VAE."""
    y0 = labels_for(vae, y0)
    return None if y0 is None else y0.unsqueeze(0).expand(n, *y0.shape)


def _toggled_columns(names: list[str] | None, wanted, n_conditions: int) -> list[tuple[int, str]]:
    """(column, name) of each attribute in ``wanted``: found by name in the attribute header
    ``names`` when it lists it, else at its column in CelebA's list_attr_celeba.txt."""
    columns = []
    for name in wanted:
        if names and name in names:
            col = names.index(name)
        elif name in CELEBA_COLUMNS:
            col = CELEBA_COLUMNS[name]
        else:
            continue
        if col < n_conditions:
            text = names[col] if names and col < len(names) else name
            columns.append((col, text))
    if not columns:  # a label vector too short for these: its first columns
        columns = [
            (c, names[c] if names and c < len(names) else f"attribute {c}") for c in range(n_conditions)
        ]
    return columns[: max(1, len(wanted))]


@torch.no_grad()
def samples_per_class(
    vae,
    per_row: int,
    seed: int,
    temperature: float = 1.0,
    labels: Tensor | None = None,
    names: list[str] | None = None,
    attributes=CLASS_ATTRIBUTES,
    n_images: int = 2,
    scale: int = SCALE,
) -> Tensor:
    """A conditional VAE's samples, the same ``per_row`` prior codes in every row, so a column
    shows one style under every condition; each row labelled with its condition.

    Class labels (MNIST: ``labels`` None or 1-D): one row per class 0 … n − 1. Attribute vectors
    (CelebA: 2-D ``labels``, test images' labels): for each of the first ``n_images`` of them, a
    row with the vector as it is, then one row per attribute of ``attributes`` with that one
    attribute toggled (found by name in the attribute header ``names``).
    """
    z = vae.prior_sample(per_row, temperature, generator=torch.Generator().manual_seed(seed))
    if labels is None or labels.dim() == 1:
        conditions = [torch.tensor(c) for c in range(vae.n_conditions)]
        texts = [f"class {c}" for c in range(vae.n_conditions)]
    else:
        conditions, texts = [], []
        columns = _toggled_columns(names, list(attributes), vae.n_conditions)
        for i in range(min(n_images, len(labels))):
            base = labels[i].float().cpu()
            conditions.append(base)
            texts.append(f"test image {i + 1}")
            for col, name in columns:
                toggled = base.clone()
                toggled[col] = 1.0 - toggled[col]
                conditions.append(toggled)
                texts.append(f"image {i + 1}, {'with' if toggled[col] > 0.5 else 'without'} {name}")
    y = torch.stack(conditions).repeat_interleave(per_row, dim=0).to(z.device)
    draws = torch.Generator().manual_seed(0)  # lower stochastic layers: the same draws every call
    images = vae.generate(z.repeat(len(conditions), 1), y, stochastic=True, generator=draws)
    grid = make_grid(images.float().cpu(), nrow=per_row, padding=2, pad_value=1.0)
    bands = row_bands(len(conditions), vae.image_shape[1])
    return with_row_labels(grid, list(zip(bands, texts, strict=True)), scale)


@torch.no_grad()
def pseudo_inputs_grid(vae, n: int = N_PSEUDO_INPUTS, per_row: int = 8) -> Tensor:
    """The first ``n`` of a VampPrior's learned pseudo-inputs u_k, the images whose posteriors
    q(z|u_k) make up the prior."""
    images = vae.prior.pseudo_inputs()[:n].detach().float().cpu()
    return make_grid(images, nrow=per_row, padding=2, pad_value=1.0)


def has_pseudo_inputs(vae) -> bool:
    return callable(getattr(getattr(vae, "prior", None), "pseudo_inputs", None))


def attribute_names(datamodule) -> list[str] | None:
    """Attribute names from CelebA's list_attr_celeba.txt header, when the dataset has one."""
    path = getattr(datamodule, "attr_file", None)
    if path is None or not Path(path).is_file():
        return None
    with open(path) as f:
        f.readline()
        return f.readline().split()


def aggregate_quantiles(mu: Tensor, levels: Tensor) -> Tensor:
    """(D, len(levels)): each latent dim's quantiles over the posterior means ``mu`` (N, D), the
    aggregate posterior's range, which is where a trained model's codes live."""
    return torch.quantile(mu.detach().float().cpu(), levels, dim=0).T


def _render(fig: Figure) -> Tensor:
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    rgb = np.asarray(canvas.buffer_rgba())[..., :3].copy()
    return torch.from_numpy(rgb).permute(2, 0, 1).float() / 255.0


def _classes(labels: Tensor | None, attribute: int, names: list[str] | None):
    """(per-point class, class → legend text): digit classes, one binary attribute, or (None, None)."""
    if labels is None or labels.numel() == 0:
        return None, None
    if labels.dim() == 1:
        return labels.numpy(), lambda c: f"class {c}"
    column = min(attribute, labels.shape[1] - 1)
    name = names[column] if names and column < len(names) else f"attribute {column}"
    return labels[:, column].numpy(), lambda c: name if c else f"not {name}"


def latent_scatter(
    mu: Tensor, labels: Tensor | None, attribute: int = 20, names: list[str] | None = None
) -> Tensor:
    """Test-set posterior means in 2-D (the latent itself when D = 2, else its first two
    principal components), coloured by label; a 500×500 image."""
    mu = mu.detach().double().cpu()
    if mu.shape[1] == 2:
        coords, axes = mu, ("z₁", "z₂")
    else:
        centred = mu - mu.mean(dim=0)
        _, s, vh = torch.linalg.svd(centred, full_matrices=False)
        share = (s**2 / (s**2).sum()).tolist()
        coords = centred @ vh[:2].T
        axes = (f"PC 1 ({share[0]:.0%} of variance)", f"PC 2 ({share[1]:.0%})")
    classes, legend = _classes(labels, attribute, names)
    fig = Figure(figsize=(5, 5), dpi=100)
    ax = fig.add_subplot()
    xy = coords.numpy()
    if classes is None:
        ax.scatter(xy[:, 0], xy[:, 1], s=2, alpha=0.5)
    else:
        for c in np.unique(classes):
            pick = classes == c
            ax.scatter(xy[pick, 0], xy[pick, 1], s=2, alpha=0.5, label=legend(c))
        ax.legend(markerscale=5, fontsize=7, loc="best")
    ax.set_xlabel(axes[0])
    ax.set_ylabel(axes[1])
    ax.set_title("posterior means of the test set")
    fig.tight_layout()
    return _render(fig)


def figure_makers(
    vae,
    x: Tensor,
    mu: Tensor,
    activity: Tensor,
    labels: Tensor | None,
    settings: FigureSettings,
    label_names: list[str] | None = None,
    more_samples: Sequence[tuple[str, Tensor]] = (),
) -> dict[str, Callable[[], Tensor]]:
    """Each figure of an evaluation by file name, as a function that draws it, so a caller can
    show progress between figures. ``x``: test images in [0, 1] (first ones used), ``mu``:
    their top-layer posterior means (N, D), ``activity``: Cov_x E_q[z] per dim, ``labels``: the
    N images' labels (colours of the scatter; a conditional VAE's conditions), ``label_names``:
    CelebA's attribute names, ``more_samples``: (label, codes) of other samplers for the result
    picture. A conditional VAE adds ``samples_per_class``, a VampPrior ``pseudo_inputs``."""
    s = settings
    pairs = min(s.interpolation_pairs, len(x) // 2)
    dims = activity.argsort(descending=True)[: s.traversal_dims].tolist()
    q = s.traversal_quantile
    values = aggregate_quantiles(mu[:, dims], torch.linspace(q, 1 - q, s.traversal_steps))
    device = next(vae.parameters()).device
    conditional = bool(getattr(vae, "n_conditions", 0)) and labels is not None
    y = labels[: len(x)] if conditional else None  # the shown images' own labels
    y0 = None if y is None else y[0]  # the label of the image whose code mu[0] is
    y_a, y_b = (None, None) if y is None else (y[:pairs], y[pairs : 2 * pairs])
    makers = {
        "result": lambda: result_figure(
            vae, x[: s.n_images], s.n_samples, s.per_row, s.sample_temperature, s.seed, y=y, more=more_samples
        ),
        "interpolations": lambda: interpolation_grid(
            vae, x[:pairs], x[pairs : 2 * pairs], s.interpolation_steps, y_a, y_b
        ),
        "traversals": lambda: traversal_grid(vae, mu[0].to(device), dims, values, y0=y0),
        "latent_scatter": lambda: latent_scatter(mu, labels, s.scatter_attribute, label_names),
    }
    if mu.shape[1] == 2:
        z1, z2 = aggregate_quantiles(mu, torch.linspace(q, 1 - q, s.manifold_size))
        makers["manifold"] = lambda: manifold_grid(vae, s.manifold_size, z1, z2, y0=y0)
    if getattr(vae, "n_conditions", 0):
        makers["samples_per_class"] = lambda: samples_per_class(
            vae,
            s.per_row,
            s.seed,
            s.sample_temperature,
            labels,
            label_names,
            s.class_attributes,
            s.class_images,
        )
    if has_pseudo_inputs(vae):
        makers["pseudo_inputs"] = lambda: pseudo_inputs_grid(vae, N_PSEUDO_INPUTS, s.per_row)
    return makers


def evaluation_figures(*args, **kwargs) -> dict[str, Tensor]:
    """All figures of :func:`figure_makers` (same arguments), drawn."""
    return {name: make() for name, make in figure_makers(*args, **kwargs).items()}


# -- writing them out ------------------------------------------------------------------------
def publish(figures: dict[str, Tensor], out_dir: Path, writer=None, step: int = 0, prefix="figures"):
    """Each figure as ``<out_dir>/<name>.png`` and, given a SummaryWriter, as a TensorBoard image."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, image in figures.items():
        paths[name] = out_dir / f"{name}.png"
        save_image(image, paths[name])
        if writer is not None:
            writer.add_image(f"{prefix}/{name}", image, global_step=step)
    return paths


@contextlib.contextmanager
def evaluation_mode(module: torch.nn.Module):
    """Batch norm in inference mode while drawing, and the module's own mode restored after."""
    was_training = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(was_training)


class ResultFigure(L.Callback):
    """After the test, on rank 0: ``<dirpath>/result.png`` (and TensorBoard ``figures/result``),
    the result picture of the tested model on the first test images (reconstructed with their
    labels on a conditional VAE); a conditional VAE adds ``samples_per_class.png``, a VampPrior
    ``pseudo_inputs.png``. The ex-post prior its picture draws from is saved in
    ``<run_dir>/expost/`` (:func:`vaelab.expost.load_or_fit`), where evaluation finds it."""

    def __init__(
        self,
        dirpath: str,
        n_images: int = 16,
        n_samples: int = 16,
        per_row: int = 8,
        sample_temperature: float = 1.0,
        seed: int = 0,
        class_attributes=CLASS_ATTRIBUTES,
        class_images: int = 2,
        expost_components: int = 50,
        expost_covariance: str = "full",
        expost_codes: int = 10_000,
        run_dir: str | None = None,
    ):
        self.dirpath, self.n_images, self.n_samples = dirpath, n_images, n_samples
        self.expost = ExpostSettings(expost_components, expost_covariance, seed, expost_codes)
        self.run_dir = run_dir
        self.per_row, self.temperature, self.seed = per_row, sample_temperature, seed
        self.class_attributes, self.class_images = tuple(class_attributes), class_images
        self._images: Tensor | None = None
        self._labels: Tensor | None = None

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        if batch_idx == 0 and self._images is None:  # the test split is unshuffled: the first images
            self._images = batch[0][: self.n_images].detach()
            has_labels = len(batch) > 1 and isinstance(batch[1], Tensor) and len(batch[1]) == len(batch[0])
            self._labels = batch[1][: max(self.n_images, self.class_images)].detach() if has_labels else None

    def figures(self, vae, names: list[str] | None = None, expost=None) -> dict[str, Tensor]:
        """The figures of ``vae`` on the images (and labels) kept from the first test batch; with
        ``expost`` (a :class:`~vaelab.expost.GaussianMixture`), its samples under the prior's."""
        y = self._labels if vae.n_conditions else None
        more = expost_rows(expost, self.n_samples, self.seed)
        with evaluation_mode(vae):
            out = {
                "result": result_figure(
                    vae,
                    self._images,
                    self.n_samples,
                    self.per_row,
                    self.temperature,
                    self.seed,
                    y=y,
                    more=more,
                )
            }
            if vae.n_conditions:
                out["samples_per_class"] = samples_per_class(
                    vae,
                    self.per_row,
                    self.seed,
                    self.temperature,
                    y,
                    names,
                    self.class_attributes,
                    self.class_images,
                )
            if has_pseudo_inputs(vae):
                out["pseudo_inputs"] = pseudo_inputs_grid(vae, N_PSEUDO_INPUTS, self.per_row)
        return out

    def _expost(self, vae, datamodule):
        """The ex-post prior of the training codes, saved with the run (None: off, or no
        training split)."""
        if not self.expost.components or "train" not in getattr(datamodule, "splits", {}):
            return None
        with evaluation_mode(vae):
            return load_or_fit(vae, lambda: datamodule, self.expost, self.run_dir)

    def on_test_end(self, trainer, pl_module) -> None:
        if not trainer.is_global_zero or self._images is None:
            return
        datamodule = getattr(trainer, "datamodule", None)
        figures = self.figures(
            pl_module.vae, attribute_names(datamodule), self._expost(pl_module.vae, datamodule)
        )
        writers = [lg.experiment for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)]
        publish(figures, Path(self.dirpath), writers[0] if writers else None, trainer.global_step)
        self._images = self._labels = None
