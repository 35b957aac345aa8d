"""The results table (vaelab.results): written from fake run folders; the runner's commands recorded,
never run."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from vaelab import results

# the composed configs' parts, as Hydra saves them in <run>/.hydra/config.yaml
MLP = {"_target_": "vaelab.model.nets.mlp.MLP", "hidden": [200, 200], "activation": "tanh"}
MLP_RELU = {**MLP, "activation": "relu"}
CONV = {"_target_": "vaelab.model.nets.conv.Conv", "channels": [32, 64, 128, 256]}
BERNOULLI = {"_target_": "vaelab.model.likelihoods.bernoulli.Bernoulli"}
GAUSSIAN = {"_target_": "vaelab.model.likelihoods.gaussian.Gaussian", "sigma": 0.1, "learn": "scalar"}
NORMAL = {"_target_": "vaelab.model.priors.normal.StandardNormal"}
VAMP = {"_target_": "vaelab.model.priors.vamp.VampPrior", "components": 500}
ELBO = {"_target_": "vaelab.model.objectives.elbo.ELBO", "beta": 1.0, "warmup_steps": 0}
IWAE5 = {"_target_": "vaelab.model.objectives.iwae.IWAE", "k": 5}

ONE_LAYER = ["${latent_dim}"]
TWO_LAYERS = [100, "${latent_dim}"]
PARTS = {
    "mnist_vae": (MLP, ONE_LAYER, BERNOULLI, NORMAL, ELBO),
    "mnist_iwae": (MLP, ONE_LAYER, BERNOULLI, NORMAL, IWAE5),
    "mnist_vae_2layer": (MLP, TWO_LAYERS, BERNOULLI, NORMAL, ELBO),
    "mnist_iwae_2layer": (MLP, TWO_LAYERS, BERNOULLI, NORMAL, IWAE5),
    "mnist_vae_relu": (MLP_RELU, ONE_LAYER, BERNOULLI, NORMAL, ELBO),
    "mnist_vamp": (MLP_RELU, ONE_LAYER, BERNOULLI, VAMP, ELBO),
    "celeba_conv_gaussian": (CONV, ONE_LAYER, GAUSSIAN, NORMAL, ELBO),
}


def fake_run(
    runs: Path,
    name: str,
    nll: float,
    epochs: int = 20,
    k: int = 5000,
    n: int | None = 1000,
    fit_seconds: float = 754.0,
    evaluated: bool = True,
) -> Path:
    """A finished row's folder: what src/train.py and src/eval.py write."""
    run = runs / name
    (run / ".hydra").mkdir(parents=True)
    net, dims, likelihood, prior, objective = PARTS[results.experiment_of(name)]
    config = {
        "latent_dim": 128 if name.startswith("celeba") else 50,
        "model": {"_target_": "vaelab.module.VAEModule", "latent_dims": dims, "conditional": False},
        "net": net,
        "likelihood": likelihood,
        "prior": prior,
        "objective": objective,
        "trainer": {"max_epochs": epochs},
    }
    (run / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    train = {"fit_seconds": fit_seconds, "epochs": epochs, "val/elbo": -nll - 3}
    (run / "metrics.json").write_text(json.dumps(train))
    if evaluated:
        (run / "eval" / ".hydra").mkdir(parents=True)
        (run / "eval" / ".hydra" / "config.yaml").write_text(yaml.safe_dump({"eval": {"k": k, "n": n}}))
        ev = {
            "nll_iwae": nll,
            "neg_elbo": nll + 4.25,
            "k": k,
            "n_examples": n or 10000,
            "active_units": 21,
            "latent_dim": config["latent_dim"],
            "bits_per_dim": nll / 12288 / 0.6931,
            "bits_per_dim_elbo": (nll + 4.25) / 12288 / 0.6931,
            "bits_per_dim_formula": f"formula of {name}",
            "seconds": 99.0,
        }
        (run / "eval" / "metrics.json").write_text(json.dumps(ev))
    return run


def table(runs: Path, tmp_path: Path) -> str:
    out = tmp_path / "results.md"
    assert results.main(["--table-only", "--runs-dir", str(runs), "--out", str(out)]) == 0
    return out.read_text()


def section(md: str, title: str) -> str:
    return md.split(f"## {title}", 1)[1].split("\n## ", 1)[0]


def line_of(md: str, name: str) -> str:
    return next(line for line in md.splitlines() if line.startswith(f"| `{name}`"))


def test_table_has_the_runs_numbers_the_published_ones_and_the_gaps(tmp_path):
    runs = tmp_path / "runs"
    fake_run(runs, "mnist_vae", 88.4321, fit_seconds=754.0)
    fake_run(runs, "mnist_iwae", 87.1021)
    fake_run(runs, "celeba_conv_gaussian", 20000.0, epochs=30, n=None, fit_seconds=7300.0)
    md = table(runs, tmp_path)

    vae = line_of(md, "mnist_vae")
    for text in ("88.43 (k = 5000)", "92.68", "21 / 50", "1,000", "| 20 |", "12.6 min", "ELBO"):
        assert text in vae, (text, vae)
    assert "prior N(0, I)" in vae and "Bernoulli" in vae and "1 stochastic layer (50)" in vae
    assert "IWAE (k = 5)" in line_of(md, "mnist_iwae") and "87.10 (k = 5000)" in line_of(md, "mnist_iwae")
    # the rows never run: named, no number
    for name in ("mnist_vae_2layer", "mnist_iwae_2layer", "mnist_vae_relu", "mnist_vamp", "mnist_free_bits"):
        assert results.NOT_RUN in line_of(md, name)
    for name in ("celeba_conv_logistic", "celeba_resnet_gaussian", "celeba_resnet_logistic"):
        assert results.NOT_RUN in line_of(md, name)
    # published rows, beside the measured ones, with their budgets
    mnist = section(md, "MNIST")
    for value in ("86.76", "84.78", "82.90", "78.01"):
        assert f"{value} (k = " in mnist
    assert mnist.count("**published**") == 4
    assert "3,280" in mnist and "Burda" in mnist and "Vahdat & Kautz 2020" in mnist
    # CelebA: bits/dim from the eval's own file, and its formula
    celeba = line_of(md, "celeba_conv_gaussian")
    assert f"{20000 / 12288 / 0.6931:.4f} (k = 5000)" in celeba
    assert f"{20004.25 / 12288 / 0.6931:.4f}" in celeba and "20004.2" in celeba
    assert "| 10,000 |" in celeba and "| 30 |" in celeba and "2.03 h" in celeba
    assert "- `celeba_conv_gaussian`: formula of celeba_conv_gaussian" in md
    # how it was made
    assert "python -m vaelab.results --table-only" in md
    assert f"{__import__('os').cpu_count()} CPUs" in md and "torch " in md
    assert "MNIST epochs 20; k = 5000; test images n = 1,000" in md
    assert "CelebA epochs 30; k = 5000; test images n = 10,000" in md


def test_targets_are_differences_of_comparable_rows_only(tmp_path):
    runs = tmp_path / "runs"
    fake_run(runs, "mnist_vae", 88.40)
    fake_run(runs, "mnist_iwae", 87.15)
    fake_run(runs, "mnist_vae_2layer", 87.00, epochs=10)  # another budget: not compared
    fake_run(runs, "mnist_iwae_2layer", 85.65)
    fake_run(runs, "mnist_vae_long", 88.40, epochs=200)
    targets = section(table(runs, tmp_path), "What the targets say")
    lines = {line.split(":")[0][2:]: line for line in targets.splitlines() if line.startswith("- ")}
    assert "**-1.25 nats**" in lines["IWAE (k = 5) − VAE"]
    assert "**-1.50 nats**" in lines["2 layers − 1 layer (IWAE, k = 5)"]
    assert results.NOT_MEASURED in lines["2 layers − 1 layer (VAE)"]
    assert "epochs differ: 10 vs 20" in lines["2 layers − 1 layer (VAE)"]
    assert results.NOT_MEASURED in lines["VampPrior − N(0, I)"]
    assert "**88.40 nats**, below: met (200 epochs" in lines["VAE test NLL vs 90.0 nats"]
    assert "**" not in lines["VampPrior − N(0, I)"]


def test_targets_need_the_same_evaluation_and_say_when_not_met(tmp_path):
    runs = tmp_path / "runs"
    fake_run(runs, "mnist_vae", 91.5)
    fake_run(runs, "mnist_vae_long", 91.5, epochs=200)
    fake_run(runs, "mnist_vae_relu", 91.0)
    fake_run(runs, "mnist_vamp", 90.0, k=500)
    targets = section(table(runs, tmp_path), "What the targets say")
    assert "VampPrior − N(0, I): not measured (evaluations differ" in targets
    assert "IWAE (k = 5) − VAE: not measured (mnist_iwae not run yet)" in targets
    assert "**91.50 nats**, not below: not met" in targets


def test_a_trained_but_unevaluated_row_has_no_numbers(tmp_path):
    runs = tmp_path / "runs"
    fake_run(runs, "mnist_vae", 88.4, evaluated=False)
    md = table(runs, tmp_path)
    vae = line_of(md, "mnist_vae")
    assert results.NOT_RUN in vae and "trained 20 epochs, not evaluated" in vae and "88" not in vae
    assert "VAE test NLL vs 90.0 nats: not measured (`mnist_vae_long` not run yet)" in md


def test_an_empty_runs_dir_gives_a_table_of_gaps(tmp_path):
    md = table(tmp_path / "nothing", tmp_path)
    assert md.count(results.NOT_RUN) >= len(results.ROWS)
    assert "86.76" in md and "**" in md


# -- the runner -------------------------------------------------------------------------------------
@pytest.fixture
def recorded(monkeypatch):
    """subprocess.run recorded: a training writes metrics.json and .hydra, an evaluation its
    eval/metrics.json, as the real scripts would; nothing is trained."""
    calls = []

    def fake(cmd, cwd=None, stdout=None, stderr=None, check=False):
        calls.append(list(cmd))
        args = dict(a.split("=", 1) for a in cmd[2:] if "=" in a)
        if cmd[1].endswith("train.py"):
            run = Path(args["hydra.run.dir"])
            name = args["experiment"]
            (run / ".hydra").mkdir(parents=True, exist_ok=True)
            (run / ".hydra" / "config.yaml").write_text(yaml.safe_dump({"objective": ELBO, "latent_dim": 5}))
            epochs = int(args["trainer.max_epochs"])
            (run / "metrics.json").write_text(
                json.dumps({"fit_seconds": 1.0, "epochs": epochs, "name": name})
            )
        else:
            run = Path(args["ckpt_path"]).parent.parent
            (run / "eval").mkdir(exist_ok=True)
            n = int(args["eval.n"]) if "eval.n" in args else None
            ev = {"nll_iwae": 90.5, "neg_elbo": 95.0, "k": int(args["eval.k"]), "n_examples": n or 10000}
            ev.update(active_units=3, latent_dim=5, bits_per_dim=0.1, bits_per_dim_elbo=0.2)
            (run / "eval" / "metrics.json").write_text(json.dumps(ev))
            (run / "eval" / ".hydra").mkdir(exist_ok=True)
            (run / "eval" / ".hydra" / "config.yaml").write_text(yaml.safe_dump({"eval": {"n": n}}))
        stdout.write("log line\n")
        return subprocess.CompletedProcess(cmd, 0)

    monkeypatch.setattr(subprocess, "run", fake)
    return calls


def test_runner_skips_finished_rows_and_builds_the_commands(tmp_path, recorded, capsys):
    runs, data, out = tmp_path / "runs", tmp_path / "data", tmp_path / "results.md"
    fake_run(runs, "mnist_vae", 88.4, epochs=7, k=50, n=100)  # finished at this budget
    argv = ["--runs-dir", str(runs), "--mnist-epochs", "7", "--k", "50", "--n", "100"]
    argv += ["--data-dir", str(data), "--out", str(out), "--only", "mnist_vae", "mnist_iwae"]
    assert results.main(argv) == 0

    assert len(recorded) == 2, recorded  # mnist_vae skipped; mnist_iwae trained, then evaluated
    train, evaluate = recorded
    assert train[0] == sys.executable and train[1] == str(results.ROOT / "src" / "train.py")
    assert train[2:] == [
        "experiment=mnist_iwae",
        "trainer.max_epochs=7",
        f"hydra.run.dir={runs / 'mnist_iwae'}",
        f"paths.data_dir={data}",
        "callbacks.sample_quality=null",
    ]
    assert evaluate[1] == str(results.ROOT / "src" / "eval.py")
    assert evaluate[2:] == [
        f"ckpt_path={runs / 'mnist_iwae' / 'checkpoints' / 'last.ckpt'}",
        "eval.k=50",
        "eval.n=100",
        "eval.quality=false",
        f"paths.data_dir={data}",
    ]
    # each subprocess's output in its run's log; one progress line per row
    assert "log line" in (runs / "mnist_iwae" / "train.log").read_text()
    assert "log line" in (runs / "mnist_iwae" / "eval" / "eval.log").read_text()
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("[")]
    assert len(lines) == 2
    assert lines[0].startswith("[1/2] mnist_vae: finished") and "skipped" in lines[0]
    assert lines[1].startswith("[2/2] mnist_iwae: training 7 epochs") and "90.50" in lines[1]
    # the table came from what the runs wrote
    md = out.read_text()
    assert "88.40 (k = 50)" in line_of(md, "mnist_vae") and "90.50 (k = 50)" in line_of(md, "mnist_iwae")

    # a second call finds both finished: nothing runs
    recorded.clear()
    assert results.main(argv) == 0
    assert recorded == []


