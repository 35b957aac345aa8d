"""Evaluate a trained VAE from a composed config; no Hydra decorators here, so tests (and
notebooks) call :func:`run` with a config from ``hydra.compose`` and its override list.

The evaluation config is the trained run's saved config (``<run>/.hydra/config.yaml``: dataset,
paths, seed) plus conf/eval.yaml's ``eval``/``figures``/``fid`` sections, with every key set on
the command line applied on top. The model itself is rebuilt from the checkpoint's
hyper-parameters, so it always matches the weights.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch.utils.tensorboard import SummaryWriter
from torchvision.utils import save_image

from vaelab import checkpoints
from vaelab.config import config_tree, validate
from vaelab.data.base import to_unit_float
from vaelab.errors import UserError
from vaelab.expost import ExpostSettings, GaussianMixture, load_or_fit, sample_images
from vaelab.figures import (
    FigureSettings,
    attribute_names,
    expost_rows,
    figure_makers,
    labelled_samples,
    publish,
)
from vaelab.judges import load_or_train_judge
from vaelab.metrics import DataModel, active_units, fid_scores, inception_fid, likelihood_metrics
from vaelab.module import VAEModule
from vaelab.numbers import significant
from vaelab.progress import Progress
from vaelab.rundir import records
from vaelab.sample_quality import MIN_SET, sample_quality

log = logging.getLogger(__name__)


EVAL_KEYS = ("task_name", "ckpt_path", "run_dir", "eval", "figures", "fid")
# config keys that build the model: an evaluation rebuilds it from the checkpoint instead
MODEL_KEYS = ("model", "latent_dim", "net", "likelihood", "prior")


def run_dir_of(ckpt_path: str | None, fallback: str = ".") -> str:
    """The training run a checkpoint belongs to: ``<run>/checkpoints/x.ckpt`` → ``<run>``
    (``fallback`` without an existing checkpoint, so a forgotten or mistyped ckpt_path makes no
    folder in the cwd or beside the typo)."""
    if not ckpt_path or not Path(str(ckpt_path)).is_file():
        return fallback
    parent = Path(str(ckpt_path)).parent
    return str(parent.parent if parent.name == "checkpoints" else parent)


OmegaConf.register_new_resolver("vaelab.run_dir", run_dir_of, replace=True)


def load_checkpoint(path: str | None) -> dict:
    """The one place evaluation reads a checkpoint: safely, see :mod:`vaelab.checkpoints`."""
    if not path:
        raise UserError(
            "ckpt_path is required: python src/eval.py ckpt_path=<run>/checkpoints/last.ckpt "
            "(a checkpoint written by src/train.py)."
        )
    ckpt = checkpoints.load_checkpoint(path)
    if "hyper_parameters" not in ckpt:
        raise UserError(f"ckpt_path={path} is not a vaelab checkpoint (no state_dict/hyper_parameters).")
    checkpoints.check_current_format(ckpt, path)
    return ckpt


def model_from_checkpoint(ckpt: dict):
    """The trained :class:`VAE`, in inference mode, on the CPU."""
    module = VAEModule(**ckpt["hyper_parameters"])
    module.load_state_dict(ckpt["state_dict"])
    return module.vae.eval()


# -- the config ----------------------------------------------------------------------------------
def _overridden_keys(overrides: Sequence[str]) -> list[str]:
    keys = []
    for o in OverridesParser.create().parse_overrides(list(overrides)):
        key = o.key_or_group
        if key.split(".")[0] in MODEL_KEYS:
            raise UserError(
                f"{o.input_line} cannot apply to an evaluation: the model is rebuilt from the "
                f"checkpoint's hyper-parameters, which must match its weights. Evaluate another "
                f"checkpoint instead (ckpt_path=...)."
            )
        if not key.startswith("hydra") and not o.is_delete():
            keys.append(key)
    return keys


def eval_config(cfg: DictConfig, overrides: Sequence[str] = (), own: Sequence[str] = EVAL_KEYS) -> DictConfig:
    """The run's saved config + this command's own sections ``own`` + its explicit overrides."""
    keys = _overridden_keys(overrides)
    run = Path(run_dir_of(cfg.ckpt_path))
    newest = records(run)  # a resume may have changed the data folder: its record is the newest
    saved = newest[-1] / "config.yaml" if newest else run / ".hydra" / "config.yaml"
    if not saved.is_file():
        log.warning("no saved run config at %s: using this command's dataset and paths", saved)
        return cfg
    final = OmegaConf.load(saved)
    for key in own:
        final[key] = cfg[key]
    final.paths.output_dir = cfg.paths.output_dir
    for key in keys:
        value = OmegaConf.select(cfg, key, default=None)
        if value is not None:
            OmegaConf.update(final, key, value, merge=False)
    return final


# -- the evaluation ------------------------------------------------------------------------------
def device_of(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _load_split(cfg: DictConfig, image_shape: tuple) -> tuple[object, dict]:
    datamodule = instantiate(cfg.dataset)
    datamodule.splits = datamodule.load_splits()  # kept: the judge and the ex-post prior read it too
    split = datamodule.splits[cfg.eval.split]
    if cfg.eval.split == "train" and datamodule.binarize:  # training draws fresh 0/1 images each
        # step from the grey ones; a Bernoulli likelihood is scored on one fixed draw, as val/test
        split = {**split, "images": datamodule.fixed_binarization("train", split["images"])}
    if tuple(split["images"].shape[1:]) != tuple(image_shape):
        raise UserError(
            f"The checkpoint's model takes images of shape {tuple(image_shape)}, but "
            f"{cfg.dataset._target_} gives {tuple(split['images'].shape[1:])}: evaluate it on the "
            f"dataset it was trained on (leave dataset=... out to use the run's)."
        )
    if cfg.eval.n:  # the split's first n examples
        split = {key: value[: cfg.eval.n] for key, value in split.items()}
    if len(split["images"]) == 0:
        raise UserError(f"eval.split={cfg.eval.split} has no images in {cfg.dataset.root}.")
    return datamodule, split


def _fid(vae, images, fid_cfg: DictConfig, batch_size: int, labels=None) -> dict:
    """FID numbers and a one-line note; FID never fails the evaluation."""
    metric, note = inception_fid(fid_cfg.weights_path)
    scores = {"fid": None, "fid_reconstructions": None}
    if metric is not None:
        try:
            n = min(fid_cfg.n_samples, len(images))
            with Progress(3 * n, "FID: images through Inception", "images") as bar:
                scores = fid_scores(vae, images, n, batch_size, metric, bar.update, labels)
            note = f"{scores['fid']:.2f} (samples), {scores['fid_reconstructions']:.2f} (reconstructions)"
        except Exception as err:  # optional extra: report, never fail
            note = f"failed: {err}"
    log.info("FID: %s", note)
    return {**scores, "fid_note": note}


@torch.no_grad()
def _expost_prior(cfg: DictConfig, vae, datamodule) -> GaussianMixture | None:
    """The ex-post prior (:mod:`vaelab.expost`): ``eval.expost_components`` Gaussians on the
    training set's posterior means, as the run saved it for these weights (fitted and saved
    when it has none, or with ``eval.expost_refit``); None when ``eval.expost_components`` is 0."""
    ev = cfg.eval
    if not ev.expost_components:
        return None
    settings = ExpostSettings(ev.expost_components, ev.expost_covariance, ev.seed, ev.expost_codes)
    label = f"ex-post prior: {settings.components} Gaussians, encoding training codes"
    return load_or_fit(
        vae, lambda: datamodule, settings, cfg.run_dir, ev.expost_refit, lambda n: Progress(n, label, "codes")
    )


def _sampler(vae, mixture: GaussianMixture | None, temperature: float, seed: int):
    """n → n images of the prior (``mixture`` None) or the ex-post prior, from a seeded stream."""
    generator = torch.Generator().manual_seed(seed)
    return lambda n: sample_images(vae, n, mixture, temperature, generator)


def _quality(cfg: DictConfig, vae, datamodule, split: str, expost: GaussianMixture | None) -> dict:
    """Sample-quality numbers (:mod:`vaelab.sample_quality`) against the evaluated split, with
    the val split (the test split when val is evaluated) as the real held-out floor; prior
    samples, and ex-post prior samples when there is one."""
    ev = cfg.eval
    if not ev.quality:
        return {}
    try:
        judge, accuracy = load_or_train_judge(datamodule, ev.judge_seed, ev.judge_epochs)
    except UserError as err:
        log.warning("no sample-quality numbers: %s", err)
        return {}
    other = "test" if split == "val" else "val"
    test, held_out = datamodule.splits[split]["images"], datamodule.splits[other]["images"]
    n = min(ev.quality_n, len(test), len(held_out))
    if n < MIN_SET:
        log.warning("no sample-quality numbers: %d images per set, fewer than %d", n, MIN_SET)
        return {}
    held_out_labels = datamodule.splits[other]["labels"] if vae.n_conditions else None
    torch.manual_seed(ev.seed)
    samplers = {} if expost is None else {"expost": _sampler(vae, expost, 1.0, ev.seed)}
    sets = 3 + len(samplers)
    with Progress(sets, f"sample quality: {n} images per set, {datamodule.name} judge", "sets") as bar:
        scores = sample_quality(
            vae,
            judge,
            test,
            held_out,
            n,
            cfg.figures.sample_temperature,
            lambda _: bar.update(),
            samplers,
            held_out_labels,
        )
    return {**scores, "quality_n": n, "judge_accuracy": round(accuracy, 4)}


def _export_samples(cfg: DictConfig, vae, expost: GaussianMixture | None) -> None:
    """``eval.export_samples`` samples of ``eval.sampler`` (the prior, or the ex-post prior the
    README's pictures show) at figures.sample_temperature, as PNG files in <eval dir>/samples/."""
    n, which = cfg.eval.export_samples, cfg.eval.sampler
    if not n:
        return
    if which == "expost" and expost is None:
        raise UserError(
            "eval.sampler=expost needs the ex-post prior, but eval.expost_components=0: set "
            "eval.expost_components (e.g. 50) or export the prior's samples with eval.sampler=prior."
        )
    out = Path(cfg.paths.output_dir) / "samples"
    out.mkdir(parents=True, exist_ok=True)
    draw = _sampler(vae, expost if which == "expost" else None, cfg.figures.sample_temperature, cfg.eval.seed)
    with Progress(n, f"exporting {which} samples to {out}", "images") as bar:
        for start in range(0, n, 500):
            images = draw(min(500, n - start))
            for i, image in enumerate(images, start):
                save_image(image, out / f"{i:06d}.png")
            bar.update(len(images))


def _quality_rows(m: dict) -> list[str]:
    if "quality/samples/fd" not in m:
        return ["  sample quality         off (eval.quality=false, or no labels to train a judge on)"]
    names = [k.split("/")[-1] for k in m if k.startswith("quality/samples/")]
    head = "".join(f"{name:>15}" for name in names)
    rows = [f"  sample quality, n = {m['quality_n']} per set, judge accuracy {m['judge_accuracy']}:"]
    rows.append(f"    {'':<17}{head}")
    for kind in ("samples", "expost", "reconstructions", "real"):
        if f"quality/{kind}/fd" not in m:
            continue
        cells = "".join(f"{significant(m[f'quality/{kind}/{name}']):>15}" for name in names)
        rows.append(f"    {kind:<17}{cells}")
    return rows


def format_table(m: dict) -> str:
    """The metrics as a short human-readable table."""

    def num(v, fmt="{:.2f}"):
        return "n/a" if v is None else fmt.format(v)

    rows = [
        f"{m['split']} split of {m['checkpoint']} (step {m['global_step']}): {m['n_examples']} images, "
        f"scored on {m['scored_data']}",
        f"  negative ELBO          {num(m['neg_elbo']):>10} nats  "
        f"(E_q[log p(x|z)] {num(m['recon'])}, KL {num(m['kl'])})",
        f"  IWAE NLL, k = {m['k']:<8} {num(m['nll_iwae']):>10} nats  "
        "(−log p(x) estimate; ≤ negative ELBO up to Monte-Carlo noise)",
        f"  bits/dim               {num(m['bits_per_dim'], '{:.4f}'):>10}       (ELBO: "
        f"{num(m['bits_per_dim_elbo'], '{:.4f}')}; formula: {m['bits_per_dim_formula']})",
        f"  active units           {m['active_units']:>10} of {m['latent_dim']}  (Cov_x E_q[z_j] > "
        f"{m['active_threshold']})",
        *_quality_rows(m),
        f"  FID (Inception)        {m['fid_note']}",
        f"  figures                {m['figures_dir']}",
        f"  wall time              {m['seconds']:>10.1f} s",
    ]
    return "\n".join(rows)


def _numbers(cfg: DictConfig, vae, split: dict) -> tuple[dict, object]:
    """Likelihood metrics, active units and FID; also the posterior means for the figures."""
    ev, images = cfg.eval, split["images"]
    labels = split.get("labels") if vae.n_conditions else None
    data = DataModel.for_likelihood(vae.likelihood.data, images)
    torch.manual_seed(ev.seed)
    gen = torch.Generator().manual_seed(ev.seed)
    with Progress(len(images), f"log p(x), importance sampling with k={ev.k}", "images") as bar:
        metrics, mu = likelihood_metrics(
            vae,
            images,
            labels,
            data,
            ev.k,
            ev.batch_size,
            ev.max_decodes,
            ev.active_threshold,
            gen,
            bar.update,
        )
    metrics.update(
        _fid(vae, images, cfg.fid, ev.batch_size, labels),
        active_threshold=ev.active_threshold,
        bits_per_dim_formula=data.note,
        scored_data=data.scored(ev.seed),
    )
    return metrics, mu


def _pictures(cfg: DictConfig, vae, split: dict, mu, label_names, expost=None) -> dict:
    drawn = {k: v for k, v in OmegaConf.to_container(cfg.figures, resolve=True).items() if k != "dir"}
    if "class_attributes" in drawn:
        drawn["class_attributes"] = tuple(drawn["class_attributes"])
    settings = FigureSettings(**drawn)
    n_shown = max(settings.n_images, 2 * settings.interpolation_pairs)
    x = to_unit_float(split["images"][:n_shown]).to(next(vae.parameters()).device)
    _, activity = active_units(mu, cfg.eval.active_threshold)
    more = expost_rows(expost, settings.n_samples, settings.seed)  # under the prior's in result.png
    makers = figure_makers(vae, x, mu, activity, split.get("labels"), settings, label_names, more)
    if more:
        (label, z), per_row = more[0], settings.per_row
        makers["samples_expost"] = lambda: labelled_samples(vae, z, per_row, label)
    figures = {}
    with Progress(len(makers), "figures", "figures") as bar:
        for name, make in makers.items():
            figures[name] = make()
            bar.update()
    return figures


def _publish(cfg: DictConfig, figures: dict, metrics: dict, step: int) -> None:
    """PNGs into figures.dir; images and the metrics table into the run's TensorBoard, as eval/*."""
    with SummaryWriter(str(Path(cfg.run_dir) / "tensorboard")) as writer:
        publish(figures, Path(cfg.figures.dir), writer, step, prefix="eval")
        # one text panel, not a dozen one-point scalar charts above the training curves
        writer.add_text("eval/metrics", "    " + format_table(metrics).replace("\n", "\n    "), step)


def run(cfg: DictConfig, overrides: Sequence[str] = ()) -> dict:
    """Evaluate ``cfg.ckpt_path``; write metrics.json + metrics.txt, figures and TensorBoard."""
    start = time.perf_counter()
    ckpt = load_checkpoint(cfg.ckpt_path)
    cfg = eval_config(cfg, overrides)
    validate(cfg, hardware=False)  # training and eval fields alike: vaelab.config.RULES
    shown = OmegaConf.masked_copy(
        cfg, ["ckpt_path", "run_dir", "seed", "dataset", "eval", "figures", "fid", "paths"]
    )
    print(config_tree(shown, first=("dataset", "eval", "figures", "fid", "paths")), flush=True)
    hp = ckpt["hyper_parameters"]
    vae = model_from_checkpoint(ckpt).to(device_of(cfg.eval.device))
    datamodule, split = _load_split(cfg, hp["image_shape"])
    metrics, mu = _numbers(cfg, vae, split)
    expost = _expost_prior(cfg, vae, datamodule)
    metrics.update(_quality(cfg, vae, datamodule, cfg.eval.split, expost))
    if expost is not None:  # what quality/expost/* and the ex-post rows of the figures drew from
        metrics["expost_prior"] = f"{len(expost.weights)} Gaussians, {cfg.eval.expost_covariance} covariances"
    figures = _pictures(cfg, vae, split, mu, attribute_names(datamodule), expost)
    _export_samples(cfg, vae, expost)
    step = int(ckpt.get("global_step", 0))
    metrics.update(
        split=cfg.eval.split,
        checkpoint=str(cfg.ckpt_path),
        global_step=step,
        figures_dir=str(cfg.figures.dir),
    )
    metrics["seconds"] = round(time.perf_counter() - start, 1)
    _publish(cfg, figures, metrics, step)
    return _write(metrics, Path(cfg.paths.output_dir))


def _write(metrics: dict, out_dir: Path) -> dict:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    table = format_table(metrics)
    (out_dir / "metrics.txt").write_text(table + "\n")
    print(table, flush=True)
    log.info("evaluation written to %s", out_dir)
    return metrics
