"""src/eval.py on tiny checkpoints: numbers, table, figures, TensorBoard, config merging, errors."""

import json
import logging
import math
import os
import re
import subprocess
import sys

import pytest
import torch
from conftest import ROOT, compose_config, tiny_overrides, write_celeba, write_mnist
from events import read_events
from omegaconf import OmegaConf
from PIL import Image

from vaelab import evaluate as evaluate_module
from vaelab.errors import UserError
from vaelab.evaluate import run as evaluate
from vaelab.train import run as train


def _train(tmp, data_root, extra: list[str]):
    """A two-step run, its config saved where Hydra saves it; returns the run folder."""
    run_dir = tmp / "run"
    cfg = compose_config(
        config_name="train", overrides=[*tiny_overrides(data_root, run_dir, tmp / "cache"), *extra]
    )
    train(cfg)
    (run_dir / ".hydra").mkdir()
    OmegaConf.save(cfg, run_dir / ".hydra" / "config.yaml")
    return run_dir


def _evaluate(run_dir, out, extra=()):
    overrides = [f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}", f"paths.output_dir={out}", *extra]
    return evaluate(compose_config(config_name="eval", overrides=overrides), overrides)


@pytest.fixture(scope="module")
def mnist_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mnist")
    return _train(tmp, write_mnist(tmp / "data"), ["dataset.val_size=40", "latent_dim=2"])


def _size(path):
    with Image.open(path) as im:
        return im.size, im.mode


def test_eval_writes_metrics_table_figures_and_tensorboard(mnist_run, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="vaelab.progress")  # no terminal here: log lines
    caplog.set_level(logging.INFO, logger="vaelab.expost")
    m = _evaluate(mnist_run, tmp_path / "a", ["eval.k=20", "eval.batch_size=50", "eval.export_samples=7"])
    saved = json.loads((tmp_path / "a" / "metrics.json").read_text())
    assert saved == {**m, "seconds": saved["seconds"]}
    assert (m["n_examples"], m["k"], m["latent_dim"], m["global_step"]) == (120, 20, 2, 2)
    assert m["nll_iwae"] <= m["neg_elbo"]
    assert m["neg_elbo"] == pytest.approx(m["kl"] - m["recon"])
    assert m["bits_per_dim"] == pytest.approx(m["nll_iwae"] / (784 * math.log(2)) + 8)
    assert "dequantised" in m["bits_per_dim_formula"] and 0 <= m["active_units"] <= 2
    assert m["fid"] is None and m["fid_note"].startswith("skipped: set fid.weights_path")
    table = (tmp_path / "a" / "metrics.txt").read_text()
    assert "IWAE NLL, k = 20" in table and f"{m['neg_elbo']:.2f}" in table
    figures = tmp_path / "a" / "figures"  # the evaluation's own folder: the run's stay as trained
    assert (mnist_run / "figures" / "result.png").is_file() and not (
        mnist_run / "figures" / "manifold.png"
    ).exists()
    (width, height), mode = _size(figures / "result.png")  # enlarged twice, a label margin on the left
    samples = 6 + 2 * 30 + 2  # a gap and a band of two rows of 8: prior samples, then ex-post ones
    assert height == 2 * (4 * 30 + 2 + 2 * samples) and width > 2 * 242 and mode == "RGB"
    assert _size(figures / "manifold.png")[0] == (20 * 28, 20 * 28)  # latent_dim = 2
    assert _size(figures / "latent_scatter.png")[0] == (500, 500)
    assert _size(figures / "samples_expost.png")[0][1] == 2 * (2 * 30 + 2)  # 16 samples, 8 a row
    assert _size(figures / "traversals.png")[0][1] == 2 * (2 * 30 + 2)  # both dims, enlarged twice
    scalars, images = read_events(mnist_run / "tensorboard")
    assert {"eval/result", "eval/manifold", "eval/traversals"} <= set(images)
    assert not [t for t in scalars if t.startswith("eval/")]  # a text panel, not one-point charts
    # sample quality: every set scored with every number, real held-out images as the floor
    sets = ("samples", "expost", "reconstructions", "real")
    names = ("fd", "precision", "recall", "confident")
    assert all(f"quality/{s}/{n}" in m for s in sets for n in (*names, "class_entropy"))
    assert m["quality_n"] == 40 and 0 < m["judge_accuracy"] <= 1  # capped by the 40 val images
    assert m["quality/real/fd"] < m["quality/samples/fd"]
    assert "sample quality, n = 40 per set" in table and "reconstructions" in table
    exported = sorted((tmp_path / "a" / "samples").glob("*.png"))
    assert [p.name for p in exported] == [f"{i:06d}.png" for i in range(7)]
    assert _size(exported[0]) == ((28, 28), "RGB")
    progress = [
        re.sub(
            r"\d+(\.\d+)? (s|figures/s|images/s|sets/s)\b",
            "T",
            r.getMessage().replace(str(tmp_path / "a" / "samples"), "X"),
        )
        for r in caplog.records
        if r.name == "vaelab.progress"
    ]
    scoring = "log p(x), importance sampling with k=20: "
    quality = "sample quality: 40 images per set, mnist judge: "
    assert progress == [
        f"{scoring}120 images ...",
        f"{scoring}50/120 images (42%), T elapsed, about T left",
        f"{scoring}100/120 images (83%), T elapsed, about T left",
        f"{scoring}120 images in T, T",
        f"{quality}4 sets ...",
        *[f"{quality}{i}/4 sets ({25 * i}%), T elapsed, about T left" for i in range(1, 4)],
        f"{quality}4 sets in T, T",
        "figures: 6 figures ...",
        *[f"figures: {i}/6 figures ({round(100 * i / 6)}%), T elapsed, about T left" for i in range(1, 6)],
        "figures: 6 figures in T, T",
        "exporting expost samples to X: 7 images ...",
        "exporting expost samples to X: 7 images in T, T",
    ]
    # the ex-post prior training saved for these weights is read, not fitted again
    saved = [r.getMessage() for r in caplog.records if r.name == "vaelab.expost"]
    assert len(saved) == 1 and "50 Gaussians, full covariances, read from" in saved[0], saved
    assert str(mnist_run / "expost") in saved[0] and "scored on uniformly dequantised" in table


