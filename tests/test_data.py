"""Data: where files are looked for, what is loaded, and the errors when they are wrong."""

import os
import shutil
from pathlib import Path

import pytest
import torch

from pyro_vae.data import epoch_permutation, load_dataset
from tests.conftest import synthetic_dataset

MNIST_FILES = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte",
               "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]


@pytest.fixture
def isolated(monkeypatch, tmp_path):
    """No $PYRO_VAE_DATA, an empty cache, no download."""
    monkeypatch.delenv("PYRO_VAE_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("PYRO_VAE_NO_DOWNLOAD", "1")
    return tmp_path


def link_mnist(target: Path, data_dir: Path, gz_only: bool = False) -> Path:
    raw = target / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in MNIST_FILES:
        for file in ([f"{name}.gz"] if gz_only else [name, f"{name}.gz"]):
            os.symlink(data_dir / "MNIST" / "raw" / file, raw / file)
    return raw


def test_real_mnist_loads_with_documented_splits(data_dir, isolated):
    data = load_dataset("mnist", data_dir=data_dir, valid_size=10_000)
    assert data.train.images.shape == (50_000, 784) and data.valid.images.shape == (10_000, 784)
    assert data.test.images.shape == (10_000, 784) and data.binarize == "none"
    everything = torch.cat([data.train.images, data.valid.images])
    assert abs(everything.mean().item() - 0.1307) < 1e-3  # MNIST's known pixel mean
    assert 0 <= data.train.images.min() and data.train.images.max() <= 1
    small = load_dataset("mnist", data_dir=data_dir, train_size=300, valid_size=0)
    assert len(small.train) == 300 and len(small.valid) == 0
    assert torch.equal(small.train.images, everything[:300])


def test_search_order_data_dir_then_env_then_cache(data_dir, isolated, monkeypatch):
    first, second, empty = isolated / "first", isolated / "second", isolated / "empty"
    link_mnist(first, data_dir)
    link_mnist(second, data_dir)
    empty.mkdir()
    monkeypatch.setenv("PYRO_VAE_DATA", str(second))
    assert load_dataset("mnist", data_dir=first, train_size=10).source == str(first / "MNIST" / "raw")
    assert load_dataset("mnist", data_dir=empty, train_size=10).source == str(second / "MNIST" / "raw")
    monkeypatch.setenv("PYRO_VAE_DATA", str(empty))
    link_mnist(isolated / "cache" / "pyro_vae", data_dir)
    assert load_dataset("mnist", data_dir=empty, train_size=10).source.startswith(str(isolated / "cache"))


def test_compressed_files_alone_are_extracted_into_the_cache(data_dir, isolated):
    only_gz = isolated / "gz"
    link_mnist(only_gz, data_dir, gz_only=True)
    data = load_dataset("mnist", data_dir=only_gz, train_size=10)
    assert data.source == str(only_gz / "MNIST" / "raw")
    assert (isolated / "cache" / "pyro_vae" / "MNIST" / "raw" / "t10k-images-idx3-ubyte").exists()


def test_missing_data_names_places_and_files(isolated):
    empty = isolated / "empty"
    empty.mkdir()
    with pytest.raises(ValueError) as error:
        load_dataset("mnist", data_dir=empty)
    message = str(error.value)
    assert str(empty) in message and "cache" in message and "train-images-idx3-ubyte.gz" in message
    assert "PYRO_VAE_DATA" in message and "\n" not in message
    with pytest.raises(ValueError, match="not a directory"):
        load_dataset("mnist", data_dir=isolated / "nowhere")


def test_corrupt_file_is_refused_by_checksum(data_dir, isolated):
    raw = link_mnist(isolated / "bad", data_dir)
    victim = raw / "t10k-labels-idx1-ubyte.gz"
    content = bytearray(victim.read_bytes())
    content[100] ^= 0xFF
    victim.unlink()
    victim.write_bytes(bytes(content))
    with pytest.raises(ValueError, match="md5"):
        load_dataset("mnist", data_dir=isolated / "bad")


def test_truncated_idx_is_refused(data_dir, isolated):
    raw = isolated / "trunc" / "FashionMNIST" / "raw"  # no known md5s: the shape check catches it
    raw.mkdir(parents=True)
    for name in MNIST_FILES:
        shutil.copyfile(data_dir / "MNIST" / "raw" / name, raw / name)
    with open(raw / "t10k-images-idx3-ubyte", "r+b") as f:
        f.truncate(1000)
    with pytest.raises(ValueError, match="t10k|IDX|shape"):
        load_dataset("fashion-mnist", data_dir=isolated / "trunc")


def test_binarized_mnist_static_split(data_dir, isolated):
    data = load_dataset("binarized-mnist", data_dir=data_dir)
    assert [len(data.train), len(data.valid), len(data.test)] == [50_000, 10_000, 10_000]
    assert set(data.test.images.unique().tolist()) == {0.0, 1.0}
    # the mean pixel of Larochelle & Murray's training split, as their .amat files give it
    assert abs(data.train.images.mean().item() - 0.13056) < 1e-4
    assert abs(data.test.images.mean().item() - 0.13251) < 1e-4
    assert torch.equal(load_dataset("mnist", "static", data_dir=data_dir).test.images, data.test.images)


def test_dynamic_binarization_is_fresh_for_train_fixed_for_test(data_dir, isolated):
    a = load_dataset("mnist", "dynamic", data_dir=data_dir, train_size=200)
    b = load_dataset("mnist", "dynamic", data_dir=data_dir, train_size=200)
    assert torch.equal(a.test.images, b.test.images) and torch.equal(a.valid.images, b.valid.images)
    assert set(a.test.images.unique().tolist()) == {0.0, 1.0}
    first = next(a.train_batches(0, 200, seed=0))
    again = next(a.train_batches(0, 200, seed=0))
    assert set(first.unique().tolist()) == {0.0, 1.0} and not torch.equal(first, again)


def test_fashion_mnist_from_debian_package(isolated):
    if not Path("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz").exists():
        pytest.skip("Debian's dataset-fashion-mnist is not installed")
    data = load_dataset("fashion-mnist", train_size=100)
    assert data.test.images.shape == (10_000, 784) and data.source.startswith("/usr/share/datasets")


def test_bad_names_are_refused():
    with pytest.raises(ValueError, match="unknown dataset"):
        load_dataset("cifar")
    with pytest.raises(ValueError, match="already binary"):
        load_dataset("binarized-mnist", "dynamic")
    with pytest.raises(ValueError, match="static"):
        load_dataset("fashion-mnist", "static")


def test_epoch_batches_cover_the_data_once_in_a_seeded_order():
    data = synthetic_dataset(n_train=50, binarize="none")
    batches = list(data.train_batches(epoch=3, batch_size=8, seed=5))
    assert [len(b) for b in batches] == [8] * 6 + [2]
    seen = torch.cat(batches)
    assert torch.equal(seen, data.train.images[epoch_permutation(50, 5, 3)])
    assert not torch.equal(epoch_permutation(50, 5, 3), epoch_permutation(50, 5, 4))
    resumed = list(data.train_batches(epoch=3, batch_size=8, seed=5, start=4))
    assert torch.equal(torch.cat(resumed), torch.cat(batches[4:]))