def test_runner_redoes_what_another_budget_left(tmp_path, recorded):
    runs, out = tmp_path / "runs", tmp_path / "results.md"
    fake_run(runs, "mnist_vae", 88.4, epochs=20, k=5000, n=None)  # trained as asked, evaluated at another k
    fake_run(runs, "mnist_vamp", 88.0, epochs=5, k=500, n=None)  # trained for another number of epochs
    argv = ["--runs-dir", str(runs), "--mnist-epochs", "20", "--k", "500", "--out", str(out)]
    assert results.main([*argv, "--only", "mnist_vae", "mnist_vamp"]) == 0
    assert [Path(c[1]).name for c in recorded] == ["eval.py", "train.py", "eval.py"]
    assert "eval.k=500" in recorded[0] and not any(a.startswith("eval.n=") for a in recorded[0])
    assert "experiment=mnist_vamp" in recorded[1] and "trainer.max_epochs=20" in recorded[1]
    # the old folder kept aside, not deleted
    assert json.loads((runs / "mnist_vamp.old-1" / "metrics.json").read_text())["epochs"] == 5
    assert json.loads((runs / "mnist_vamp" / "metrics.json").read_text())["epochs"] == 20


def test_runner_resumes_an_interrupted_training(tmp_path, recorded):
    runs = tmp_path / "runs"
    run = fake_run(runs, "mnist_vae", 88.4, epochs=20, evaluated=False)
    (run / "metrics.json").unlink()  # stopped before the end
    (run / "checkpoints").mkdir()
    (run / "checkpoints" / "last.ckpt").write_bytes(b"")
    argv = ["--runs-dir", str(runs), "--mnist-epochs", "20", "--out", str(tmp_path / "r.md")]
    assert results.main([*argv, "--only", "mnist_vae"]) == 0
    assert recorded[0][-1] == f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}"
    assert not (runs / "mnist_vae.old-1").exists()


