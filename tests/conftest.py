"""Shared fixtures: a tiny recipe that runs the whole pipeline on digits in seconds."""

from __future__ import annotations

import os
import sys

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")

TINY_RECIPE = """
name = "tiny"
seed = 0
target = "laptop-x86"

[data]
dataset = "digits"
batch_size = 64

[teacher]
arch = "cnn"
params = { width = 8, depth = 1 }
epochs = 2

[student]
arch = "cnn"
params = { width = 4, depth = 1 }

[distill]
epochs = 2
alpha = 0.3          # numbers, not the "auto" default: its search (tests/test_distill_auto.py) would add a
temperature = 4.0    # minute to the many pipeline runs of the suite
losses = [{ name = "kd" }]

[qat]
enabled = true
epochs = 1
calibration_batches = 2

[ptq]
samples = 64

[bench]
runs = 5
warmup = 1
min_seconds = 0.0
"""


@pytest.fixture(autouse=True)
def _reseed_torch(request):
    """pytest-randomly runs the tests in a random order and resets ``random`` and numpy's seeds before each;
    torch's global generator is reset here the same way, so no test depends on what ran before it."""
    torch = sys.modules.get("torch")  # not imported here: some tests check that a light import leaves it out
    if torch is not None:
        seed = getattr(request.config.option, "randomly_seed", 0)
        torch.manual_seed(seed if isinstance(seed, int) else 0)


@pytest.fixture
def tiny_recipe_path(tmp_path):
    p = tmp_path / "tiny.toml"
    p.write_text(TINY_RECIPE)
    return p


@pytest.fixture
def tiny_recipe(tiny_recipe_path):
    from edgedistill.recipe import load_recipe

    return load_recipe(str(tiny_recipe_path))


@pytest.fixture(scope="session")
def digits_splits():
    from edgedistill.data import load_data
    from edgedistill.recipe import DataConfig

    return load_data(DataConfig(), 0)


@pytest.fixture(scope="session")
def reliab_runs(tmp_path_factory):
    """Real CLI runs for the reliability tests (tests/_reliab.py): one uninterrupted, one SIGKILLed, Ctrl-C'd and resumed."""
    from tests._reliab import start_runs

    return start_runs(tmp_path_factory.mktemp("reliab"))
