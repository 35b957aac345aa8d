"""src/generate.py on a tiny checkpoint: files, the saved ex-post prior, seeds, samplers, errors."""

import logging
import os
import subprocess
import sys

import pytest
import torch
from conftest import ROOT, compose_config, saved_tiny_run
from PIL import Image

from vaelab.errors import UserError
from vaelab.generate import run as generate


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return saved_tiny_run(tmp_path_factory.mktemp("generate"), ["latent_dim=2"])


def _generate(run_dir, out, extra=()):
    best = next((run_dir / "checkpoints").glob("epoch*.ckpt"))  # the weights the run's picture used
    overrides = [f"ckpt_path={best}", f"out={out}", *extra]
    return generate(compose_config(overrides, config_name="generate"), overrides)


def test_samples_are_written_as_pngs_a_tensor_and_a_grid_from_the_runs_saved_mixture(
    run_dir, tmp_path, caplog
):
    caplog.set_level(logging.INFO, logger="vaelab.expost")
    out = _generate(run_dir, tmp_path / "a", ["n=10", "generate.grid=8", "generate.per_row=4"])
    assert sorted(p.name for p in out.glob("*.png")) == [f"{i:05d}.png" for i in range(10)] + ["grid.png"]
    samples = torch.load(out / "samples.pt", weights_only=True)
    assert samples.shape == (10, 1, 28, 28) and samples.dtype == torch.uint8
    with Image.open(out / "00003.png") as first:
        assert first.size == (28, 28)
        png = torch.tensor(list(first.convert("L").getdata()), dtype=torch.uint8).view(28, 28)
    assert torch.equal(png, samples[3, 0])  # the PNG and the tensor hold the same image
    with Image.open(out / "grid.png") as grid:
        assert grid.size == (4 * 30 + 2, 2 * 30 + 2)  # the first 8, 4 a row
    said = [r.getMessage() for r in caplog.records if r.name == "vaelab.expost"]
    assert len(said) == 1 and "read from" in said[0]  # training's mixture for these weights


def test_the_same_seed_writes_the_same_images_and_samplers_differ(run_dir, tmp_path):
    a, b, c, d = (
        torch.load(_generate(run_dir, tmp_path / name, ["n=6", *extra]) / "samples.pt", weights_only=True)
        for name, extra in (("a", []), ("b", []), ("c", ["seed=1"]), ("d", ["sampler=prior"]))
    )
    assert torch.equal(a, b) and not torch.equal(a, c) and not torch.equal(a, d)


@pytest.mark.parametrize(
    "extra, message",
    [
        (["sampler=flow"], "sampler='flow' is not valid: use expost .* or prior"),
        (["n=0"], "n=0 is invalid: it must be a whole number ≥ 1"),
    ],
)
def test_bad_settings_say_what_is_valid(run_dir, tmp_path, extra, message):
    with pytest.raises(UserError, match=message):
        _generate(run_dir, tmp_path / "x", extra)
    assert not (tmp_path / "x").exists()


def test_the_command_writes_beside_the_run(run_dir):
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    cmd = [
        sys.executable,
        str(ROOT / "src" / "generate.py"),
        f"ckpt_path={ckpt}",
        "n=3",
        "print_config=false",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = run_dir / "generated" / "expost-T1.0-seed0-n3"
    assert len(list(out.glob("0000*.png"))) == 3 and (out / "grid.png").is_file()
    assert (out / "generate.log").is_file()