def test_the_run_supplies_the_data_overrides_win_and_the_seed_fixes_everything(mnist_run, tmp_path):
    runs = [
        _evaluate(mnist_run, tmp_path / d, ["eval.k=2", "eval.split=val", f"figures.dir={tmp_path / d}"])
        for d in ("a", "b")
    ]
    assert runs[0]["n_examples"] == 40 and runs[0]["split"] == "val"  # the run's val_size and data_dir
    assert runs[0]["nll_iwae"] == runs[1]["nll_iwae"]
    for name in ("result", "traversals", "latent_scatter"):
        assert (tmp_path / "a" / f"{name}.png").read_bytes() == (tmp_path / "b" / f"{name}.png").read_bytes()


def test_a_missing_checkpoint_model_overrides_and_a_dataset_of_another_shape_are_refused(mnist_run, tmp_path):
    with pytest.raises(UserError, match="none.ckpt does not exist"):
        evaluate(compose_config(config_name="eval", overrides=[f"ckpt_path={tmp_path / 'none.ckpt'}"]))
    with pytest.raises(UserError, match="latent_dim=4 cannot apply to an evaluation"):
        _evaluate(mnist_run, tmp_path, ["latent_dim=4"])
    for override in (
        "net=conv",
        "net.hidden=[8]",
        "likelihood=bernoulli",
        "prior=vamp",
        "model.conditional=true",
    ):
        with pytest.raises(UserError, match=f"{re.escape(override)} cannot apply to an evaluation"):
            _evaluate(mnist_run, tmp_path, [override])
    celeba = write_celeba(tmp_path / "celeba", n=24)
    with pytest.raises(UserError, match=r"shape \(1, 28, 28\).*gives \(3, 64, 64\)"):
        _evaluate(
            mnist_run, tmp_path, ["dataset=celeba", f"paths.data_dir={celeba}", "dataset.decode_workers=1"]
        )


def test_bernoulli_on_binarised_digits_reports_discrete_bits_per_dim(tmp_path, mnist_root, monkeypatch):
    run_dir = _train(
        tmp_path, mnist_root, ["dataset.val_size=40", "likelihood=bernoulli", "dataset.binarize=true"]
    )
    m = _evaluate(run_dir, tmp_path / "eval", ["eval.k=10"])
    assert "discrete" in m["bits_per_dim_formula"]
    assert m["bits_per_dim"] == pytest.approx(m["nll_iwae"] / (784 * math.log(2)))
    assert 0 < m["nll_iwae"] <= m["neg_elbo"]
    scored, numbers = [], evaluate_module._numbers
    monkeypatch.setattr(
        evaluate_module,
        "_numbers",
        lambda cfg, vae, split: scored.append(split["images"]) or numbers(cfg, vae, split),
    )
    for _ in range(2):  # the train split too is scored on 0/1 pixels, the same draw each time
        _evaluate(run_dir, tmp_path / "eval-train", ["eval.k=2", "eval.split=train"])
    assert set(scored[0].unique().tolist()) == {0, 255} and torch.equal(scored[0], scored[1])