def test_celeba_rows_get_the_sample_root(tmp_path, recorded):
    runs, data = tmp_path / "runs", tmp_path / "data"
    (data / "celeba_sample" / "celeba").mkdir(parents=True)
    argv = ["--runs-dir", str(runs), "--data-dir", str(data), "--celeba-epochs", "3", "--k", "10"]
    assert results.main([*argv, "--out", str(tmp_path / "r.md"), "--only", "celeba_resnet_logistic"]) == 0
    train, evaluate = recorded
    assert "experiment=celeba_resnet_logistic" in train and "trainer.max_epochs=3" in train
    assert f"dataset.root={data / 'celeba_sample'}" in train
    assert f"dataset.root={data / 'celeba_sample'}" in evaluate


def test_a_failed_training_is_reported_and_not_evaluated(tmp_path, monkeypatch, capsys):
    calls = []

    def failing(cmd, **kw):
        calls.append(cmd)
        return subprocess.CompletedProcess(cmd, 1)

    monkeypatch.setattr(subprocess, "run", failing)
    out = tmp_path / "r.md"
    argv = ["--runs-dir", str(tmp_path / "runs"), "--out", str(out), "--only", "mnist_vae"]
    assert results.main(argv) == 1
    assert len(calls) == 1
    assert "training FAILED" in capsys.readouterr().out
    assert results.NOT_RUN in line_of(out.read_text(), "mnist_vae")


