"""The bad-input catalogue: mistyped configs, damaged data and foreign checkpoints.

Each case runs the training entry point's code path (``vaelab.train.run`` under
``exit_on_user_error``, in-process for speed; the Hydra composition errors through the real
CLI) and asserts the exit code, that the message names the culprit, and that no traceback is
printed. Data faults that vaelab recovers from exit 0 with a warning naming the file.
"""

from __future__ import annotations

import os
import pickle
import resource
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import TRAIN_SCRIPT, compose_config, run_train_cli, tiny_overrides, write_celeba, write_mnist
from omegaconf import OmegaConf

from vaelab.checkpoints import SafeCheckpointIO, load_checkpoint
from vaelab.data import MNISTDataModule
from vaelab.errors import UserError, exit_on_user_error
from vaelab.guards import DeferredCheck, NonFiniteLossError
from vaelab.optim import Adam
from vaelab.train import run

CELEBA = ["dataset=celeba", "dataset.decode_workers=1", "net.channels=[8,8,8,8]", "latent_dim=4"]


def _mnist(tmp: Path, *extra: str) -> list[str]:
    root = write_mnist(tmp / "data", n_train=120, n_test=40)
    return tiny_overrides(root, tmp / "run", tmp / "cache") + ["dataset.val_size=40", *extra]


def _celeba(tmp: Path, *extra: str) -> list[str]:
    root = write_celeba(tmp / "data", n=40)
    return CELEBA + tiny_overrides(root, tmp / "run", tmp / "cache") + list(extra)


# -- data faults ---------------------------------------------------------------------------------
def _truncated_idx(tmp):
    over = _mnist(tmp)
    path = tmp / "data" / "MNIST" / "raw" / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:200])
    return over


def _mnist_file_missing(tmp):
    over = _mnist(tmp, "dataset.download=false")
    (tmp / "data" / "MNIST" / "raw" / "train-labels-idx1-ubyte.gz").unlink()
    return over