def test_celeba_checkpoint_gives_colour_64px_figures(tmp_path, celeba_root):
    extra = ["dataset=celeba", "latent_dim=4", "dataset.decode_workers=1", "net.channels=[8,8,8,8]"]
    run_dir = _train(tmp_path, celeba_root, extra)
    m = _evaluate(run_dir, tmp_path / "eval", ["eval.k=4", "figures.n_images=8", "figures.n_samples=8"])
    assert m["n_examples"] == 8 and m["nll_iwae"] <= m["neg_elbo"]
    tile = 64 + 2
    (width, height), mode = _size(tmp_path / "eval" / "figures" / "result.png")
    samples = 6 + tile + 2  # a gap and one row of samples: the prior's, then the ex-post prior's
    assert height == 2 * (2 * tile + 2 + 2 * samples) and width > 2 * (8 * tile + 2) and mode == "RGB"
    assert not (tmp_path / "eval" / "figures" / "manifold.png").exists()  # latent_dim 4: no 2-D manifold


def test_conditional_vamp_checkpoint_adds_samples_per_class_and_pseudo_inputs(tmp_path, mnist_root):
    extra = ["dataset.val_size=40", "model=conditional", "prior=vamp", "prior.components=20"]
    run_dir = _train(tmp_path, mnist_root, extra)
    m = _evaluate(
        run_dir,
        tmp_path / "eval",
        ["eval.k=4", "eval.n=30", "eval.quality=false", "eval.expost_components=0", "figures.per_row=6"],
    )
    assert m["n_examples"] == 30 and m["nll_iwae"] <= m["neg_elbo"]  # IWAE ≥ ELBO on the same samples
    figures = tmp_path / "eval" / "figures"
    (width, height), _ = _size(figures / "samples_per_class.png")
    assert height == 2 * (10 * 30 + 2) and width > 2 * (6 * 30 + 2)  # 10 digits × 6 codes, labelled
    assert _size(figures / "pseudo_inputs.png")[0] == (6 * 30 + 2, 4 * 30 + 2)  # 20 pseudo-inputs, 6 a row
    _, images = read_events(run_dir / "tensorboard")
    assert {"eval/samples_per_class", "eval/pseudo_inputs"} <= set(images)