def test_makefile_has_the_results_target():
    makefile = (results.ROOT / "Makefile").read_text()
    assert "results: install" in makefile
    assert "$(BIN)/python -m vaelab.results --readme README.md $(ARGS)" in makefile


def test_the_readme_block_between_the_markers_is_replaced_by_the_table(tmp_path):
    from vaelab.results import README_END, README_START, embed

    readme = tmp_path / "README.md"
    readme.write_text(f"# Title\n\nbefore\n{README_START}\nold numbers 1.23\n{README_END}\nafter\n")
    table = "# Results\n\nintro\n\n## MNIST\n\n| row | 88.1 |\n"
    embed(readme, table, tmp_path / "docs" / "results.md")
    text = readme.read_text()
    assert "old numbers" not in text and "### MNIST" in text and "| row | 88.1 |" in text
    assert text.startswith("# Title\n\nbefore\n") and text.endswith(f"{README_END}\nafter\n")
    assert "# Results" not in text.replace("# Title", "")
    unmarked = tmp_path / "OTHER.md"
    unmarked.write_text("no markers\n")
    embed(unmarked, table, tmp_path / "r.md")
    assert unmarked.read_text() == "no markers\n"


def test_the_long_vae_row_starts_as_a_copy_of_the_shorter_run_and_resumes_it(tmp_path):
    runs = tmp_path / "runs"
    source = fake_run(runs, "mnist_vae", 90.1, epochs=100)
    (source / "checkpoints").mkdir()
    (source / "checkpoints" / "last.ckpt").write_bytes(b"weights")
    args = results.parse_args(["--runs-dir", str(runs), "--long-epochs", "200"])
    results.start_from_shorter_run("mnist_vae_long", args)
    copy = runs / "mnist_vae_long"
    assert (copy / "checkpoints" / "last.ckpt").read_bytes() == b"weights"
    assert not (copy / "metrics.json").exists() and not (copy / "eval").exists()
    assert yaml.safe_load((copy / ".hydra" / "config.yaml").read_text())["trainer"]["max_epochs"] == 200
    assert (source / "metrics.json").exists()  # the source row is untouched
    command = results.train_command("mnist_vae_long", args, resume=True)
    assert "experiment=mnist_vae" in command and "trainer.max_epochs=200" in command
    assert f"ckpt_path={copy / 'checkpoints' / 'last.ckpt'}" in command
    results.start_from_shorter_run("mnist_vae_long", args)  # once there, never copied again
    assert (copy / "checkpoints" / "last.ckpt").read_bytes() == b"weights"


