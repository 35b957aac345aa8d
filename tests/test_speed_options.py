"""The fast data path, the compute options and the benchmark script (its fields, not its timings)."""

import json
import subprocess
import sys

import lightning as L
import pytest
import torch
from conftest import ROOT, tiny_overrides
from events import scalar_steps

from vaelab.data import MNISTDataModule
from vaelab.data.loader import EpochBatchSampler, TensorBatchLoader, storage_device
from vaelab.errors import UserError
from vaelab.module import VAEModule
from vaelab.optim import Adam
from vaelab.train import build, run

BENCH = ROOT / "benchmarks"
CUDA = torch.device("cuda", 0)
MB = 2**20


# -- where a split lives -------------------------------------------------------------
@pytest.mark.parametrize(
    "device,on_device,free,expected",
    [
        (torch.device("cpu"), "auto", None, "cpu"),
        (torch.device("cpu"), True, None, "cpu"),  # nothing to move to
        (CUDA, "auto", 100 * MB, "cuda"),  # 47 MB fits in half of 100 MB
        (CUDA, "auto", 90 * MB, "cpu"),  # but not in half of 90 MB: pinned host memory
        (CUDA, True, 0, "cuda"),
        (CUDA, False, 100 * MB, "cpu"),
        (torch.device("mps"), "auto", None, "cpu"),  # no free-memory figure: stay on the host
    ],
)
def test_storage_device_puts_a_split_on_the_accelerator_only_when_it_fits(device, on_device, free, expected):
    assert storage_device(47 * MB, device, on_device, 0.5, free_bytes=free).type == expected


@pytest.mark.parametrize(
    "kw,match",
    [
        ({"on_device": "yes"}, r"dataset.on_device='yes' is invalid.*auto.*true.*false"),
        ({"device_memory_fraction": 0}, r"dataset.device_memory_fraction=0 is invalid.*\(0, 1\]"),
        ({"device_memory_fraction": 1.5}, r"dataset.device_memory_fraction=1.5 is invalid"),
    ],
)
def test_bad_on_device_settings_are_user_errors(tmp_path, kw, match):
    with pytest.raises(UserError, match=match):
        MNISTDataModule(str(tmp_path), str(tmp_path / "cache"), **kw)


def test_loader_serves_uint8_slices_of_one_permutation_per_epoch():
    images = torch.arange(10, dtype=torch.uint8).view(10, 1, 1, 1).expand(10, 1, 2, 2).contiguous()
    labels = torch.arange(10) * 7
    sampler = EpochBatchSampler(10, 4, shuffle=True, seed=3)
    loader = TensorBatchLoader(images, labels, sampler)
    batches = list(loader)
    assert [len(x) for x, _ in batches] == [4, 4, 2] and loader.device == images.device
    seen = torch.cat([x[:, 0, 0, 0] for x, _ in batches])
    assert batches[0][0].dtype == torch.uint8 and sorted(seen.tolist()) == list(range(10))
    assert torch.equal(torch.cat([y for _, y in batches]), seen.long() * 7)  # labels stay aligned
    assert torch.equal(seen, sampler.indices().to(torch.uint8))  # the sampler's order, batched


def test_setup_keeps_splits_on_the_cpu_trainer_device_and_serves_uint8(tmp_path, mnist_root):
    dm = MNISTDataModule(str(mnist_root), str(tmp_path / "cache"), val_size=20, on_device=True)
    dm.prepare_data()
    dm.setup("fit")
    x, y = next(iter(dm.train_dataloader()))
    assert dm.placed_for == torch.device("cpu") and x.device.type == "cpu"
    assert x.dtype == torch.uint8 and x.shape == (128, 1, 28, 28) and y.shape == (128,)