def _eval_cli(args):
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.run(
        [sys.executable, str(ROOT / "src" / "eval.py"), *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )


def test_cli_writes_its_log_and_metrics_next_to_the_run(mnist_run):
    proc = _eval_cli([f"ckpt_path={mnist_run / 'checkpoints' / 'last.ckpt'}", "eval.k=3"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "IWAE NLL, k = 3" in proc.stdout and "bits/dim" in proc.stdout
    assert json.loads((mnist_run / "eval" / "metrics.json").read_text())["k"] == 3
    log = (mnist_run / "eval" / "eval.log").read_text()
    assert "log p(x), importance sampling with k=3: 100/120 images (83%), " in log
    assert "\r" not in proc.stderr and "figures: 6 figures in " in log  # stderr is no terminal: no bar


@pytest.mark.parametrize(
    "override,message",
    [
        ("eval.k=0", "eval.k=0 is invalid: it must be a whole number > 0"),
        (
            "figures.sample_temperature=-1",
            "figures.sample_temperature=-1 is invalid: it must be a number > 0",
        ),
        ("eval.split=dev", "eval.split='dev' is invalid: it must be one of train, val, test"),
    ],
)
def test_bad_eval_values_are_named_by_the_one_validation_module(mnist_run, tmp_path, override, message):
    with pytest.raises(UserError, match=re.escape(message)):
        _evaluate(mnist_run, tmp_path / "bad", [override])
    assert not (tmp_path / "bad" / "metrics.json").exists()


def test_fid_shows_its_progress_through_inception(mnist_run, tmp_path, monkeypatch, caplog):
    from test_metrics import _Features  # Inception's stand-in: no weights needed
    from torchmetrics.image.fid import FrechetInceptionDistance

    metric = FrechetInceptionDistance(feature=_Features(), normalize=True, reset_real_features=False)
    monkeypatch.setattr(evaluate_module, "inception_fid", lambda path: (metric, ""))
    caplog.set_level(logging.INFO, logger="vaelab.progress")
    m = _evaluate(mnist_run, tmp_path / "fid", ["eval.k=2", "eval.batch_size=50", "fid.n_samples=100"])
    assert m["fid"] > 0 and m["fid_note"].startswith(f"{m['fid']:.2f} (samples)")
    progress = [r.getMessage() for r in caplog.records if r.name == "vaelab.progress"]
    lines = [line for line in progress if line.startswith("FID")]
    assert lines[0] == "FID: images through Inception: 300 images ..."  # 100 real + 100 recons + 100 samples
    assert lines[1].startswith("FID: images through Inception: 100/300 images (33%), ")
    assert lines[-1].startswith("FID: images through Inception: 300 images in ")


def test_eval_and_training_score_a_checkpoint_on_the_same_data_and_agree(tmp_path, mnist_root):
    """One quantity, one number: training's test ELBO (every test image, one z each) and
    src/eval.py's (k = 50) of the same checkpoint, both on dequantised data (k + u)/256, agree to
    within Monte-Carlo noise (training's test once scored k/255: 12 nats off on real MNIST)."""
    extra = ["dataset.val_size=40", "latent_dim=2", "trainer.limit_train_batches=20"]
    extra += ["trainer.limit_test_batches=1.0", "dataset.eval_batch_size=60", "callbacks.sample_quality=null"]
    run_dir = _train(tmp_path, mnist_root, extra)
    trained = json.loads((run_dir / "metrics.json").read_text())
    assert trained["scored_data"].startswith("uniformly dequantised 8-bit data (k + u)/256")
    best = next((run_dir / "checkpoints").glob("epoch*.ckpt"))
    overrides = [f"ckpt_path={best}", f"paths.output_dir={tmp_path / 'eval'}", "eval.k=50"]
    overrides += ["eval.quality=false", "eval.expost_components=0"]
    m = evaluate(compose_config(config_name="eval", overrides=overrides), overrides)
    assert m["n_examples"] == 120 and m["scored_data"].startswith("uniformly dequantised 8-bit data")
    assert m["neg_elbo"] == pytest.approx(-trained["test/elbo"], abs=3.0)  # 120 images: ±2 nats of noise


def test_the_ex_post_prior_is_fitted_once_per_weights_and_settings_and_exports_choose_a_sampler(
    mnist_run, tmp_path, caplog
):
    caplog.set_level(logging.INFO, logger="vaelab.expost")
    extra = ["eval.k=2", "eval.quality=false", "eval.expost_components=3", "eval.export_samples=4"]
    first = _evaluate(mnist_run, tmp_path / "a", extra)
    second = _evaluate(mnist_run, tmp_path / "b", extra)
    said = [r.getMessage() for r in caplog.records if r.name == "vaelab.expost"]
    assert "fitted to 280 training codes" in said[0] and "read from" in said[1] and len(said) == 2
    assert len(list((mnist_run / "expost").glob("*-3full-seed0-codes10000-v1.pt"))) == 1
    assert first["expost_prior"] == second["expost_prior"] == "3 Gaussians, full covariances"
    a, b = (sorted((tmp_path / d / "samples").glob("*.png")) for d in ("a", "b"))
    assert [p.read_bytes() for p in a] == [p.read_bytes() for p in b] and len(a) == 4  # seeded
    _evaluate(mnist_run, tmp_path / "c", [*extra, "eval.sampler=prior"])
    prior = sorted((tmp_path / "c" / "samples").glob("*.png"))
    assert [p.read_bytes() for p in prior] != [p.read_bytes() for p in a]  # another sampler's draws
    _evaluate(mnist_run, tmp_path / "d", [*extra, "eval.expost_refit=true"])
    assert "fitted to 280 training codes" in caplog.records[-1].getMessage()
    with pytest.raises(UserError, match="eval.sampler=expost needs the ex-post prior.*eval.sampler=prior"):
        _evaluate(
            mnist_run,
            tmp_path / "e",
            ["eval.k=2", "eval.quality=false", "eval.expost_components=0", "eval.export_samples=2"],
        )
