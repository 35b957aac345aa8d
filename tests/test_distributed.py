"""Distributed runs under Hydra: DDP ranks inside a sweep, two "nodes" on localhost, the guards."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import lightning.pytorch.strategies.launchers.subprocess_script as lightning_launcher
import pytest
import torch
from conftest import CONF, ROOT, cli_env, cli_overrides, compose_config, run_train_cli, train_command
from events import read_events
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import open_dict

from vaelab import distributed
from vaelab.errors import UserError
from vaelab.guards import DeferredCheck, NonFiniteLossError, check_finite_loss
from vaelab.module import VAEModule
from vaelab.optim import Adam

TESTS = Path(__file__).parent
GRIDS = ("images/reconstructions", "images/samples", "images/interpolations")


@pytest.fixture
def hydra_job():
    """Make a composed config the current Hydra job (as in the process that runs it), then undo it."""

    def _set(overrides, hydra_overrides=(), output_dir="/runs/sweep/0"):
        cfg = compose_config(overrides, with_hydra=True)
        with open_dict(cfg.hydra):
            cfg.hydra.runtime.output_dir = output_dir
            cfg.hydra.job.name = "train"  # what @hydra.main names the job of src/train.py
            cfg.hydra.overrides.hydra = list(hydra_overrides)
            cfg.hydra.mode = "MULTIRUN" if "hydra.mode=MULTIRUN" in hydra_overrides else "RUN"
        HydraConfig.instance().set_config(cfg)
        return cfg

    yield _set
    HydraConfig.instance().cfg = None


def test_child_ranks_rerun_their_job_in_its_dir_not_the_sweep(hydra_job, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["src/train.py", "-m", "latent_dim=2,4", "+callbacks.x=null"])
    monkeypatch.setattr(sys.modules["__main__"], "__spec__", None)  # as under `python src/train.py`
    monkeypatch.setenv("NODE_RANK", "0")
    hydra_job(
        ["latent_dim=2", "+callbacks.x=null"],
        ["hydra.mode=MULTIRUN", "hydra.sweep.dir=/runs/sweep", "hydra.verbose=true"],
    )
    command, cwd = distributed.job_command(local_rank=1)
    assert command[:2] == [sys.executable, str(Path.cwd() / "src" / "train.py")]
    assert "-m" not in command and "latent_dim=2,4" not in command
    assert command[2:4] == ["--config-name=train", f"--config-path={CONF}"]
    assert command[4:] == [
        "latent_dim=2",
        "+callbacks.x=null",
        "hydra.verbose=true",  # hydra overrides other than the sweep's survive
        'hydra.run.dir="/runs/sweep/0"',
        "hydra.job.name=train_node0_local1",
        "hydra.output_subdir=null",
        "hydra.mode=RUN",  # even under a search config that sets MULTIRUN
    ]
    assert cwd == os.getcwd()


def test_launch_scope_puts_back_what_the_launcher_changes(monkeypatch):
    for key in distributed.LAUNCHER_ENV:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("MASTER_ADDR", "10.0.0.1")
    waited = []
    trainer = SimpleNamespace(strategy=SimpleNamespace(launcher=SimpleNamespace(procs=[])))
    trainer.strategy.launcher.procs.append(SimpleNamespace(wait=lambda: waited.append(True)))
    threads = torch.get_num_threads()
    original = lightning_launcher._hydra_subprocess_cmd
    with distributed.launch_scope(trainer):
        assert lightning_launcher._hydra_subprocess_cmd is distributed.job_command
        os.environ.update(LOCAL_RANK="0", MASTER_PORT="1234", WORLD_SIZE="2", MASTER_ADDR="127.0.0.1")
        torch.set_num_threads(1)
    # LOCAL_RANK left behind would make the next sweep job think its ranks were started already
    assert "LOCAL_RANK" not in os.environ and "MASTER_PORT" not in os.environ
    assert os.environ["MASTER_ADDR"] == "10.0.0.1"
    assert torch.get_num_threads() == threads
    assert lightning_launcher._hydra_subprocess_cmd is original
    assert waited == [True]


def _trainer(num_nodes=2, external=False):
    env = SimpleNamespace(creates_processes_externally=external)
    return SimpleNamespace(
        world_size=2 * num_nodes, num_nodes=num_nodes, strategy=SimpleNamespace(cluster_environment=env)
    )


def test_separately_started_processes_need_a_named_run_dir(hydra_job):
    hydra_job(["trainer=multinode"])
    with pytest.raises(UserError, match=r"hydra.run.dir=\$\{paths.log_dir\}/\$\{now:") as err:
        distributed.check_run_dir(_trainer(num_nodes=2))
    assert "hydra.run.dir=outputs/mnist-2nodes" in str(err.value)
    with pytest.raises(UserError):  # torchrun / SLURM on one node: processes started externally
        distributed.check_run_dir(_trainer(num_nodes=1, external=True))
    distributed.check_run_dir(_trainer(num_nodes=1))  # Lightning starts the ranks: one folder


def test_a_named_run_dir_or_a_sweep_job_passes_the_guard(hydra_job):
    hydra_job(["trainer=multinode", "hydra.run.dir=/runs/two-nodes"])
    distributed.check_run_dir(_trainer(num_nodes=2))
    hydra_job(["trainer=multinode"], ["hydra.mode=MULTIRUN"])
    distributed.check_run_dir(_trainer(num_nodes=2))


@pytest.mark.parametrize(
    "env",
    [
        {"SLURM_NNODES": "3", "SLURM_NTASKS_PER_NODE": "4"},
        {"GROUP_WORLD_SIZE": "3", "LOCAL_WORLD_SIZE": "4"},  # torchrun --nnodes 3 --nproc-per-node 4
    ],
)
def test_multinode_takes_its_shape_from_slurm_or_torchrun(monkeypatch, env):
    for key in ("SLURM_NNODES", "SLURM_NTASKS_PER_NODE", "GROUP_WORLD_SIZE", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    trainer = compose_config(["trainer=multinode"], with_hydra=True).trainer
    assert (trainer.num_nodes, trainer.devices, trainer.strategy) == (3, 4, "ddp")


def test_scale_summary_states_effective_batch_and_lr_rule():
    trainer = SimpleNamespace(world_size=8, num_nodes=2, num_devices=4, accumulate_grad_batches=2)
    line = distributed.scale_summary(trainer, batch_size=128, lr=1e-3)
    assert "8 process(es) = 2 node(s) x 4 device(s)" in line
    assert "effective batch size 2048 = 128 per process x 8 x 2 accumulated" in line
    assert "lr 0.001 as configured" in line and "optimizer.lr=0.016" in line


def _expected_val_loss(cfg, ckpt: Path, probes: Path, world: int = 2) -> tuple[float, float]:
    """val/loss and val/kl recomputed in this process: each rank's shard, with its own noise."""
    model = VAEModule.load_from_checkpoint(ckpt, map_location="cpu").eval()
    images = instantiate(cfg.dataset).load_splits()["val"]["images"]
    losses, kls = [], []
    for rank in range(world):
        probe = torch.load(probes / f"rank{rank}_batch0.pt", weights_only=False)
        shard = images[rank::world]  # the loader's rule: every world-th index
        assert probe["n"] == len(shard)
        assert torch.equal((probe["x"] * 256).floor(), shard.float())  # those images, dequantised
        shard = probe["x"]
        torch.set_rng_state(probe["rng"])
        with torch.no_grad():
            terms = model.objective(model.vae, shard).terms  # the run's objective, as validation calls it
        losses.append(-(terms["recon"] - model.objective.beta * terms["kl"]))
        kls.append(terms["kl"])
    return torch.cat(losses).mean().item(), torch.cat(kls).mean().item()