# -- the records beside the table -------------------------------------------------------------------
def test_a_row_keeps_its_numbers_from_its_record_when_its_run_folder_is_gone(tmp_path):
    runs = tmp_path / "runs"
    run = fake_run(runs, "mnist_vae", 88.4321)
    (run / ".hydra" / "resume-1").mkdir()
    (run / ".hydra" / "resume-1" / "overrides.yaml").write_text("- trainer.max_epochs=20\n")
    (run / "checkpoints").mkdir()
    (run / "checkpoints" / "last.ckpt").write_bytes(b"\0" * 1000)
    fake_run(runs, "mnist_iwae", 87.1, evaluated=False)
    first = table(runs, tmp_path)

    record = tmp_path / "results" / "mnist_vae"  # beside results.md
    for name in results.RECORD_FILES:
        assert (record / name).read_bytes() == (run / name).read_bytes(), name
    assert (record / ".hydra" / "resume-1" / "overrides.yaml").is_file()
    assert not (record / "checkpoints").exists()  # the record keeps what the table reads, no weights
    assert json.loads((record / results.RECORD_SOURCE).read_text())["run"] == "<runs-dir>/mnist_vae"
    assert not (tmp_path / "results" / "mnist_iwae").exists()  # not evaluated: nothing to record

    shutil.rmtree(runs)
    second = table(runs, tmp_path)
    assert line_of(second, "mnist_vae") == line_of(first, "mnist_vae")
    assert "88.43 (k = 5000)" in line_of(second, "mnist_vae") and "(since last resume)" in second
    assert "under `<runs-dir>`, outside the repository" in second and "`<records-dir>/<row>/`" in second
    assert str(tmp_path) not in first + second
    assert "trained 20 epochs, not evaluated" in line_of(first, "mnist_iwae")
    assert results.NOT_RUN in line_of(second, "mnist_iwae")


