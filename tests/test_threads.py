"""The thread policy: the decision on fake /proc numbers, who wins, and the wiring into a run."""

import logging
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
from conftest import ROOT, tiny_overrides

from vaelab import threads
from vaelab.config import validate
from vaelab.errors import UserError
from vaelab.threads import CpuSample, ThreadPolicy

STAT = """cpu  900 0 300 5000 10 0 0 0 0 0
cpu0 100 5 50 1000 7 1 2 3 40 0
cpu1 200 0 100 2000 0 0 0 0 0 0
cpu2 999 0 999 0 0 0 0 0 0 0
intr 12345
ctxt 999
"""


@pytest.fixture(autouse=True)
def restore_torch_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize(
    ("cpus", "procs", "elsewhere", "expected"),
    [
        (2, 1, 0.0, 2),  # quiet 2-core machine: both cores
        (2, 1, 0.3, 2),  # a light background job: still both
        (2, 1, 0.6, 1),  # most of a core taken: one thread
        (2, 1, 1.0, 1),  # one core busy (the case)
        (2, 1, 5.0, 1),  # overloaded: never below one
        (2, 2, 0.0, 1),  # two DDP ranks on two cores: one each
        (8, 2, 0.0, 4),
        (8, 2, 3.0, 3),  # 5 free cores for 2 ranks: 2.5, rounded up
        (8, 2, 7.5, 1),
        (16, 1, 0.0, 16),
    ],
)
def test_choose_threads_shares_the_free_cores(cpus, procs, elsewhere, expected):
    assert threads.choose_threads(cpus, procs, elsewhere) == expected


def test_busy_jiffies_counts_the_given_cpus_without_idle_iowait_or_guest():
    # cpu0: user 100 + nice 5 + system 50 + irq 1 + softirq 2 + steal 3 (guest 40 is inside user)
    assert threads.busy_jiffies(STAT, {0}) == 161
    assert threads.busy_jiffies(STAT, {0, 1}) == 161 + 300
    assert threads.busy_jiffies(STAT, {5}) == 0


def test_busy_elsewhere_subtracts_this_run_and_its_sibling_ranks():
    before = CpuSample(wall=100.0, busy=50.0, own=10.0)
    # 10 s: the cores were busy 25 s in all, 15 s of it this process -> 1 core elsewhere
    assert threads.busy_elsewhere(before, CpuSample(110.0, 75.0, 25.0), 1) == pytest.approx(1.0)
    # two ranks of this run, 8 s each: 25 - 16 = 9 s -> 0.9 cores elsewhere
    assert threads.busy_elsewhere(before, CpuSample(110.0, 75.0, 18.0), 2) == pytest.approx(0.9)
    # tick granularity can make ours exceed the machine's count: never negative
    assert threads.busy_elsewhere(before, CpuSample(110.0, 51.0, 20.0), 1) == 0.0
    assert threads.busy_elsewhere(before, before, 1) == 0.0


def test_usable_cpus_follows_a_cgroup_quota(tmp_path):
    affinity = len(threads.os.sched_getaffinity(0))
    cpu_max = tmp_path / "cpu.max"
    cpu_max.write_text("max 100000\n")
    assert threads.usable_cpus(cpu_max) == affinity
    cpu_max.write_text("50000 100000\n")  # half a core: still one thread
    assert threads.usable_cpus(cpu_max) == 1
    assert threads.usable_cpus(tmp_path / "missing") == affinity


def test_a_config_number_wins_over_omp_num_threads_which_wins_over_auto():
    assert threads.fixed_threads(3, {"OMP_NUM_THREADS": "1"}) == (3, "threads=3")
    assert threads.fixed_threads("auto", {"OMP_NUM_THREADS": "2"}) == (2, "OMP_NUM_THREADS=2")
    assert threads.fixed_threads("auto", {}) == (None, "")
    assert threads.fixed_threads("auto", {"OMP_NUM_THREADS": ""}) == (None, "")