# -- compute options ------------------------------------------------------------------
def _module(image_shape, net, **kw) -> VAEModule:
    """A VAEModule from part specs, as conf/model/vae.yaml composes it."""
    return VAEModule(
        image_shape,
        latent_dims=[4],
        net=net,
        likelihood={"_target_": "vaelab.model.likelihoods.gaussian.Gaussian", "sigma": 0.1},
        prior={"_target_": "vaelab.model.priors.normal.StandardNormal"},
        objective={"_target_": "vaelab.model.objectives.elbo.ELBO"},
        optimizer={"_target_": "vaelab.optim.Adam", "_partial_": True, "lr": 1e-3},
        **kw,
    )


MLP = {"_target_": "vaelab.model.nets.mlp.MLP", "hidden": [16]}
CONV = {"_target_": "vaelab.model.nets.conv.Conv", "channels": [8, 8, 8, 8]}


def test_compile_is_in_place_so_checkpoint_keys_do_not_change():
    torch.manual_seed(0)
    plain = _module((1, 28, 28), MLP)
    torch.manual_seed(0)
    compiled = _module((1, 28, 28), MLP, compile=True)
    assert compiled.vae._compiled_call_impl is not None and plain.vae._compiled_call_impl is None
    assert list(compiled.state_dict()) == list(plain.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(compiled.parameters(), plain.parameters(), strict=True))


def test_channels_last_conv_vae_computes_the_same_terms():
    torch.manual_seed(0)
    nchw = _module((3, 64, 64), CONV)
    torch.manual_seed(0)
    nhwc = _module((3, 64, 64), CONV, channels_last=True)
    conv = nhwc.vae.encoders[0].features[0][0].weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    x = torch.rand(2, 3, 64, 64)
    nchw.eval(), nhwc.eval()
    torch.manual_seed(1)
    a = nchw.vae(x)
    torch.manual_seed(1)
    b = nhwc.vae(x)
    assert torch.allclose(a.mu, b.mu, atol=1e-5) and torch.allclose(a.log_px, b.log_px, rtol=1e-4)
    assert torch.allclose(a.params, b.params, atol=1e-5)


def test_train_metrics_reach_the_logger_and_metrics_json_with_fewer_log_calls(
    tmp_path, mnist_root, compose_train
):
    over = tiny_overrides(mnist_root, tmp_path / "run", tmp_path / "cache")
    over += ["dataset.val_size=40", "trainer.limit_train_batches=5", "trainer.log_every_n_steps=2"]
    run(compose_train(over))
    # steps 1 and 3 as Lightning writes them (every 2nd), plus the first and the epoch's last
    assert scalar_steps(tmp_path / "run" / "tensorboard", "train/loss") == [0, 1, 3, 4]
    assert scalar_steps(tmp_path / "run" / "tensorboard", "train/kl") == [0, 1, 3, 4]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert {"train/loss", "train/elbo", "train/recon", "train/kl"} <= set(metrics)  # the epoch's last step