def _bad_jpegs(tmp):
    over = _celeba(tmp)
    (tmp / "data" / "celeba" / "img_align_celeba" / "000002.jpg").write_bytes(b"")
    (tmp / "data" / "celeba" / "img_align_celeba" / "000005.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    return over


def _no_partition(tmp):
    over = _celeba(tmp)
    (tmp / "data" / "celeba" / "list_eval_partition.txt").unlink()
    return over


def _bad_partition_line(tmp):
    over = _celeba(tmp)
    with open(tmp / "data" / "celeba" / "list_eval_partition.txt", "a") as f:
        f.write("000041.jpg train\n")
    return over


def _ragged_attributes(tmp):
    over = _celeba(tmp)
    with open(tmp / "data" / "celeba" / "list_attr_celeba.txt", "a") as f:
        f.write("000001.jpg 1 -1\n")
    return over


def _cache_file(tmp, content: bytes | None = None, obj=None) -> list[str]:
    """A real run's cache entry, replaced by ``content`` bytes or a torch-saved ``obj``."""
    over = _mnist(tmp)
    MNISTDataModule(str(tmp / "data"), str(tmp / "cache"), val_size=40, download=False).load_splits()
    (entry,) = (tmp / "cache").glob("mnist-*.pt")
    entry.write_bytes(content) if content is not None else torch.save(obj, entry)
    return over


def _cache_dir_unwritable(tmp):
    (tmp / "blocker").write_text("a file where the cache folder should be")
    return [o for o in _mnist(tmp) if not o.startswith("paths.cache_dir")] + [
        f"paths.cache_dir={tmp / 'blocker' / 'cache'}"
    ]


# -- checkpoints -----------------------------------------------------------------------------
def _ckpt(tmp, write: Callable[[Path], None], *extra: str) -> list[str]:
    path = tmp / "given.ckpt"
    write(path)
    return _mnist(tmp, f"ckpt_path={path}", *extra)


def _trained_checkpoint(path: Path, latent_dim: int = 4, strip_hparams: bool = False) -> None:
    tmp = path.parent / f"trained-{latent_dim}"
    run_cfg = compose_config(_mnist(tmp, f"latent_dim={latent_dim}", "test=false"))
    run(run_cfg)
    ckpt = torch.load(tmp / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    if strip_hparams:
        ckpt.pop("hyper_parameters")
    torch.save(ckpt, path)


def _truncated_checkpoint(path: Path) -> None:
    _trained_checkpoint(path)
    path.write_bytes(path.read_bytes()[:5000])


@dataclass(frozen=True)
class Case:
    name: str
    overrides: Callable[[Path], list[str]]
    code: int
    says: tuple[str, ...]  # every one must appear in the output


CASES = [
    # config: out-of-range values, wrong types, unknown keys, incompatible combinations
    Case("latent_dim=0", lambda t: _mnist(t, "latent_dim=0"), 2, ("latent_dim=0", "whole number > 0")),
    Case("lr=0", lambda t: _mnist(t, "optimizer.lr=0"), 2, ("optimizer.lr=0", "a number > 0")),
    Case("batch_size<0", lambda t: _mnist(t, "dataset.batch_size=-8"), 2, ("dataset.batch_size=-8", "> 0")),
    Case("beta<0", lambda t: _mnist(t, "objective.beta=-0.5"), 2, ("objective.beta=-0.5", "≥ 0")),
    Case("max_epochs<0", lambda t: _mnist(t, "trainer.max_epochs=-3"), 2, ("trainer.max_epochs=-3", "≥ -1")),
    Case(
        "max_epochs=-1 without max_steps",
        lambda t: _mnist(t, "trainer.max_epochs=-1"),
        2,
        ("trainer.max_epochs=-1", "trainer.max_steps"),
    ),
    Case(
        "crop fraction > 1",
        lambda t: _celeba(t, "dataset.crop_fraction=1.5"),
        2,
        ("dataset.crop_fraction=1.5", "(0, 1]"),
    ),
    Case("sigma=0", lambda t: _mnist(t, "likelihood.sigma=0"), 2, ("likelihood.sigma=0", "a number > 0")),
    Case(
        "warm-up steps < 0",
        lambda t: _mnist(t, "objective.warmup_steps=-5"),
        2,
        ("objective.warmup_steps=-5", "whole number ≥ 0"),
    ),
    # (an unknown likelihood, likelihood=poisson, is now a config group option: see the CLI tests)
    Case(
        "unknown model key",
        lambda t: _mnist(t, "+model.optimiser=sgd"),
        2,
        ("model.optimiser is not a setting of vaelab.module.VAEModule", "valid keys are", "optimizer"),
    ),
    Case(
        "unknown option of a part",
        lambda t: _mnist(t, "+net.widths=[8]"),
        2,
        ("net.widths is not a setting of vaelab.model.nets.mlp.MLP", "activation, hidden"),
    ),
    Case(
        "old key added with +",
        lambda t: _mnist(t, "+model.lr=0.01"),
        2,
        ("model.lr is now optimizer.lr", "optimizer.lr=0.01"),
    ),
    Case(
        "misspelt trainer key",
        lambda t: _mnist(t, "+trainer.max_epoch=3"),
        2,
        ("trainer.max_epoch is not a setting", "did you mean max_epochs"),
    ),
    Case(
        "wrong type: list",
        lambda t: _mnist(t, "net.hidden=abc"),
        2,
        ("net.hidden='abc'", "list of whole numbers"),
    ),
    Case(
        "wrong type: number", lambda t: _mnist(t, "latent_dim=abc"), 2, ("latent_dim='abc'", "whole number")
    ),
    Case(
        "unknown precision",
        lambda t: _mnist(t, "trainer.precision=15"),
        2,
        ("trainer.precision=15", "32-true"),
    ),
    Case(
        "Bernoulli on colour CelebA",
        lambda t: _celeba(t, "likelihood=bernoulli"),
        2,
        ("likelihood=bernoulli", "dataset.binarize=true"),
    ),
    Case(
        "learned sigma with Bernoulli",
        lambda t: _mnist(t, "likelihood=bernoulli", "+likelihood.learn=scalar"),
        2,
        ("likelihood.learn is not a setting of vaelab.model.likelihoods.bernoulli.Bernoulli",),
    ),
    # data: stop with the file and the fix, or recover and say so
    Case(
        "missing data folder",
        lambda t: _mnist(t, "paths.data_dir=/nonexistent"),
        2,
        ("/nonexistent", "paths.data_dir"),
    ),
    Case(
        "missing MNIST file",
        _mnist_file_missing,
        2,
        ("train-labels-idx1-ubyte", "MNIST/raw", "paths.data_dir"),
    ),
    Case("truncated IDX", _truncated_idx, 2, ("t10k-images-idx3-ubyte.gz", "fetch the file again")),
    Case("missing partition file", _no_partition, 2, ("list_eval_partition.txt does not exist", "Download")),
    Case(
        "bad partition line",
        _bad_partition_line,
        2,
        ("list_eval_partition.txt, line 41", "'000041.jpg train'"),
    ),
    Case("ragged attribute file", _ragged_attributes, 2, ("list_attr_celeba.txt is damaged",)),
    Case("zero-byte and corrupt JPEG", _bad_jpegs, 0, ("skipped 2 unreadable CelebA image(s)", "000002.jpg")),
    Case(
        "corrupt cache file",
        lambda t: _cache_file(t, b"garbage"),
        0,
        ("cache file", "unreadable", "rebuilding"),
    ),
    Case(
        "stale cache file",
        lambda t: _cache_file(t, obj={"x": torch.ones(1)}),
        0,
        ("lacks the expected tensors",),
    ),
    Case("unwritable cache folder", _cache_dir_unwritable, 0, ("cannot write the data cache", "blocker")),
    # checkpoints
    Case(
        "missing checkpoint",
        lambda t: _mnist(t, f"ckpt_path={t / 'nope.ckpt'}"),
        2,
        ("nope.ckpt does not exist",),
    ),
    Case(
        "ckpt_path=last, nothing saved",
        lambda t: _mnist(t, "ckpt_path=last"),
        2,
        ("ckpt_path=last", "nothing to resume"),
    ),
    Case(
        "zero-byte checkpoint",
        lambda t: _ckpt(t, lambda p: p.write_bytes(b"")),
        2,
        ("given.ckpt is not a readable checkpoint", "0 bytes"),
    ),
    Case(
        "text file as checkpoint",
        lambda t: _ckpt(t, lambda p: p.write_text("model weights, honest\n")),
        2,
        ("given.ckpt is not a readable checkpoint",),
    ),
    Case(
        "truncated checkpoint",
        lambda t: _ckpt(t, _truncated_checkpoint),
        2,
        ("not a readable checkpoint", "truncated"),
    ),
    Case(
        "tensor file as checkpoint",
        lambda t: _ckpt(t, lambda p: torch.save(torch.ones(3), p)),
        2,
        ("given.ckpt is a PyTorch file but not a training checkpoint",),
    ),
    Case(
        "checkpoint of another config",
        lambda t: _ckpt(t, lambda p: _trained_checkpoint(p, latent_dim=4), "latent_dim=8"),
        2,
        ("incompatible config", "latent_dims=(4,) in the checkpoint but (8,) here"),
    ),
    Case(
        "checkpoint of another model shape",
        lambda t: _ckpt(
            t, lambda p: _trained_checkpoint(p, latent_dim=4, strip_hparams=True), "latent_dim=8"
        ),
        2,
        ("does not fit this model", "of another shape"),
    ),
]


def run_as_cli(overrides: list[str]) -> int:
    """What ``python src/train.py OVERRIDES`` does after composing: the exit code."""
    try:
        with exit_on_user_error():
            run(compose_config(overrides))
    except SystemExit as stop:
        return stop.code
    return 0


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_catalogue(case, tmp_path, capsys, caplog):
    code = run_as_cli(case.overrides(tmp_path))
    captured = capsys.readouterr()
    said = captured.err + captured.out + caplog.text
    assert code == case.code, said[-3000:]
    if code:
        assert "vaelab error:" in captured.err
    flat = " ".join(said.split())  # messages are wrapped at 100 columns
    for fragment in case.says:
        assert fragment in flat, f"{fragment!r} not in {flat[-2000:]!r}"
    assert "Traceback" not in said


# -- composition errors: Hydra's, reworded by the real CLI ----------------------------------------
@pytest.mark.parametrize(
    "args, says",
    [
        (
            ["model.optimzer=adam"],
            ("model.optimzer is not a key of the config", "Keys under model:", "optimizer"),
        ),
        (["dataset=imagenet"], ("dataset=imagenet is not an option", "celeba, fashion_mnist, folder, mnist")),
        (["likelihood=poisson"], ("likelihood=poisson is not an option", "bernoulli, gaussian")),
        (["latent_dim=[1"], ("Cannot parse the override 'latent_dim=[1'",)),
    ],
)
def test_cli_composition_errors_are_one_paragraph(tmp_path, args, says):
    proc = run_train_cli([*args, f"paths.log_dir={tmp_path}"], timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("vaelab error:")
    flat = " ".join(proc.stderr.split())
    for fragment in says:
        assert fragment in flat
    assert "Traceback" not in proc.stderr + proc.stdout


# the README's spellings from before the model was composed from parts: (old, new) per override
OLD_SPELLINGS = [
    ("model=conv", "net=conv"),
    ("model=mlp", "net=mlp"),
    ("model.net=conv", "net=conv"),
    ("model.hidden_dims=[64,32]", "net.hidden=[64,32]"),
    ("model.channels=[8,8,8,8]", "net.channels=[8,8,8,8]"),
    ("model.likelihood=bernoulli", "likelihood=bernoulli"),
    ("model.sigma=0.05", "likelihood.sigma=0.05"),
    ("model.learn_sigma=true", "likelihood=gaussian_learned"),
    ("model.beta=4", "objective.beta=4"),
    ("model.kl_warmup_steps=1000", "objective.warmup_steps=1000"),
    ("model.lr=1e-3", "optimizer.lr=1e-3"),
    ("model.weight_decay=1e-5", "optimizer.weight_decay=1e-5"),
    ("model.latent_dim=16", "latent_dim=16"),
]


@pytest.mark.parametrize("old, new", OLD_SPELLINGS, ids=[old for old, _ in OLD_SPELLINGS])
def test_an_old_spelling_is_answered_with_its_new_spelling(tmp_path, old, new):
    proc = run_train_cli([old, f"paths.log_dir={tmp_path}"], timeout=120)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stderr.startswith("vaelab error:")
    flat = " ".join(proc.stderr.split())
    assert new in flat, flat
    old_key = old.split("=")[0]
    if "." in old_key:  # a renamed key says which key replaced it
        assert f"{old_key} is now {new.split('=')[0]}" in flat, flat
    assert len(flat) < 400 and "\n\n" not in proc.stderr  # one short paragraph, not a listing
    assert "Traceback" not in proc.stderr + proc.stdout
    assert list(tmp_path.iterdir()) == []  # refused before any run folder


def test_the_new_spelling_of_every_old_one_composes(tmp_path):
    """What the messages suggest is itself a valid override."""
    for _, new in OLD_SPELLINGS:
        extra = ["net=conv"] if new.startswith("net.channels") else []
        compose_config([new, *extra])


def test_hydra_full_error_still_shows_the_traceback(tmp_path, monkeypatch):
    env = {**os.environ, "HYDRA_FULL_ERROR": "1", "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, str(TRAIN_SCRIPT), "model.optimzer=adam", f"paths.log_dir={tmp_path}"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "Traceback" in proc.stderr and "model.optimzer" in proc.stderr
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")  # the same for vaelab's own errors
    with pytest.raises(UserError, match="optimizer.lr=0 is invalid"), exit_on_user_error():
        run(compose_config(["optimizer.lr=0", "paths.output_dir=unused"]))


# -- data: things no single run shows -------------------------------------------------------------
def test_stale_cache_from_changed_sources_is_not_served(tmp_path):
    root = write_mnist(tmp_path / "data", n_train=100, n_test=20)
    dm = MNISTDataModule(str(root), str(tmp_path / "cache"), val_size=20, download=False)
    assert len(dm.load_splits()["train"]["images"]) == 80
    write_mnist(root, n_train=140, n_test=20)  # the source changes under the same names
    assert len(dm.load_splits()["train"]["images"]) == 120
    assert len(list((tmp_path / "cache").glob("mnist-*.pt"))) == 2


def test_full_disk_while_caching_trains_on_without_the_cache(tmp_path, caplog):
    """A real write failure from the kernel (RLIMIT_FSIZE: EFBIG even for root), not a mock."""
    root = write_mnist(tmp_path / "data", n_train=100, n_test=20)
    dm = MNISTDataModule(str(root), str(tmp_path / "cache"), val_size=20, download=False)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, hard))
    try:
        splits = dm.load_splits()
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, old_handler)
    assert len(splits["train"]["images"]) == 80
    assert "cannot write the data cache" in caplog.text and "is the disk full?" in caplog.text
    assert list((tmp_path / "cache").iterdir()) == []  # no half-written entry, no temp file


def test_training_never_writes_into_the_data_folder(tmp_path, mnist_root):
    """Tests run as root, where chmod proves nothing: record every write-like file operation
    Python makes (audit hooks see open modes, mkdir, rename, remove) while a run trains."""
    watched, writes = str(mnist_root.resolve()), []
    modes = ("w", "a", "x", "+")

    def hook(event, args):
        if not watched:
            return
        if event == "open" and isinstance(args[0], str | bytes | os.PathLike):
            path, mode, flags = str(args[0]), str(args[1] or ""), args[2] or 0
            writing = any(m in mode for m in modes) or flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT)
            if writing and os.path.abspath(path).startswith(watched):
                writes.append((event, path, mode))
        elif event in ("os.mkdir", "os.rename", "os.replace", "os.remove", "os.rmdir", "os.chmod") and any(
            isinstance(a, str) and os.path.abspath(a).startswith(watched) for a in args
        ):
            writes.append((event, args))

    sys.addaudithook(hook)
    try:
        run(
            compose_config(
                tiny_overrides(mnist_root, tmp_path / "run", tmp_path / "cache") + ["dataset.val_size=40"]
            )
        )
    finally:
        watched = ""  # audit hooks cannot be removed; this one goes quiet
    assert (tmp_path / "run" / "metrics.json").is_file()
    assert writes == []