@pytest.mark.parametrize("bad", [0, -2, "two", True, 1.5])
def test_a_bad_threads_value_is_a_user_error(bad):
    with pytest.raises(UserError, match=rf"threads={bad!r} is not valid: use auto .* whole number > 0"):
        threads.fixed_threads(bad, {})


def test_config_validation_names_a_bad_threads_value(tmp_path, compose_train):
    cfg = compose_train(tiny_overrides(tmp_path, tmp_path / "run", tmp_path / "cache") + ["threads=0"])
    with pytest.raises(UserError, match=r"threads.*0.*auto or a whole number > 0"):
        validate(cfg)


def fake_machine(monkeypatch, samples):
    """Two usable cores whose /proc samples come from ``samples``, and no waiting."""
    monkeypatch.setattr(threads, "START_SAMPLE_SECONDS", 0.0)
    monkeypatch.setattr(threads, "usable_cpu_set", lambda: {0, 1})
    monkeypatch.setattr(threads, "sample_cpu", lambda cpus: samples.pop(0))
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)


def test_auto_follows_a_job_that_starts_and_stops_next_to_the_run(monkeypatch, caplog):
    samples = [
        CpuSample(0.0, 0.0, 0.0),
        CpuSample(0.25, 0.25, 0.25),  # setup: quiet -> 2 threads
        CpuSample(20.0, 39.0, 19.5),  # 19.75 s: 19.5 s busy elsewhere -> 1 thread
        CpuSample(40.0, 78.0, 38.0),  # still busy: no change, no line
        CpuSample(60.0, 96.0, 56.0),  # the other job ended -> 2 threads
    ]
    fake_machine(monkeypatch, samples)
    monkeypatch.setattr(threads.time, "monotonic", lambda: 1e9)  # every batch end is due
    trainer = SimpleNamespace(num_devices=1, is_global_zero=True)
    policy = ThreadPolicy("auto", every_n_seconds=10)
    with caplog.at_level(logging.INFO, logger="vaelab.threads"):
        policy.setup(trainer, None, "fit")
        assert torch.get_num_threads() == 2
        policy.on_train_batch_end(trainer, None, None, None, 0)
        assert torch.get_num_threads() == 1
        policy.on_train_batch_end(trainer, None, None, None, 1)
        policy.on_train_batch_end(trainer, None, None, None, 2)
        assert torch.get_num_threads() == 2
        policy.setup(trainer, None, "test")  # the test after fit: nothing new
    lines = [r.getMessage() for r in caplog.records if r.name == "vaelab.threads"]
    assert lines[0].startswith("torch threads: 2 (auto: 2 usable CPUs, 1 process(es) of this run on the node")
    assert "0.0 CPUs busy elsewhere; re-checked every 10 s" in lines[0]
    assert lines[1:] == [
        "torch threads: 2 -> 1 (1.0 CPUs busy elsewhere)",
        "torch threads: 1 -> 2 (0.0 CPUs busy elsewhere)",
    ]
    assert samples == []


def test_no_recheck_before_the_interval_has_passed(monkeypatch):
    samples = [CpuSample(0.0, 0.0, 0.0), CpuSample(0.25, 0.0, 0.0)]
    fake_machine(monkeypatch, samples)
    monkeypatch.setattr(threads.time, "monotonic", lambda: 5.0)
    policy = ThreadPolicy("auto", every_n_seconds=10)
    policy.setup(SimpleNamespace(num_devices=1, is_global_zero=True), None, "fit")
    policy.on_train_batch_end(None, None, None, None, 0)  # 4.75 s after the last sample: nothing read
    assert samples == [] and torch.get_num_threads() == 2


def test_ddp_ranks_share_the_cores(monkeypatch):
    fake_machine(monkeypatch, [CpuSample(0.0, 0.0, 0.0), CpuSample(0.25, 0.0, 0.0)])
    ThreadPolicy("auto").setup(SimpleNamespace(num_devices=2, is_global_zero=False), None, "fit")
    assert torch.get_num_threads() == 1