# -- the optimisation step (Lightning's automatic optimisation) ---------------------------
def _fit(tmp_path, mnist_root, compose_train, out, *extra):
    over = tiny_overrides(mnist_root, tmp_path / out, tmp_path / "cache")
    cfg = compose_train(
        over
        + [
            "dataset.val_size=40",
            "test=false",
            "trainer.limit_train_batches=3",
            "trainer.max_epochs=9",
            *extra,
        ]
    )
    L.seed_everything(0, verbose=False)
    datamodule, model, trainer = build(cfg)
    trainer.fit(model, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    return model, trainer


@pytest.mark.parametrize("clip,fused", [("null", True), ("1.0", False)])
def test_bf16_mixed_trains_with_fused_adam_unless_gradients_are_clipped(
    tmp_path, mnist_root, compose_train, clip, fused
):
    """Lightning's mixed-precision plugin cannot clip for an optimiser that unscales itself."""
    over = ["trainer.max_steps=2", "trainer.precision=bf16-mixed", f"trainer.gradient_clip_val={clip}"]
    model, trainer = _fit(tmp_path, mnist_root, compose_train, "run", *over)
    assert model.automatic_optimization  # clipping is Lightning's, in its own loop
    assert trainer.global_step == 2 and model.optimizers(use_pl_optimizer=False).fused == fused
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_fused_adam_stays_fused_when_it_loads_a_plain_adam_state():
    w = torch.nn.Parameter(torch.ones(3))
    plain = torch.optim.Adam([w], lr=0.1)
    w.grad = torch.ones(3)
    plain.step()
    assert plain.state_dict()["param_groups"][0]["fused"] is None
    fused = Adam([w], lr=0.5)
    fused.load_state_dict(plain.state_dict())
    assert fused.fused and fused.param_groups[0]["lr"] == 0.1 and fused.state[w]["step"].item() == 1
    before = w.detach().clone()
    fused.step()
    assert not torch.equal(w, before)


# -- the benchmark script -------------------------------------------------------------
def test_quick_benchmark_times_all_pipelines_on_identical_models(tmp_path, capsys):
    sys.path.insert(0, str(BENCH))
    try:
        import bench_training

        report = bench_training.main(["--quick", "--in-process", "--out", str(tmp_path / "r.json")])
    finally:
        sys.path.remove(str(BENCH))
    assert json.loads((tmp_path / "r.json").read_text()) == json.loads(json.dumps(report))
    for bench in ("mnist", "celeba"):
        section = report["sections"][bench]
        for name in ("bare", "classic", "vaelab"):
            r = section[name]
            assert r["sec_per_epoch"] > 0 and r["images_per_sec"] > 0 and r["peak_rss_mb"] > 0
        assert len({section[n]["init_checksum"] for n in ("bare", "classic", "vaelab")}) == 1
        assert section["vaelab"]["images"] == section["bare"]["images"] == section["classic"]["images"]
        assert {"c/a", "c/b", "c/a cpu", "c/b cpu"} <= set(section["ratios"])
    run_section = report["sections"]["run"]
    assert run_section["vaelab"]["seconds"] > 0 and "c/b" in run_section["ratios"]
    assert report["cache_build"]["celeba"]["images"] == 48 and report["cache_build"]["mnist"]["images"] == 700
    out = capsys.readouterr().out
    for text in ("(a) bare", "(b) classic", "(c) vaelab", "c/a =", "Whole MNIST run", "Cache build celeba"):
        assert text in out


def test_benchmark_cli_measures_each_step_in_its_own_process(tmp_path):
    out = tmp_path / "r.json"
    args = [
        "--quick",
        "--only",
        "mnist",
        "--pipelines",
        "bare",
        "--out",
        str(out),
        "--work-dir",
        str(tmp_path),
    ]
    proc = subprocess.run(
        [sys.executable, str(BENCH / "bench_training.py"), *args], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(out.read_text())
    bare = report["sections"]["mnist"]["bare"]
    assert bare["images"] == 500 and len(bare["epoch_seconds"]) == 1 and bare["peak_rss_mb"] > 0
    assert "mnist-bare-1" in proc.stderr and "(a) bare" in proc.stdout
    assert list(tmp_path.iterdir()) == [out]  # the scratch folder is removed


# -- on a GPU -------------------------------------------------------------------------
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_host_split_is_staged_through_pinned_buffers_to_the_gpu():
    images = torch.randint(0, 255, (300, 1, 28, 28), dtype=torch.uint8)
    labels = torch.arange(300)
    sampler = EpochBatchSampler(300, 64, shuffle=True, seed=0)
    staged = list(TensorBatchLoader(images, labels, sampler, device=CUDA))
    on_gpu = list(TensorBatchLoader(images.to(CUDA), labels.to(CUDA), sampler))
    assert all(x.device.type == "cuda" for x, _ in staged)
    for (xs, ys), (xg, yg) in zip(staged, on_gpu, strict=True):
        assert torch.equal(xs, xg) and torch.equal(ys, yg)
