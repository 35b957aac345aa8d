"""Helpers for the tests that train in-process and in subprocesses.

One intra-op thread: the same float arithmetic in every process (resume comparisons are
exact), and no oversubscription on a shared machine, where two threads on two busy cores run
a tiny model ten times slower than one.
"""

import pytest
import torch
from conftest import CONF
from hydra import compose, initialize_config_dir

ONE_THREAD = {"OMP_NUM_THREADS": "1"}  # the same, for subprocesses


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def compose_config(overrides: list[str]):
    """conf/train.yaml + ``overrides``, as ``python src/train.py`` composes it."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="train", overrides=overrides)