def test_a_newer_evaluation_replaces_the_record_and_an_unfinished_run_does_not(tmp_path):
    runs = tmp_path / "runs"
    fake_run(runs, "mnist_vae", 88.4)
    table(runs, tmp_path)
    shutil.rmtree(runs / "mnist_vae")
    fake_run(runs, "mnist_vae", 87.9, epochs=40)
    assert "87.90 (k = 5000)" in line_of(table(runs, tmp_path), "mnist_vae")
    shutil.rmtree(runs / "mnist_vae")
    fake_run(runs, "mnist_vae", 80.0, epochs=60, evaluated=False)  # a longer run under way
    md = table(runs, tmp_path)
    assert "87.90 (k = 5000)" in line_of(md, "mnist_vae") and "| 40 |" in line_of(md, "mnist_vae")
    assert not list((tmp_path / "results").glob(".*recording"))


@pytest.mark.parametrize("name", results.ROWS)
def test_every_row_is_an_experiment_config_that_builds_its_model(name, compose_train):
    """Each row composes as the runner asks for it and builds a VAE that the table describes in
    words from the same config (the two-layer ReLU row: ReLU in both nets, the STL gradient)."""
    from omegaconf import OmegaConf

    from vaelab.model.parts import build
    from vaelab.model.vae import VAE

    cfg = compose_train([f"experiment={results.experiment_of(name)}", "trainer.max_epochs=1"])
    model = OmegaConf.to_container(cfg.model, resolve=True)
    vae = VAE(
        (3, 64, 64) if name.startswith("celeba") else (1, 28, 28),
        **{k: model[k] for k in ("latent_dims", "net", "likelihood", "prior")},
        top_net=model.get("top_net"),
        n_conditions=0,
    )
    described = results.describe_model(OmegaConf.to_container(cfg))
    assert f"{len(vae.latent_dims)} stochastic layer" in described
    objective = build(OmegaConf.to_container(cfg.objective))
    words = results.describe_objective(
        OmegaConf.to_container(cfg.objective), results.closed_form_kl(OmegaConf.to_container(cfg))
    )
    assert getattr(objective, "stl", False) == name.endswith(("_stl", "_2layer_relu"))
    assert ("STL gradient" in words) == name.endswith(("_stl", "_2layer_relu")), words
    if name == "mnist_vae_2layer_relu":
        assert "MLP 200-200 relu, 2 stochastic layers (100-50)" in described
        assert model["top_net"]["activation"] == "relu"
    if name == "mnist_vae":  # a closed-form KL: no Monte-Carlo options to name
        assert words == "ELBO"
    if name == "mnist_vamp":
        assert words == "ELBO, Monte-Carlo KL"


def test_a_smaller_budget_does_not_replace_a_record_unless_asked(tmp_path, capsys):
    runs, out = tmp_path / "runs", tmp_path / "results.md"
    fake_run(runs, "mnist_vae", 88.4, epochs=100, k=5000)
    table(runs, tmp_path)
    source = (tmp_path / "results" / "mnist_vae" / results.RECORD_SOURCE).read_bytes()
    assert results.main(["--table-only", "--runs-dir", str(runs), "--out", str(out)]) == 0
    assert "mnist_vae: record up to date" in capsys.readouterr().out
    assert (tmp_path / "results" / "mnist_vae" / results.RECORD_SOURCE).read_bytes() == source  # untouched

    smoke = tmp_path / "smoke"
    fake_run(smoke, "mnist_vae", 140.0, epochs=2, k=50)  # a quick try into the same table
    assert results.main(["--table-only", "--runs-dir", str(smoke), "--out", str(out)]) == 0
    said = capsys.readouterr().out
    assert "mnist_vae: record kept (100 epochs, k = 5000, n = 1,000)" in said and "2 epochs, k = 50" in said
    assert "88.40 (k = 5000)" in line_of(out.read_text(), "mnist_vae")
    argv = ["--table-only", "--runs-dir", str(smoke), "--out", str(out), "--replace-larger-records"]
    assert results.main(argv) == 0
    assert "140.00 (k = 50)" in line_of(out.read_text(), "mnist_vae")
    assert sorted(p.name for p in (tmp_path / "results").iterdir()) == ["mnist_vae"]  # no leftovers


def test_the_records_folder_is_named_in_the_table_relative_to_the_checkout(tmp_path, capsys):
    assert results._display(results.ROOT / "docs" / "results") == "docs/results"
    assert results._display(tmp_path) == results.OUTSIDE_MARK  # never a machine's absolute path
    assert results._display(tmp_path, "<runs-dir>") == "<runs-dir>"
    with pytest.raises(SystemExit):
        results.parse_args(["--out", str(tmp_path / "table")])
    assert "has no suffix" in capsys.readouterr().err
    records = tmp_path / "kept"
    args = results.parse_args(["--out", str(tmp_path / "t.md"), "--records-dir", str(records)])
    assert args.records_dir == records