def test_ddp_cpu_job_in_a_sweep_writes_one_dir_and_syncs_val_loss(tmp_path, mnist_root, compose_train):
    overrides = cli_overrides(tmp_path, mnist_root)
    probes = tmp_path / "probes"
    start = time.perf_counter()
    proc = run_train_cli(
        ["-m", "trainer=ddp_cpu", "latent_dim=3", *overrides]
        + ["+callbacks.probe._target_=rank_probe.ValRngProbe", f"+callbacks.probe.out_dir={probes}"],
        env_extra={"PYTHONPATH": str(TESTS)},
    )
    print(f"ddp_cpu sweep job: {time.perf_counter() - start:.1f} s")
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout + proc.stderr
    assert "Initializing distributed: GLOBAL_RANK: 1, MEMBER: 2/2" in out  # rank 1 joined this job
    assert out.count("effective batch size 32 = 16 per process x 2") == 1  # printed by rank 0 only
    # one sweep, one job dir; the child rank started no sweep and no run dir of its own
    (sweep,) = (tmp_path / "outputs" / "multirun").iterdir()
    assert list((tmp_path / "outputs").iterdir()) == [tmp_path / "outputs" / "multirun"]
    job = sweep / "0"
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == ["0"]
    assert {p.name for p in (job / "checkpoints").iterdir()} == {"epoch000-step000002.ckpt", "last.ckpt"}
    assert {p.name for p in job.glob("*.log")} == {"train.log", "train_node0_local1.log"}
    scalars, images = read_events(job / "tensorboard")
    assert {tag: len(images[tag]) for tag in GRIDS} == dict.fromkeys(GRIDS, 1)  # one set, rank 0's
    # the synced val/loss is the mean over both ranks' shards, recomputed independently here
    cfg = compose_train(overrides + ["latent_dim=3"])
    loss, kl = _expected_val_loss(cfg, job / "checkpoints" / "last.ckpt", probes)
    metrics = json.loads((job / "metrics.json").read_text())
    assert metrics["val/loss"] == pytest.approx(loss, rel=1e-5)
    assert metrics["val/kl"] == pytest.approx(kl, rel=1e-4)
    assert scalars["val/loss"][-1] == pytest.approx(loss, rel=1e-5)
    assert "| 0 |" in proc.stdout and (sweep / "summary.csv").is_file()  # the sweep summary ran


