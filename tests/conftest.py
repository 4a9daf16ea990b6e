"""Shared fixtures: tiny synthetic data for fast tests, and the real data when it is present."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

from pyro_vae.data import Dataset, Split

REPO = Path(__file__).resolve().parents[1]


def real_data_dir() -> Path | None:
    for candidate in (os.environ.get("PYRO_VAE_DATA"), REPO.parent / "shared" / "data"):
        if candidate and (Path(candidate) / "MNIST" / "raw").is_dir():
            return Path(candidate)
    return None


@pytest.fixture
def data_dir() -> Path:
    found = real_data_dir()
    if found is None:
        pytest.skip("real MNIST not found (set PYRO_VAE_DATA)")
    return found


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


def run_cli(module: str, *args: str, env: dict | None = None, cwd: Path | None = None, timeout: float = 300):
    import subprocess

    full_env = {**os.environ, "PYRO_VAE_NO_DOWNLOAD": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True,
                          env=full_env, cwd=cwd or REPO, timeout=timeout)