def test_a_fixed_count_is_set_and_never_rechecked(monkeypatch, caplog):
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    monkeypatch.setattr(threads, "sample_cpu", lambda cpus: pytest.fail("a fixed count reads no /proc"))
    trainer = SimpleNamespace(num_devices=1, is_global_zero=True)
    with caplog.at_level(logging.INFO, logger="vaelab.threads"):
        policy = ThreadPolicy(1)
        policy.setup(trainer, None, "fit")
        policy.on_train_batch_end(trainer, None, None, None, 0)
        ThreadPolicy("auto").setup(trainer, None, "fit")
    assert [r.getMessage().split(";")[0] for r in caplog.records if r.name == "vaelab.threads"] == [
        "torch threads: 1 (threads=1",
        "torch threads: 2 (OMP_NUM_THREADS=2",
    ]
    assert torch.get_num_threads() == 2


def test_a_run_logs_its_thread_count_once(tmp_path, mnist_root, compose_train, caplog):
    from vaelab.train import run

    over = tiny_overrides(mnist_root, tmp_path / "run", tmp_path / "cache") + [
        "dataset.val_size=40",
        "threads=1",
    ]
    with caplog.at_level(logging.INFO, logger="vaelab.threads"):
        run(compose_train(over))
    lines = [r.getMessage().split(" (")[0] for r in caplog.records if r.name == "vaelab.threads"]
    assert lines == ["torch threads: 1"]
    assert torch.get_num_threads() == 1


@pytest.mark.parametrize(
    ("script", "preset", "expected"),
    [
        ("train.py", {}, "GOMP_SPINCOUNT=10000 OMP_WAIT_POLICY=None"),
        ("train.py", {"GOMP_SPINCOUNT": "5"}, "GOMP_SPINCOUNT=5 OMP_WAIT_POLICY=None"),
        ("eval.py", {"OMP_WAIT_POLICY": "PASSIVE"}, "GOMP_SPINCOUNT=None OMP_WAIT_POLICY=PASSIVE"),
    ],
)
def test_the_entry_points_bound_openmp_spinning_unless_the_user_chose(script, preset, expected):
    probe = (
        "import os, runpy, sys; sys.argv = [sys.argv[1], '--help']\n"
        "try: runpy.run_path(sys.argv[0], run_name='__main__')\n"
        "except SystemExit: pass\n"
        "print(*(f'{k}={os.environ.get(k)}' for k in ('GOMP_SPINCOUNT', 'OMP_WAIT_POLICY')))"
    )
    env = {k: v for k, v in threads.os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    out = subprocess.run(
        [sys.executable, "-c", probe, str(ROOT / "src" / script)],
        env=env | preset,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.stdout.strip().endswith(expected), out.stderr[-2000:]


def test_omp_num_threads_set_after_the_config_is_not_the_users(monkeypatch):
    """Lightning's DDP sets OMP_NUM_THREADS when the run starts: auto stays auto."""
    fake_machine(monkeypatch, [CpuSample(0.0, 0.0, 0.0), CpuSample(0.25, 0.0, 0.0)])
    policy = ThreadPolicy("auto")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    policy.setup(SimpleNamespace(num_devices=1, is_global_zero=True), None, "fit")
    assert torch.get_num_threads() == 2 and policy.last is not None


def test_the_thread_policy_applies_from_python_too(capsys):
    import vaelab

    before = torch.get_num_threads()
    try:
        message = vaelab.use_thread_policy(1)
        assert torch.get_num_threads() == 1 and message.startswith("torch threads: 1")
        assert capsys.readouterr().out == message + "\n"  # a notebook shows what it chose
    finally:
        torch.set_num_threads(before)
    env = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    probe = "import os, vaelab, torch; print(os.environ.get('GOMP_SPINCOUNT'))"  # vaelab before torch
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "10000"