# -- portable records: no machine's absolute path in a committed file ------------------------------
def test_portable_path_names_a_path_by_the_deepest_folder_holding_it(tmp_path):
    run = tmp_path / "runs" / "mnist_vae"
    bases = results.portable_bases(run)
    bases.append((results.PurePosixPath("/data/sets"), results.DATA_DIR_MARK))
    portable = lambda p: results.portable_path(str(p), bases)  # noqa: E731
    assert portable(run / "checkpoints" / "last.ckpt") == "checkpoints/last.ckpt"  # the run's own
    assert portable(run / "figures") == "figures"
    assert portable(run) == "."
    assert portable(run / "figures" / ".." / "eval") == "eval"
    assert portable(tmp_path / "runs" / "mnist_iwae" / "x.ckpt") == "<runs-dir>/mnist_iwae/x.ckpt"
    assert portable("/data/sets/celeba_sample") == "<data-dir>/celeba_sample"
    assert portable("/data/sets") == "<data-dir>"
    assert portable(results.ROOT / "conf" / "train.yaml") == "<repo>/conf/train.yaml"
    assert portable("/home/someone/elsewhere/file") == "<outside>"
    assert portable("/data/setsx") == "<outside>"  # a prefix of a name is not a folder holding it


def test_portable_text_rewrites_the_paths_and_keeps_every_other_byte(tmp_path):
    run = tmp_path / "runs" / "mnist_vae"
    bases = results.portable_bases(run) + [(results.PurePosixPath("/srv/data"), results.DATA_DIR_MARK)]
    fields = {
        "checkpoint": f"{run}/checkpoints/last.ckpt",
        "figures_dir": f"{run}/figures",
        "nll_iwae": 90.11826298389842,
        "note": "NLL/(D ln 2), see https://x.org/a/b",
    }
    metrics = json.dumps(fields, indent=2) + "\n"
    portable = results.portable_text(metrics, bases)
    assert json.loads(portable) == {
        **json.loads(metrics),
        "checkpoint": "checkpoints/last.ckpt",
        "figures_dir": "figures",
    }
    assert "90.11826298389842" in portable and "https://x.org/a/b" in portable
    config = (
        f"ckpt_path: {run}/checkpoints/last.ckpt\nlatent_dim: 50\npaths:\n  data_dir: /srv/data\n"
        "  cache_dir: ${oc.env:XDG_CACHE_HOME,${oc.env:HOME,/tmp}/.cache}/vaelab\n"
        "  log_dir: ${paths.root_dir}/outputs\n  other: /opt/elsewhere/x\n"
    )
    loaded = yaml.safe_load(results.portable_text(config, bases))
    assert loaded["ckpt_path"] == "checkpoints/last.ckpt" and loaded["latent_dim"] == 50
    assert loaded["paths"]["data_dir"] == "<data-dir>" and loaded["paths"]["other"] == "<outside>"
    # an interpolation's default and a relative path are no machine's folders: left alone
    assert loaded["paths"]["cache_dir"] == "${oc.env:XDG_CACHE_HOME,${oc.env:HOME,/tmp}/.cache}/vaelab"
    assert loaded["paths"]["log_dir"] == "${paths.root_dir}/outputs"
    overrides = f"- paths.data_dir=/srv/data\n- ckpt_path={run}/checkpoints/last.ckpt\n"
    assert results.portable_text(overrides, bases) == (
        "- paths.data_dir=<data-dir>\n- ckpt_path=checkpoints/last.ckpt\n"
    )


def _with_machine_paths(run: Path, data: Path) -> None:
    """What the real scripts also write into a run: absolute paths of the machine."""
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    metrics.update(checkpoint=str(run / "checkpoints" / "last.ckpt"), figures_dir=str(run / "figures"))
    (run / "eval" / "metrics.json").write_text(json.dumps(metrics, indent=2))
    for config in (run / ".hydra" / "config.yaml", run / "eval" / ".hydra" / "config.yaml"):
        cfg = yaml.safe_load(config.read_text())
        cfg["paths"] = {"data_dir": str(data), "cache_dir": "${oc.env:HOME,/tmp}/.cache"}
        config.write_text(yaml.safe_dump(cfg))
    (run / ".hydra" / "resume-1").mkdir()
    overrides = f"- paths.data_dir={data}\n- ckpt_path={run / 'checkpoints' / 'last.ckpt'}\n"
    (run / ".hydra" / "resume-1" / "overrides.yaml").write_text(overrides)