def test_a_nan_on_one_ddp_cpu_rank_stops_both_ranks_at_once(tmp_path, mnist_root):
    """Rank 1's batch at step 3 is NaN; rank 0's loss stays finite. Both skip the update (the
    all-reduced gradient is NaN on both), vote at the next look and stop, instead of one rank
    stopping and the other waiting in a collective until the timeout."""
    overrides = cli_overrides(tmp_path, mnist_root)
    nan = [
        "+callbacks.nan._target_=rank_probe.NanBatchOnRank",
        "+callbacks.nan.rank=1",
        "+callbacks.nan.step=3",
    ]
    start = time.perf_counter()
    proc = run_train_cli(
        [
            "trainer=ddp_cpu",
            *overrides,
            "trainer.limit_train_batches=6",
            "trainer.log_every_n_steps=50",
            *nan,
        ],
        env_extra={"PYTHONPATH": str(TESTS)},
        timeout=120,
    )
    out = " ".join((proc.stdout + proc.stderr).split())
    assert proc.returncode == 2, out[-3000:]
    # rank 0 reports (its own loss was finite, the all-reduced gradient not); rank 1 stopped with it
    assert (
        "The gradient became non-finite at step 3: the gradient is not finite. Its update was skipped" in out
    )
    # and rank 1, whose own batch broke, names the term (it is not killed before it can say so)
    assert (
        "[rank 1 of 2] The training loss became NaN at step 3: the recon, kl and elbo terms are not finite"
        in out
    )
    assert "[rank 0 of 2] The gradient became non-finite at step 3" in out
    assert time.perf_counter() - start < 100


def _iwae_host(rank: int = 0, world: int = 1):
    """What the NaN guard reads of the module and trainer, for an IWAE run."""
    trainer = SimpleNamespace(
        current_epoch=1, global_step=6, callbacks=[], global_rank=rank, world_size=world
    )
    trainer.strategy = SimpleNamespace(
        reduce_boolean_decision=lambda found, all: found, barrier=lambda name=None: None
    )
    hparams = {"optimizer": {"lr": 1e-3}, "likelihood": {}, "objective": {"k": 5}}
    return SimpleNamespace(trainer=trainer, hparams=hparams)


def _iwae_terms(bound: float) -> dict[str, torch.Tensor]:
    """An IWAE objective's terms (vaelab.model.objectives.iwae): the bound is the one that broke."""
    return {
        "recon": torch.ones(4),
        "kl": torch.ones(4),
        "elbo": torch.zeros(4),
        "iwae": torch.full((4,), bound),
    }


