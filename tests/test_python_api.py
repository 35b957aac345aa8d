"""vaelab.load / vaelab.load_data on a tiny run: every code block of docs/python.md, the saved
ex-post prior, seeds, and the likelihood src/eval.py reports."""

import logging
import re

import pytest
import torch
from conftest import ROOT, compose_config, saved_tiny_run

import vaelab
from vaelab.errors import UserError
from vaelab.evaluate import run as evaluate

DOC = ROOT / "docs" / "python.md"
PLACEHOLDER = "outputs/2026-12-08/10-00-00"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return saved_tiny_run(tmp_path_factory.mktemp("api"), ["latent_dim=3"])


def test_every_code_block_of_the_python_page_runs(run_dir, tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    assert len(blocks) == 5 and PLACEHOLDER in blocks[0]
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for block in blocks:
        exec(compile(block.replace(PLACEHOLDER, str(run_dir)), str(DOC), "exec"), namespace)
    assert namespace["x"].shape == (16, 1, 28, 28) and namespace["codes"].shape == (8, 3)
    assert namespace["recon"].shape == (8, 1, 28, 28) and namespace["line"].shape == (10, 1, 28, 28)
    assert namespace["log_px"].shape == (100,) and namespace["images"].dtype == torch.float32
    assert (tmp_path / "samples.png").is_file() and (tmp_path / "interpolation.png").is_file()


def test_expost_samples_read_the_runs_mixture_and_repeat_with_their_seed(run_dir, caplog):
    caplog.set_level(logging.INFO, logger="vaelab.expost")
    model = vaelab.load(run_dir)
    a, b = model.sample(16, sampler="expost", seed=0), model.sample(16, sampler="expost", seed=0)
    assert a.shape == (16, 1, 28, 28) and a.dtype == torch.float32 and a.min() >= 0 and a.max() <= 1
    assert torch.equal(a, b) and not torch.equal(a, model.sample(16, sampler="expost", seed=1))
    said = [r.getMessage() for r in caplog.records if r.name == "vaelab.expost"]
    assert len(said) == 1 and "read from" in said[0]  # not fitted again
    with pytest.raises(UserError, match="sampler='flow' is not valid: use prior or expost"):
        model.sample(2, sampler="flow")


def test_log_likelihood_is_what_src_eval_reports_for_the_same_images(run_dir, tmp_path):
    model = vaelab.load(run_dir)
    images, _ = vaelab.load_data(model, "test")
    log_px = model.log_likelihood(images[:50], k=20, batch_size=25)
    overrides = [f"ckpt_path={model.checkpoint}", f"paths.output_dir={tmp_path}", "eval.n=50", "eval.k=20"]
    overrides += ["eval.batch_size=25", "eval.quality=false", "eval.expost_components=0"]
    m = evaluate(compose_config(overrides, config_name="eval"), overrides)
    assert float(-log_px.mean()) == pytest.approx(m["nll_iwae"], abs=1e-3)  # the same draws
    before = torch.get_rng_state()
    model.log_likelihood(images[:5], k=2)
    assert torch.equal(before, torch.get_rng_state())  # the caller's random stream untouched


def test_a_folder_without_checkpoints_says_what_to_give(tmp_path):
    with pytest.raises(UserError, match="neither a checkpoint nor a run folder with checkpoints/"):
        vaelab.load(tmp_path)


@pytest.mark.parametrize("model_option", ["conditional", "hierarchical"])
def test_conditional_and_hierarchical_runs_sample_from_python(tmp_path, model_option):
    out = saved_tiny_run(tmp_path, [f"model={model_option}", "callbacks.sample_quality=null"])
    model = vaelab.load(out)
    x = model.sample(4, sampler="expost", seed=0)
    assert x.shape == (4, 1, 28, 28) and torch.equal(x, model.sample(4, sampler="expost", seed=0))
    if model_option == "conditional":  # a class's samples: its labels go to the decoder
        threes = model.sample(4, seed=0, y=torch.full((4,), 3))
        assert not torch.equal(threes, model.sample(4, seed=0, y=torch.full((4,), 7)))