def test_a_record_names_no_absolute_path_and_keeps_the_numbers(tmp_path, capsys):
    runs, data = tmp_path / "runs", tmp_path / "data"
    run = fake_run(runs, "mnist_vae", 88.4321)
    _with_machine_paths(run, data)
    md = table(runs, tmp_path)
    record = tmp_path / "results" / "mnist_vae"
    for rel in results.record_files(record):
        text = (record / rel).read_text()
        assert str(tmp_path) not in text, (rel, text)
    ev = json.loads((record / "eval" / "metrics.json").read_text())
    assert ev == {
        **json.loads((run / "eval" / "metrics.json").read_text()),
        "checkpoint": "checkpoints/last.ckpt",
        "figures_dir": "figures",
    }
    cfg = yaml.safe_load((record / ".hydra" / "config.yaml").read_text())
    assert cfg["paths"] == {"data_dir": "<data-dir>", "cache_dir": "${oc.env:HOME,/tmp}/.cache"}
    resume = (record / ".hydra" / "resume-1" / "overrides.yaml").read_text()
    assert resume == "- paths.data_dir=<data-dir>\n- ckpt_path=checkpoints/last.ckpt\n"
    assert (record / "metrics.json").read_bytes() == (run / "metrics.json").read_bytes()  # no path in it
    assert str(tmp_path) not in md and "88.43 (k = 5000)" in line_of(md, "mnist_vae")
    capsys.readouterr()
    table(runs, tmp_path)  # the run's files, made portable, are the record's: nothing to copy again
    assert "mnist_vae: record up to date" in capsys.readouterr().out


def test_make_portable_rewrites_a_record_of_an_older_version_in_place(tmp_path):
    runs, data = tmp_path / "runs", tmp_path / "data"
    run = fake_run(runs, "mnist_vae", 88.4321)
    _with_machine_paths(run, data)
    record = tmp_path / "results" / "mnist_vae"  # as records were: the run's files unchanged
    for rel in results.record_files(run):
        (record / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(run / rel, record / rel)
    source = {"run": str(run), "recorded": "2026-12-01T01:47:47+00:00"}
    (record / results.RECORD_SOURCE).write_text(json.dumps(source, indent=1) + "\n")
    shutil.rmtree(runs)
    before = line_of(table(runs, tmp_path), "mnist_vae")

    results.make_portable(record, run)
    assert json.loads((record / results.RECORD_SOURCE).read_text()) == {
        "run": "<runs-dir>/mnist_vae",
        "recorded": "2026-12-01T01:47:47+00:00",
    }
    for rel in [*results.record_files(record), Path(results.RECORD_SOURCE)]:
        assert str(tmp_path) not in (record / rel).read_text(), rel
    assert json.loads((record / "eval" / "metrics.json").read_text())["checkpoint"] == "checkpoints/last.ckpt"
    after = table(runs, tmp_path)
    assert line_of(after, "mnist_vae") == before and "under `<runs-dir>`, outside the repository" in after


def test_the_command_in_the_table_names_no_absolute_path(tmp_path):
    argv = [
        "--table-only",
        "--runs-dir",
        str(tmp_path / "runs"),
        "--out",
        str(results.ROOT / "docs" / "r.md"),
    ]
    argv += [f"--data-dir={tmp_path}", "--records-dir", str(tmp_path / "kept"), "--only", "mnist_vae"]
    assert results.portable_argv(argv) == [
        "--table-only",
        "--runs-dir",
        "<runs-dir>",
        "--out",
        "docs/r.md",
        "--data-dir=<data-dir>",
        "--records-dir",
        "<records-dir>",
        "--only",
        "mnist_vae",
    ]
    assert results.portable_argv(["--runs", str(tmp_path)]) == ["--runs", "<outside>"]  # abbreviated
    runs = tmp_path / "runs"
    fake_run(runs, "mnist_vae", 88.4)
    assert "--runs-dir '<runs-dir>'" in table(runs, tmp_path) and str(tmp_path) not in table(runs, tmp_path)
