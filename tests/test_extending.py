""" "Adding a network is one module + one YAML" (README, Extending vaelab), done for real.

In a temporary directory: a copy of conf/, a new module defining a network, and one YAML naming
it. A training run picks it by name, its checkpoint names it, and the model is rebuilt from the
checkpoint alone. Nothing outside the temporary directory changes.
"""

from __future__ import annotations

import re
import shutil
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import CONF, ROOT, tiny_overrides
from hydra import compose, initialize_config_dir

import vaelab.train
from vaelab.errors import UserError
from vaelab.evaluate import load_checkpoint, model_from_checkpoint
from vaelab.model.parts import build

TINY = '''
"""A user's own network, outside the vaelab package."""

import math

from torch import nn

from vaelab.errors import UserError
from vaelab.model.nets.base import Net


class TinyEncoder(nn.Module):
    def __init__(self, in_shape, width, out_features):
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(), nn.Linear(math.prod(in_shape), width), nn.ReLU(), nn.Linear(width, out_features)
        )

    def forward(self, x):
        return self.net(x)


class TinyDecoder(nn.Module):
    def __init__(self, in_features, width, out_shape):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(in_features, width),
            nn.ReLU(),
            nn.Linear(width, math.prod(out_shape)),
            nn.Unflatten(1, tuple(out_shape)),
        )

    def forward(self, z):
        return self.net(z)


class Tiny(Net):
    """One hidden layer of ``width`` units."""

    def __init__(self, width: int = 32):
        if not isinstance(width, int) or width < 1:
            raise UserError(f"Tiny: width={width!r} must be a whole number >= 1.")
        self.width = width

    def encoder(self, in_shape, out_features):
        return TinyEncoder(in_shape, self.width, out_features)

    def decoder(self, in_features, out_shape):
        return TinyDecoder(in_features, self.width, out_shape)
'''

YAML = """\
# A tiny fully connected net: one hidden layer
_target_: mynets.tiny.Tiny
# units of the hidden layer
width: 16
"""


def _snapshot(folder: Path) -> dict[str, float]:
    return {str(p.relative_to(folder)): p.stat().st_mtime for p in folder.rglob("*") if p.is_file()}


@pytest.fixture
def user_project(tmp_path, monkeypatch):
    """tmp/conf (a copy of the repo's, plus conf/net/tiny.yaml) and tmp/mynets/tiny.py on sys.path."""
    conf = tmp_path / "conf"
    shutil.copytree(CONF, conf)
    (conf / "net" / "tiny.yaml").write_text(YAML)
    package = tmp_path / "mynets"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "tiny.py").write_text(textwrap.dedent(TINY))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield conf
    for name in [m for m in sys.modules if m == "mynets" or m.startswith("mynets.")]:
        del sys.modules[name]


def _compose(conf: Path, overrides: list[str]):
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        return compose(config_name="train", overrides=overrides)


def test_a_new_network_is_one_module_and_one_yaml(tmp_path, mnist_root, user_project, monkeypatch):
    repo_conf_before = _snapshot(CONF)
    out = tmp_path / "run"
    overrides = tiny_overrides(mnist_root, out, tmp_path / "cache") + [
        "net=tiny",
        "net.width=24",  # its option, set like any other
        "latent_dim=4",
        "dataset.val_size=40",
        "trainer.max_epochs=2",
        "trainer.max_steps=3",
        "callbacks.sample_quality=null",
        "test=false",  # keep the final weights in the model (testing would load the best)
    ]
    cfg = _compose(user_project, overrides)
    assert cfg.model.net == {"_target_": "mynets.tiny.Tiny", "width": 24}

    built = []

    def keep_model(cfg):
        parts = build_run(cfg)
        built.append(parts[1])
        return parts

    build_run = vaelab.train.build
    monkeypatch.setattr(vaelab.train, "build", keep_model)
    metrics = vaelab.train.run(cfg)
    assert metrics["train/loss"] is not None

    from mynets.tiny import TinyDecoder, TinyEncoder

    vae = built[0].vae
    assert isinstance(vae.encoders[0], TinyEncoder) and isinstance(vae.decoders[0], TinyDecoder)
    assert vae.encoders[0].net[1].out_features == 24  # net.width reached the class

    ckpt = load_checkpoint(str(out / "checkpoints" / "last.ckpt"))  # weights_only, as src/eval.py loads
    assert ckpt["global_step"] == 3
    assert ckpt["hyper_parameters"]["net"]["_target_"] == "mynets.tiny.Tiny"
    assert ckpt["hyper_parameters"]["net"]["width"] == 24

    rebuilt = model_from_checkpoint(ckpt)
    assert isinstance(rebuilt.encoders[0], TinyEncoder) and isinstance(rebuilt.decoders[0], TinyDecoder)
    vae.eval()
    x = torch.rand(6, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    z = torch.randn(6, 4, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(rebuilt.encode(x), vae.encode(x), rtol=0, atol=0)
    torch.testing.assert_close(rebuilt.reconstruct(x), vae.reconstruct(x), rtol=0, atol=0)
    torch.testing.assert_close(rebuilt.generate(z), vae.generate(z), rtol=0, atol=0)
    trained = {k: v for k, v in ckpt["state_dict"].items() if k.startswith("vae.")}
    assert trained and all(torch.equal(rebuilt.state_dict()[k[4:]], v) for k, v in trained.items())

    # nothing outside the temporary directory changed: the repository's conf/ has no tiny.yaml
    assert _snapshot(CONF) == repo_conf_before
    assert not (CONF / "net" / "tiny.yaml").exists()
    assert not (ROOT / "mynets").exists()


def test_the_new_networks_own_checks_reach_the_user(user_project):
    cfg = _compose(user_project, ["net=tiny", "net.width=0"])
    with pytest.raises(UserError, match="Tiny: width=0"):
        build(cfg.net)
    with pytest.raises(UserError, match="has no option depth"):
        build({**cfg.net, "depth": 2})


def test_the_readme_walkthrough_code_runs(tmp_path, monkeypatch):
    """The network class printed in the README's "Extending vaelab" section, as written there."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Extending vaelab", 1)[1].split("\n## ", 1)[0]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    yaml = re.search(r"```yaml\n(.*?)```", section, re.S).group(1)
    target = re.search(r"_target_: (\S+)", yaml).group(1)
    module_path, cls = target.rsplit(".", 1)
    package = tmp_path / "readme_nets"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "wide.py").write_text(code)
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        spec = {"_target_": f"readme_nets.wide.{cls}", "width": 8}  # the README's class, from tmp
        net = build(spec)
        encoder, decoder = net.encoder((1, 28, 28), 6), net.decoder(3, (1, 28, 28))
        assert encoder(torch.rand(2, 1, 28, 28)).shape == (2, 6)
        assert decoder(torch.randn(2, 3)).shape == (2, 1, 28, 28)
        assert module_path.endswith(".wide")  # the YAML names the module the code block is in
    finally:
        for name in [m for m in sys.modules if m.startswith("readme_nets")]:
            del sys.modules[name]
