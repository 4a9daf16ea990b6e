"""Shared fixtures: tiny synthetic data for fast tests, and the real data when it is present."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pyro
import pytest
import torch

from pyro_vae.data import Dataset, Split, default_cache_dir, raw_folder, search_roots

REPO = Path(__file__).resolve().parents[1]


def real_data_dir() -> Path | None:
    """Where MNIST is, looked for exactly as the project looks (pyro_vae.data.search_roots:
    $PYRO_VAE_DATA, then the default cache that `python -m pyro_vae.train` downloads into;
    raw_folder: all four files there, not just a folder a failed download left)."""
    from torchvision.datasets import MNIST
    return next((root for root in search_roots(None) if raw_folder(MNIST, [root]) is not None), None)


@pytest.fixture
def data_dir() -> Path:
    found = real_data_dir()
    if found is None:
        pytest.skip("real MNIST not found: run `python -m pyro_vae.train` once to download it into "
                    f"{default_cache_dir()}, or set PYRO_VAE_DATA")
    return found


if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):  # pytest -n N: share the cores, not N x all of them,
    # in the workers and in the processes tests start (with two threads each, two workers' commands
    # oversubscribed two cores: the suite took 264 s against 236 s)
    threads = max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))
    torch.set_num_threads(threads)
    os.environ["OMP_NUM_THREADS"] = str(threads)


@pytest.fixture(autouse=True)
def fresh_pyro_state():
    """Each test starts from an empty param store and seed 0, whatever ran before it."""
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    yield


def pytest_collection_modifyitems(config, items):
    """Tests that read the real data are marked needs_data (deselect with -m "not needs_data")."""
    for item in items:
        if "data_dir" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.needs_data)


def synthetic_dataset(n_train: int = 64, n_test: int = 32, binarize: str = "dynamic", seed: int = 0) -> Dataset:
    """Blobs of pixel probabilities, a stand-in for MNIST in fast tests."""
    g = torch.Generator().manual_seed(seed)
    prototypes = torch.rand(4, 784, generator=g) ** 3

    def make(n: int) -> Split:
        labels = torch.randint(0, 4, (n,), generator=g)
        images = (prototypes[labels] + 0.05 * torch.rand(n, 784, generator=g)).clamp(0, 1)
        if binarize != "none":
            images = torch.bernoulli(images, generator=g)
        return Split(images, labels)

    return Dataset("synthetic", binarize, make(n_train), make(n_test), make(n_test), source="memory")


def assert_drawn(path: Path, min_ink: float = 0.01) -> None:
    """A PNG that holds a drawing: more than ``min_ink`` of its pixels differ from the most common
    colour (the background), in more than a few colours; a blank or one-colour figure fails."""
    import matplotlib.image

    pixels = torch.as_tensor(matplotlib.image.imread(str(path)))[..., :3].reshape(-1, 3)
    colours, counts = torch.unique((pixels * 255).round().to(torch.int64), dim=0, return_counts=True)
    ink = 1 - counts.max().item() / len(pixels)
    assert ink > min_ink and len(colours) > 8, f"{path}: {ink:.1%} of pixels drawn, {len(colours)} colours"


def call(main, argv, capsys):
    """Run a command's main in-process, as the console script does; return (exit status, stderr)."""
    from pyro_vae.cli import run_main

    with pytest.raises(SystemExit) as exit_info:
        run_main(main, argv)
        raise SystemExit(0)
    return exit_info.value.code, capsys.readouterr().err


def run_cli(module: str, *args: str, env: dict | None = None, cwd: Path | None = None, timeout: float = 300):
    import subprocess

    full_env = {**os.environ, "PYRO_VAE_NO_DOWNLOAD": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True,
                          env=full_env, cwd=cwd or REPO, timeout=timeout)