@pytest.mark.parametrize("world", [1, 2], ids=["one-device", "ddp"])
def test_the_deferred_check_keeps_a_column_per_objective_term_and_names_the_iwae_bound(world):
    """The columns come from the objective's own terms (here an IWAE run's, which add "iwae"),
    found at the first watch; the message names the term that broke, not recon/kl."""
    net = torch.nn.Linear(3, 1)
    opt = Adam(net.parameters(), lr=0.1)
    check, host = DeferredCheck(rows=4, across_ranks=world > 1), _iwae_host(rank=world - 1, world=world)
    for step, bound in ((5, -1.0), (6, float("-inf"))):  # all log-weights -inf: the bound is -inf
        check.watch(torch.tensor(-bound), _iwae_terms(bound))
        net.weight.grad, net.bias.grad = torch.zeros(1, 3), torch.zeros(1)
        check.before_optimizer_step(opt, step, host)
    assert check._names == ["recon", "kl", "elbo", "iwae", "gradient"]
    assert check._buffer.shape == (4, len(check._names) + 2)  # + loss and "skipped"
    with pytest.raises(NonFiniteLossError) as err:
        check.raise_if_found(host)
    message = " ".join(str(err.value).split())
    rank = "[rank 1 of 2] " if world > 1 else ""
    assert message.startswith(f"{rank}The training loss became inf at step 6: the iwae term is not finite.")
    assert "a lower optimizer.lr (now 0.001)" in message


def test_on_the_cpu_the_loss_check_names_the_iwae_bound_too():
    host = _iwae_host()
    check_finite_loss(torch.tensor(1.0), _iwae_terms(-1.0), host)  # finite: nothing to say
    with pytest.raises(NonFiniteLossError, match=r"inf at step 6 \(epoch 1\): the iwae term is not finite"):
        check_finite_loss(torch.tensor(float("inf")), _iwae_terms(float("-inf")), host)
    terms = {**_iwae_terms(float("nan")), "recon": torch.full((4,), float("nan"))}
    with pytest.raises(NonFiniteLossError, match="NaN at step 6 .*: the recon and iwae terms are not finite"):
        check_finite_loss(torch.tensor(float("nan")), terms, host)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _two_nodes(args: list[str]) -> list[str]:
    """Run the same command as node 0 and node 1 of a 2-node gloo job on localhost; their output."""
    env = cli_env(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()))
    for key in ("LOCAL_RANK", "RANK", "WORLD_SIZE"):
        env.pop(key, None)
    nodes = [
        subprocess.Popen(
            train_command(args),
            cwd=ROOT,
            env={**env, "NODE_RANK": str(rank)},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank in (0, 1)
    ]
    try:
        outputs = [node.communicate(timeout=180)[0] for node in nodes]
    finally:
        for node in nodes:
            node.kill()
    for node, output in zip(nodes, outputs, strict=True):
        assert node.returncode == 0, output[-3000:]
    return outputs


def test_two_nodes_on_localhost_train_and_resume(tmp_path, mnist_root):
    common = [
        "trainer=multinode",
        "trainer.num_nodes=2",
        "trainer.devices=1",
        "test=false",  # fit and resume are the point here
        *cli_overrides(tmp_path, mnist_root),
    ]
    start = time.perf_counter()
    first = _two_nodes([*common, f"hydra.run.dir={tmp_path / 'a'}"])
    last = tmp_path / "a" / "checkpoints" / "last.ckpt"
    _two_nodes([*common, f"hydra.run.dir={tmp_path / 'b'}", f"ckpt_path={last}", "trainer.max_epochs=2"])
    print(f"two nodes, train + resume: {time.perf_counter() - start:.1f} s")
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in first[1]  # node 1 held global rank 1 of 2
    assert "effective batch size 32 = 16 per process x 2" in first[0]
    assert torch.load(last, weights_only=False)["global_step"] == 2
    resumed = torch.load(tmp_path / "b" / "checkpoints" / "last.ckpt", weights_only=False)
    assert resumed["global_step"] == 4
    scalars, _ = read_events(tmp_path / "b" / "tensorboard")
    assert len(scalars["train/loss"]) == 2  # only the two new steps were trained
    assert json.loads((tmp_path / "b" / "metrics.json").read_text())["val/loss"] is not None
    assert not (tmp_path / "outputs").exists()  # no per-node timestamped run dirs