# -- checkpoints: the payload never runs ---------------------------------------------------------
class Payload:
    """Unpickling this runs ``touch <marker>``: what a malicious checkpoint would do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("fmt", ["torch-zip", "pickle-protocol-2", "pickle-protocol-5"])
def test_crafted_pickle_checkpoint_does_not_run_its_payload(tmp_path, fmt, capsys):
    marker, evil = tmp_path / "PWNED", tmp_path / "evil.ckpt"
    payload = {"state_dict": {}, "hyper_parameters": {"latent_dim": 4}, "x": Payload(marker)}
    if fmt == "torch-zip":
        torch.save(payload, evil)
    else:
        evil.write_bytes(pickle.dumps(payload, protocol=int(fmt[-1])))
    with pytest.raises(UserError, match="could run arbitrary code"):
        load_checkpoint(evil)
    assert run_as_cli(_mnist(tmp_path, f"ckpt_path={evil}")) == 2  # resuming from it
    err = " ".join(capsys.readouterr().err.split())
    assert "evil.ckpt was not loaded" in err and "could run arbitrary code" in err
    if fmt != "pickle-protocol-5":  # protocol 5 is refused at its first frame, before the GLOBAL
        assert "posix.system" in err
    assert not marker.exists()
    evaluate = pytest.importorskip("vaelab.evaluate")  # src/eval.py's loader (issue 3)
    with pytest.raises(UserError, match="could run arbitrary code"):
        evaluate.load_checkpoint(str(evil))
    assert not marker.exists()


def test_checkpoint_with_omegaconf_hyperparameters_loads(tmp_path):
    """The allow-list: a Lightning checkpoint whose hparams are a DictConfig is data, not code."""
    path = tmp_path / "dictconfig.ckpt"
    hp = OmegaConf.create({"latent_dim": 4, "hidden_dims": [8], "net": "mlp", "sigma": 0.1, "x": None})
    torch.save({"state_dict": {"w": torch.ones(2)}, "hyper_parameters": hp, "p": Path("/tmp")}, path)
    ckpt = load_checkpoint(path)
    assert ckpt["hyper_parameters"].hidden_dims == [8] and torch.equal(ckpt["state_dict"]["w"], torch.ones(2))


def test_full_disk_while_checkpointing_keeps_the_previous_checkpoint(tmp_path):
    path, io = tmp_path / "last.ckpt", SafeCheckpointIO()
    io.save_checkpoint({"state_dict": {"w": torch.zeros(4)}}, path)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, hard))
    try:
        with pytest.raises(UserError, match=r"Cannot write checkpoint .*last\.ckpt.*previous checkpoint"):
            io.save_checkpoint({"state_dict": {"w": torch.ones(100_000)}}, path)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, old_handler)
    assert torch.equal(io.load_checkpoint(path)["state_dict"]["w"], torch.zeros(4))
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


# -- numerical faults ----------------------------------------------------------------------------
def _nan_on_fourth_training_step(monkeypatch):
    from vaelab.model.vae import VAE

    forward, calls = VAE.forward, []

    def forward_with_a_nan(self, x, y=None, k=1, **options):
        out = forward(self, x, y, k, **options)
        calls.append(torch.is_grad_enabled())
        if sum(calls) == 4 and torch.is_grad_enabled():
            out.log_px = out.log_px * float("nan")  # log p(x|z): the recon term
        return out

    monkeypatch.setattr(VAE, "forward", forward_with_a_nan)


def test_nan_loss_stops_at_its_step_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch, capsys):
    _nan_on_fourth_training_step(monkeypatch)
    code = run_as_cli(
        _mnist(tmp_path, "trainer.limit_train_batches=6", "callbacks.resume_checkpoints.every_n_steps=2")
    )
    err = " ".join(capsys.readouterr().err.split())
    assert code == 2
    # log p(x|z) is NaN: the recon term and the ELBO made from it
    assert "The training loss became NaN at step 3 (epoch 0): the recon and elbo terms are not finite" in err
    assert "optimizer.lr (now 0.001)" in err and "trainer.gradient_clip_val" in err
    assert "likelihood.sigma (now 0.1)" in err and "objective.warmup_steps=1000" in err
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    assert f"the last good checkpoint, {last}, was kept" in err
    ckpt = load_checkpoint(last)
    assert ckpt["global_step"] == 2 and all(torch.isfinite(t).all() for t in ckpt["state_dict"].values())


def test_deferred_check_stops_before_the_next_save_after_a_nan(tmp_path, monkeypatch, capsys):
    """The accelerator's check (no host sync per step), forced on the CPU: the NaN step's
    update is skipped on the device, and the host finds it when the next checkpoint is due."""
    from vaelab.module import VAEModule

    models = []
    monkeypatch.setattr(VAEModule, "_defers_loss_check", lambda self: models.append(self) or True)
    _nan_on_fourth_training_step(monkeypatch)
    over = ["trainer.limit_train_batches=6", "callbacks.resume_checkpoints.every_n_steps=2"]
    code = run_as_cli(_mnist(tmp_path, *over, "trainer.log_every_n_steps=50"))
    err = " ".join(capsys.readouterr().err.split())
    assert code == 2
    assert (
        "The training loss became NaN at step 3: the recon and elbo terms are not finite. Its update was "
        "skipped on the device, so the weights are finite; the run stopped at step 4" in err
    )
    ckpt = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt")
    assert ckpt["global_step"] == 2 and all(torch.isfinite(t).all() for t in ckpt["state_dict"].values())
    (model,) = models  # in memory, after the NaN step and one more: weights and moments finite
    optimizer = model.optimizers(use_pl_optimizer=False)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert all(torch.isfinite(t).all() for state in optimizer.state.values() for t in state.values())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_the_gpu_a_nan_step_is_skipped_on_the_device_and_reported(tmp_path, monkeypatch, capsys):
    _nan_on_fourth_training_step(monkeypatch)
    over = _mnist(tmp_path, "trainer.limit_train_batches=6", "trainer.log_every_n_steps=50")
    code = run_as_cli([o.replace("accelerator=cpu", "accelerator=gpu") for o in over])
    err = " ".join(capsys.readouterr().err.split())
    assert code == 2 and "became NaN at step 3: the recon term is not finite. Its update was skipped" in err


def _guard_host(lr=0.1):
    trainer = SimpleNamespace(current_epoch=0, global_step=3, callbacks=[], global_rank=0)
    hp = {  # the module's hparams: the part specs as plain dicts
        "optimizer": {"_target_": "vaelab.optim.Adam", "lr": lr},
        "likelihood": {"_target_": "vaelab.model.likelihoods.bernoulli.Bernoulli"},
        "objective": {"_target_": "vaelab.model.objectives.elbo.ELBO", "warmup_steps": 0},
    }
    return SimpleNamespace(trainer=trainer, hparams=hp)


def test_deferred_check_skips_the_bad_update_on_the_device_and_names_the_step():
    torch.manual_seed(0)
    net = torch.nn.Linear(3, 2)
    opt = Adam(net.parameters(), lr=0.1)
    check, host = DeferredCheck(rows=8), _guard_host()
    changed = []
    for step in range(3):
        loss = net(torch.randn(4, 3)).pow(2).mean() * (float("nan") if step == 1 else 1.0)
        check.watch(loss, {"recon": loss.expand(4), "kl": torch.zeros(4)})
        opt.zero_grad()
        loss.backward()
        check.before_optimizer_step(opt, step, host)
        before = [p.detach().clone() for p in net.parameters()]
        opt.step()
        changed.append(not all(torch.equal(a, b) for a, b in zip(before, net.parameters(), strict=True)))
    assert changed == [True, False, True]  # step 1's update was skipped by the kernel, no host sync
    assert all(torch.isfinite(t).all() for s in opt.state.values() for t in s.values())
    with pytest.raises(NonFiniteLossError, match="became NaN at step 1: the recon term is not finite") as err:
        check.raise_if_found(host)
    tips = " ".join(str(err.value).split())
    assert "optimizer.lr (now 0.1)" in tips and "objective.warmup_steps=1000" in tips
    assert "sigma" not in tips  # a Bernoulli decoder has none
    check.raise_if_found(host)  # reported once


def test_under_ddp_every_rank_stops_when_one_found_a_bad_step():
    """A rank whose own record is clean still raises when another rank's is not (the vote is
    an all-reduce, faked here), so no rank is left waiting in a collective."""
    votes = []
    host = _guard_host()
    host.trainer.strategy = SimpleNamespace(
        reduce_boolean_decision=lambda found, all: votes.append(found) or True,
        barrier=lambda name=None: votes.append("barrier"),
    )
    net = torch.nn.Linear(3, 1)
    opt = Adam(net.parameters(), lr=0.1)
    check = DeferredCheck(rows=4, across_ranks=True)
    check.watch(torch.tensor(1.0), {"recon": torch.ones(2), "kl": torch.ones(2)})
    net.weight.grad, net.bias.grad = torch.zeros(1, 3), torch.zeros(1)
    check.before_optimizer_step(opt, 0, host)
    with pytest.raises(NonFiniteLossError, match="Another DDP rank's training loss became non-finite"):
        check.raise_if_found(host)
    host.trainer.strategy.reduce_boolean_decision = lambda found, all: votes.append(found) or found
    check.raise_if_found(host)  # nobody found anything: the run goes on
    assert votes == [False, "barrier", False]  # the ranks that stop wait for each other's messages


def test_a_rank_other_than_0_says_its_own_error_before_rank_0_can_stop_it(capsys):
    host = _guard_host()
    host.trainer.global_rank = 1
    said_first = []  # what the rank had said on stderr when it reached the barrier
    host.trainer.strategy = SimpleNamespace(
        reduce_boolean_decision=lambda found, all: found,
        barrier=lambda name=None: said_first.append(capsys.readouterr().err),
    )
    check = DeferredCheck(rows=4, across_ranks=True)
    check.watch(torch.tensor(float("nan")), {"recon": torch.full((2,), float("nan")), "kl": torch.ones(2)})
    net = torch.nn.Linear(3, 1)
    net.weight.grad, net.bias.grad = torch.zeros(1, 3), torch.zeros(1)
    check.before_optimizer_step(Adam(net.parameters(), lr=0.1), 3, host)
    with pytest.raises(NonFiniteLossError) as err:
        check.raise_if_found(host)
    assert len(said_first) == 1  # it said its message, then waited for rank 0 at the barrier
    said = " ".join(said_first[0].split())
    assert said.startswith("vaelab error: The training loss became NaN at step 3: the recon term")
    assert err.value.reported  # exit_on_user_error will not print it a second time
    with pytest.raises(SystemExit) as stop, exit_on_user_error():
        raise err.value
    assert stop.value.code == 2 and capsys.readouterr().err == ""


def test_deferred_check_keeps_a_bad_micro_batch_of_an_accumulated_step():
    net = torch.nn.Linear(3, 1)
    opt = Adam(net.parameters(), lr=0.1)
    check, host = DeferredCheck(rows=4), _guard_host()
    for loss in (torch.tensor(float("inf")), torch.tensor(2.0)):  # the first micro-batch broke
        check.watch(loss, {"recon": loss.expand(2), "kl": torch.ones(2)})
    net.weight.grad, net.bias.grad = torch.zeros(1, 3), torch.zeros(1)
    check.before_optimizer_step(opt, 0, host)
    assert opt.found_inf.item() == 1.0  # one device: a non-finite loss skips the step by itself
    with pytest.raises(NonFiniteLossError, match="became inf at step 0: the recon term is not finite"):
        check.raise_if_found(host)


def test_deferred_check_reads_its_buffer_by_itself_when_full_and_names_a_bad_gradient():
    net = torch.nn.Linear(3, 1)
    opt = Adam(net.parameters(), lr=0.1)
    check, host = DeferredCheck(rows=2), _guard_host()
    check.watch(torch.tensor(1.0), {"recon": torch.ones(2), "kl": torch.ones(2)})  # a finite loss ...
    net.weight.grad, net.bias.grad = torch.full((1, 3), float("inf")), torch.zeros(1)  # ... inf gradient
    check.before_optimizer_step(opt, 7, host)
    assert opt.found_inf.item() == 1.0
    check.watch(torch.tensor(1.0), {"recon": torch.ones(2), "kl": torch.ones(2)})
    net.weight.grad = torch.zeros(1, 3)
    with pytest.raises(NonFiniteLossError, match="The gradient became non-finite at step 7: the gradient is"):
        check.before_optimizer_step(opt, 8, host)


def test_log_variance_is_clamped_to_a_safe_range():
    from vaelab.model.vae import LOGVAR_RANGE, VAE

    vae = VAE(
        (1, 28, 28),
        latent_dims=[4],
        net={"_target_": "vaelab.model.nets.mlp.MLP", "hidden": [16]},
        likelihood={"_target_": "vaelab.model.likelihoods.gaussian.Gaussian", "sigma": 0.1},
        prior={"_target_": "vaelab.model.priors.normal.StandardNormal"},
    )
    with torch.no_grad():
        vae.encoders[0][-1].bias[4:].fill_(1e4)  # log σ² = 10⁴: exp() is inf in any float
    x = torch.rand(3, 1, 28, 28)
    _, logvar = vae.encode(x)
    assert logvar.max() == LOGVAR_RANGE[1]
    out = vae(x)
    assert torch.isfinite(out.kl).all() and torch.isfinite(out.log_px).all()
    assert torch.isfinite(out.log_qz).all() and torch.isfinite(out.log_w).all()


def test_the_old_learn_sigma_hint_follows_its_value():
    from vaelab.errors import renamed

    assert renamed("model.learn_sigma", "true").endswith("is now likelihood=gaussian_learned.")
    assert renamed("model.learn_sigma", "false").endswith("is now likelihood=gaussian.")
