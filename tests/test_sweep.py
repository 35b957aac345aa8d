"""Sweeps: the summary after a real multirun, the summary's rules on hand-made job dirs,
and the Optuna sweeper / SLURM launcher configs (when those optional plugins are installed)."""

from __future__ import annotations

import csv
import importlib.util
import json
from pathlib import Path

import pytest
import yaml
from conftest import cli_overrides, compose_config, run_train_cli
from events import read_events, read_hparams
from hydra.utils import instantiate
from omegaconf import OmegaConf
from PIL import Image

from vaelab import sweep_summary


def has_plugin(name: str) -> bool:
    """Whether the optional Hydra plugin ``hydra_plugins.<name>`` is installed (CI installs none)."""
    try:
        return importlib.util.find_spec(f"hydra_plugins.{name}") is not None
    except ModuleNotFoundError:  # not even the hydra_plugins namespace exists
        return False


def test_two_by_two_multirun_ends_with_summary_table_plot_and_hparams(tmp_path, mnist_root):
    args = ["-m", "latent_dim=2,3", "net=mlp,conv"]
    proc = run_train_cli(args + cli_overrides(tmp_path, mnist_root))
    assert proc.returncode == 0, proc.stderr[-3000:]
    (sweep,) = (tmp_path / "outputs" / "multirun").iterdir()
    with open(sweep / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    # job folders (and so TensorBoard's run names) carry the swept overrides only
    assert [(r["job"], r["latent_dim"], r["net"]) for r in rows] == [
        ("0_latent_dim-2+net-mlp", "2", "mlp"),
        ("1_latent_dim-2+net-conv", "2", "conv"),
        ("2_latent_dim-3+net-mlp", "3", "mlp"),
        ("3_latent_dim-3+net-conv", "3", "conv"),
    ]
    for row in rows:  # the table's numbers are each job's own metrics.json
        metrics = json.loads((sweep / row["job"] / "metrics.json").read_text())
        assert float(row["val/elbo"]) == pytest.approx(metrics["val/elbo"])
        assert float(row["test/loss"]) == pytest.approx(metrics["test/loss"])
    assert "paths.data_dir" not in rows[0]  # overrides shared by every job are not columns
    markdown = (sweep / "summary.md").read_text()
    assert markdown.count("\n| ") == 4 + 1  # header + one row per job
    assert "| job | latent_dim | net | val/elbo |" in proc.stdout  # printed at the end of the run
    assert "4 jobs; written to" in proc.stdout
    assert Image.open(sweep / "summary.png").size[0] > 300  # val/elbo vs latent_dim, a line per net
    infos, params, metric_tags = read_hparams(sweep / rows[1]["job"] / "tensorboard")
    assert infos[:3] == [("latent_dim", True), ("net", True), ("likelihood", False)]  # swept first
    assert params["latent_dim"] == 2 and params["net"] == "conv" and params["max_epochs"] == 1
    assert metric_tags[0] == "val/elbo" and not [t for t in metric_tags if not t.startswith("val/")]
    job_metrics = json.loads((sweep / rows[1]["job"] / "metrics.json").read_text())
    assert params["test/elbo"] == pytest.approx(job_metrics["test/elbo"])  # test values: columns
    scalars, _ = read_events(sweep / rows[1]["job"] / "tensorboard")
    assert not [tag for tag in scalars if tag.startswith("final/")]  # no single-dot charts


def _job(sweep: Path, name: str, overrides: list[str], metrics: dict | None = None) -> Path:
    job = sweep / name
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    if metrics is not None:
        (job / "metrics.json").write_text(json.dumps(metrics))
    return job


def test_summary_keeps_failed_jobs_and_adds_eval_metrics(tmp_path):
    common = "paths.data_dir=/data"
    _job(
        tmp_path, "0", ["latent_dim=2", "optimizer.lr=1e-3", common], {"val/elbo": -100.0, "train/loss": 1.0}
    )
    _job(tmp_path, "1", ["latent_dim=16", "optimizer.lr=1e-3", common])  # failed: no metrics.json
    done = _job(
        tmp_path, "10_latent_dim-64", ["latent_dim=64", "optimizer.lr=1e-2", common], {"val/elbo": -90.0}
    )
    (done / "eval").mkdir()  # where src/eval.py writes for a checkpoint of this job
    text_and_settings = {"bits_per_dim_formula": "NLL/(D ln 2) + 8", "seconds": 29.2, "global_step": 430}
    text_and_settings |= {"quality_n": 100, "quality/real/fd": 1.0, "quality/reconstructions/fd": 3.0}
    (done / "eval" / "metrics.json").write_text(json.dumps({"nll_iwae": 88.5, "k": 100, **text_and_settings}))
    (tmp_path / "11").mkdir()  # not a job: no .hydra/overrides.yaml
    text = sweep_summary.summarize(tmp_path)
    header, rows = sweep_summary.table(sweep_summary.read_jobs(tmp_path))
    assert header == ["job", "latent_dim", "optimizer.lr", "val/elbo", "eval/k", "eval/nll_iwae"]
    assert rows[1] == ["1", "16", "1e-3", None, None, None]
    assert rows[2][0] == "10_latent_dim-64" and rows[2][-1] == 88.5  # job 10 after job 1
    assert "| 1 | 16 | 1e-3 | — | — | — |" in text  # a failed job keeps its row
    with open(tmp_path / "summary.csv") as f:
        assert list(csv.reader(f))[2] == ["1", "16", "1e-3", "", "", ""]
    assert (tmp_path / "summary.png").is_file()


def test_summary_of_categorical_sweep_has_no_plot(tmp_path):
    _job(tmp_path, "0", ["net=mlp"], {"val/elbo": -1.0})
    _job(tmp_path, "1", ["net=conv"], {"val/elbo": -2.0})
    text = sweep_summary.summarize(tmp_path)
    assert "(no numeric parameter to plot)" in text and not (tmp_path / "summary.png").exists()


def test_summary_cli_explains_a_wrong_folder(tmp_path, capsys):
    for folder, message in ((tmp_path / "nope", "does not exist"), (tmp_path, "holds no jobs")):
        with pytest.raises(SystemExit) as exit_:
            sweep_summary.main([str(folder)])
        assert exit_.value.code == 2
        assert message in capsys.readouterr().err


@pytest.mark.skipif(
    not has_plugin("hydra_optuna_sweeper"),
    reason="optional plugin: pip install -e '.[optuna]'",
)
def test_optuna_search_minimises_val_loss_over_lr_beta_latent_dim():
    cfg = compose_config(["+hparams_search=optuna"], with_hydra=True)
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_.endswith("OptunaSweeper") and sweeper.direction == "minimize"
    assert set(sweeper.params) == {"optimizer.lr", "objective.beta", "latent_dim"}
    assert str(cfg.hydra.mode) == "RunMode.MULTIRUN" and sweeper.sampler.seed == cfg.seed


@pytest.mark.skipif(
    not has_plugin("hydra_submitit_launcher"),
    reason="optional plugin: pip install -e '.[slurm]'",
)
def test_slurm_launcher_allocates_what_the_trainer_expects():
    cfg = compose_config(
        ["hydra/launcher=slurm", "trainer=multinode", "trainer.devices=4", "trainer.num_nodes=3"],
        with_hydra=True,
    )
    launcher = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    assert (launcher["nodes"], launcher["tasks_per_node"], launcher["gpus_per_node"]) == (3, 4, 4)
    assert type(instantiate(cfg.hydra.launcher)).__name__ == "SlurmLauncher"


@pytest.mark.skipif(
    not has_plugin("hydra_submitit_launcher"),
    reason="optional plugin: pip install -e '.[slurm]'",
)
def test_readme_slurm_sweep_on_one_node_composes():
    cfg = compose_config(["hydra/launcher=slurm", "trainer=ddp", "trainer.devices=4"], with_hydra=True)
    launcher = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    assert (launcher["nodes"], launcher["tasks_per_node"]) == (1, 4)


def test_sweep_objective_is_the_beta_one_negative_elbo_and_inf_when_diverged():
    from vaelab.train import sweep_objective

    assert sweep_objective({"val/elbo": -91.5, "val/loss": 50.0}) == 91.5
    assert sweep_objective({"val/elbo": None}) == float("inf")
    assert sweep_objective({}) == float("inf")
