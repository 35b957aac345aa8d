"""vaelab.allocator: importance sampling stops page-faulting once freed memory is kept."""

import subprocess
import sys

import pytest
from conftest import ROOT

CHURN = """
import resource, sys, torch
from vaelab.allocator import keep_freed_memory
from vaelab.metrics import batch_terms
from vaelab.model.vae import VAE

kept = keep_freed_memory() if sys.argv[1] == "keep" else None
torch.manual_seed(0)
vae = VAE(
    (1, 28, 28),
    [32],
    net={"_target_": "vaelab.model.nets.mlp.MLP", "hidden": [400]},
    likelihood={"_target_": "vaelab.model.likelihoods.gaussian.Gaussian"},
    prior={"_target_": "vaelab.model.priors.normal.StandardNormal"},
).eval()
x = torch.rand(100, 1, 28, 28)
batch_terms(vae, x, None, 100, 2000)  # warm-up: the first pass faults its pages in either way
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(4):
    batch_terms(vae, x, None, 100, 2000)  # 5 chunks of 2000 decodes each, 6 MB per output tensor
print(kept, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mode: str) -> tuple[str, int]:
    out = subprocess.run(
        [sys.executable, "-c", CHURN, mode],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env={"OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")},
        check=True,
    ).stdout.split()
    return out[0], int(out[1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mallopt is glibc's")
def test_kept_memory_cuts_the_page_faults_of_importance_sampling():
    (_, default), (kept, keep) = _faults("default"), _faults("keep")
    assert kept == "True"
    # two passes measured ~55,000 against ~4,000 on a quiet machine, 36,918 against 10,720 and
    # once 8,374 against 1 on fresh CI clones: four passes (95,000-142,000 against 2-6,000 here)
    # keep the default's count clear of the bound
    assert default > 10_000 and keep < default / 2, (default, keep)
