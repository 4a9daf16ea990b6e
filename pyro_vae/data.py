"""Data: MNIST, Fashion-MNIST and statically binarized MNIST as tensors on the training device.

Where files are looked for, in order: ``--data-dir``, ``$PYRO_VAE_DATA``, ``~/.cache/pyro_vae``
(``$XDG_CACHE_HOME/pyro_vae``), for Fashion-MNIST also Debian's
``/usr/share/datasets/fashion-mnist``; only then does torchvision download into the cache
(set ``PYRO_VAE_NO_DOWNLOAD=1`` to forbid that). In each place the files may sit in torchvision's
layout (``MNIST/raw/``, ``FashionMNIST/raw/``, ``binarized_mnist/``) or directly in it.

Splits. MNIST and Fashion-MNIST: validation is the LAST ``valid_size`` (default 10,000) images of
the official 60,000 training images, training the ones before; test is the official 10,000.
Binarized MNIST: the Larochelle & Murray 50k/10k/10k files as they are.

Binarization. ``none``: grey levels in [0, 1] (the seed's setting). ``dynamic``: every training
batch is a fresh Bernoulli(pixel) draw; valid and test are binarized once on the CPU with a fixed
seed, so their scores compare across runs and devices. ``static``: the Larochelle & Murray files.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from torchvision import datasets as tv_datasets
from torchvision.datasets.utils import check_integrity

from .model import NUM_PIXELS
from .seeds import derived_seed


BINARIZATIONS = ("none", "dynamic", "static")
DEFAULT_VALID_SIZE = 10_000
EVAL_BINARIZATION_SEED = 0  # fixed: dynamically binarized valid/test sets are the same everywhere

_DEBIAN_FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
# md5 of the uncompressed MNIST IDX files (torchvision knows only those of the .gz files)
_MNIST_IDX_MD5 = {
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}
_BINARIZED_MNIST_MD5 = {  # of the .amat.gz files of Larochelle & Murray's split
    "train": "568ed3d12de5c016418b71be4817024f",
    "valid": "d4f45de8f6bb8b7ec85d39ee5076bc58",
    "test": "c799349346e7542e92eb80e9452ca6ce",
}
_BINARIZED_MNIST_SIZES = {"train": 50_000, "valid": 10_000, "test": 10_000}


@dataclass
class Split:
    """Images as one (N, 784) float tensor on the device; labels (N,) or None."""

    images: torch.Tensor
    labels: torch.Tensor | None

    def __len__(self) -> int:
        return self.images.shape[0]


@dataclass
class Dataset:
    name: str
    binarize: str
    train: Split
    valid: Split
    test: Split
    source: str  # the folder the files were read from

    def split(self, name: str) -> Split:
        if name not in ("train", "valid", "test"):
            raise ValueError(f"unknown split {name!r}; choose from train, valid, test")
        return getattr(self, name)

    def __len__(self) -> int:
        """The training images: what an epoch goes through."""
        return len(self.train)

    def num_batches(self, batch_size: int) -> int:
        return -(-len(self.train) // batch_size)

    def train_batches(
        self, epoch: int, batch_size: int, seed: int, start: int = 0, rank: int = 0, world_size: int = 1
    ) -> Iterator[torch.Tensor]:
        """Minibatches of one epoch: index slices of a permutation fixed by (seed, epoch).

        The order does not depend on any global RNG, so a resumed run sees the same batches;
        dynamic binarization draws from torch's global RNG, whose state checkpoints keep. With
        several ranks, step s covers the next ``batch_size * world_size`` images of the
        permutation and rank r takes the r-th slice of ``batch_size`` of them.
        """
        for batch in epoch_batches(self.train.images, epoch, batch_size, seed, start, rank, world_size):
            yield torch.bernoulli(batch) if self.binarize == "dynamic" else batch


def epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(derived_seed(seed, epoch))
    return torch.randperm(n, generator=generator)


def epoch_batches(items: torch.Tensor, epoch: int, batch_size: int, seed: int, start: int = 0, rank: int = 0,
                  world_size: int = 1) -> Iterator[torch.Tensor]:
    """The minibatches of one epoch of ``items``, from step ``start`` on: slices of a permutation
    fixed by (seed, epoch). Step s covers the next ``batch_size * world_size`` items and rank r
    takes the r-th slice of them (``tensor_split``: the last, short step is dealt evenly)."""
    order = epoch_permutation(len(items), seed, epoch).to(items.device)
    step_size = batch_size * world_size
    for begin in range(start * step_size, len(items), step_size):
        yield items[torch.tensor_split(order[begin:begin + step_size], world_size)[rank]]


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "pyro_vae"


def search_roots(data_dir: str | os.PathLike | None) -> list[Path]:
    """The places data is looked for, in order: data_dir, $PYRO_VAE_DATA, the cache."""
    roots = []
    for label, value in (("data_dir", data_dir), ("$PYRO_VAE_DATA", os.environ.get("PYRO_VAE_DATA"))):
        if value:
            path = Path(value).expanduser()
            if not path.is_dir():
                raise ValueError(f"{label} {value} is not a directory")
            if not os.access(path, os.R_OK | os.X_OK):
                raise ValueError(f"{label} {value} is not readable")
            roots.append(path)
    roots.append(default_cache_dir())
    return roots


def resolve_binarization(dataset: str, binarize: str | None) -> str:
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; choose from {', '.join(DATASETS)}")
    info = DATASET_INFO[dataset]
    binarize = binarize or info.default_binarization
    if binarize not in BINARIZATIONS:
        raise ValueError(f"unknown binarization {binarize!r}; choose from {', '.join(BINARIZATIONS)}")
    if binarize not in info.binarizations:
        raise ValueError(info.refusal or f"{dataset} takes the binarizations {', '.join(info.binarizations)}")
    return binarize


def load_dataset(
    name: str,
    binarize: str | None = None,
    data_dir: str | os.PathLike | None = None,
    device: torch.device | str = "cpu",
    train_size: int | None = None,
    valid_size: int = DEFAULT_VALID_SIZE,
    eval_binarization_seed: int = EVAL_BINARIZATION_SEED,
) -> Dataset:
    """Load a data set onto ``device``; see the module docstring for splits and search order.
    ``eval_binarization_seed`` picks another draw of a dynamically binarized valid and test set."""
    binarize = resolve_binarization(name, binarize)
    if eval_binarization_seed != EVAL_BINARIZATION_SEED and binarize != "dynamic":
        raise ValueError(f"another binarization seed draws a dynamically binarized test set anew; this run's data "
                         f"is binarized {binarize!r}")
    roots = search_roots(data_dir)
    if binarize == "static":  # Larochelle & Murray's files, whatever their grey-level source
        train, valid, test, source = _load_binarized_mnist(roots)
    else:
        train, valid, test, source = DATASET_INFO[name].load(roots, valid_size)
        if binarize == "dynamic":
            generator = torch.Generator().manual_seed(eval_binarization_seed)
            valid = Split(torch.bernoulli(valid.images, generator=generator), valid.labels)
            test = Split(torch.bernoulli(test.images, generator=generator), test.labels)
    if train_size is not None:
        if train_size > len(train):
            raise ValueError(f"train_size {train_size} exceeds the {len(train)} training images")
        train = Split(train.images[:train_size], _head(train.labels, train_size))
    device = torch.device(device)
    splits = [Split(s.images.to(device), None if s.labels is None else s.labels.to(device))
              for s in (train, valid, test)]
    return Dataset(name, binarize, *splits, source=str(source))


def _head(labels: torch.Tensor | None, n: int) -> torch.Tensor | None:
    return None if labels is None else labels[:n]


# --- MNIST and Fashion-MNIST through torchvision ---------------------------------------------


def _torchvision_loader(name: str, cls, extra_places: tuple[Path, ...] = ()) -> Callable:
    """A data set's loader, (search roots, valid_size) -> (train, valid, test, folder read),
    for one of torchvision's MNIST-like classes, looking also in ``extra_places``."""
    return lambda roots, valid_size: _load_torchvision(name, cls, list(roots) + list(extra_places), valid_size)


def raw_folder(cls, places: Sequence[Path]) -> Path | None:
    """The first folder that holds all of a torchvision data set's raw files (``cls.resources``,
    compressed or not), looking in each place as ``<place>/<Class>/raw/`` and then ``<place>/``;
    None if none does (an empty folder left by a failed download does not count)."""
    for place in places:
        for folder in (Path(place) / cls.__name__ / "raw", Path(place)):
            if _has_files(cls, folder):
                return folder
    return None


def _load_torchvision(name: str, cls, places: list[Path], valid_size: int):
    cache = default_cache_dir()
    folder = raw_folder(cls, places)
    if folder is not None:
        root = _torchvision_root(cls, folder, cache)
        return _read_torchvision(cls, root, folder, valid_size) + (folder,)
    if os.environ.get("PYRO_VAE_NO_DOWNLOAD"):
        why = "downloading is off ($PYRO_VAE_NO_DOWNLOAD is set)"
    else:
        try:
            for train in (True, False):
                cls(str(cache), train=train, download=True)
            return _read_torchvision(cls, cache, cache / cls.__name__ / "raw", valid_size) + (cache,)
        except Exception as error:  # no network, a proxy, a full disk: say what to do instead
            why = f"the download failed ({type(error).__name__}: {str(error).splitlines()[0][:120]})"
    files = ", ".join(f for f, _ in cls.resources)
    searched = ", ".join(str(p) for p in places)
    raise ValueError(
        f"{name} not found: looked in {searched} (each as <dir>/{cls.__name__}/raw/ or <dir>/) "
        f"for {files} (or the same without .gz), and {why}; put the files in one of these "
        f"places, or point PYRO_VAE_DATA (or data_dir) at a folder that holds them"
    )


def _has_files(cls, folder: Path) -> bool:
    return all((folder / gz).exists() or (folder / gz[:-3]).exists() for gz, _ in cls.resources)


def _torchvision_root(cls, folder: Path, cache: Path) -> Path:
    """A root that torchvision can read with download=False: the files' own when they are in
    its layout, uncompressed; otherwise the cache, with the .gz files extracted there."""
    _verify_checksums(cls, folder)
    uncompressed = all((folder / gz[:-3]).exists() for gz, _ in cls.resources)
    if uncompressed and folder.name == "raw" and folder.parent.name == cls.__name__:
        return folder.parent.parent
    staged = cache / cls.__name__ / "raw"
    if staged.resolve() == folder.resolve():
        return cache
    staged.mkdir(parents=True, exist_ok=True)
    for gz, _ in cls.resources:
        idx = gz[:-3]
        if (folder / idx).exists():
            shutil.copyfile(folder / idx, staged / idx)
        else:
            try:
                with gzip.open(folder / gz, "rb") as source, open(staged / (idx + ".part"), "wb") as out:
                    shutil.copyfileobj(source, out)
            except (OSError, EOFError) as error:
                raise ValueError(f"{folder / gz}: cannot decompress ({error})") from None
            os.replace(staged / (idx + ".part"), staged / idx)
    return cache


def _verify_checksums(cls, folder: Path) -> None:
    if folder == _DEBIAN_FASHION_DIR:
        return  # Debian recompressed the official files (other .gz md5s); dpkg --verify checks them
    for gz, md5 in cls.resources:
        idx_md5 = _MNIST_IDX_MD5.get(gz[:-3]) if cls is tv_datasets.MNIST else None
        for path, expected in ((folder / gz, md5), (folder / gz[:-3], idx_md5)):
            if expected and path.exists() and not check_integrity(str(path), expected):
                raise ValueError(
                    f"{path}: md5 is not the official {expected}; the file is corrupt or not "
                    f"{cls.__name__} - replace it with the original"
                )


def _read_torchvision(cls, root: Path, folder: Path, valid_size: int):
    try:
        train = cls(str(root), train=True, download=False)
        test = cls(str(root), train=False, download=False)
    except Exception as error:
        raise ValueError(f"{folder}: could not read {cls.__name__} IDX files ({error!r})") from None
    for part, expected in ((train, 60_000), (test, 10_000)):
        if tuple(part.data.shape) != (expected, 28, 28) or len(part.targets) != expected:
            raise ValueError(
                f"{folder}: {cls.__name__} files hold images of shape {tuple(part.data.shape)}, "
                f"expected ({expected}, 28, 28)"
            )
    if not 0 <= valid_size < 60_000:
        raise ValueError(f"valid_size must be in [0, 60000), got {valid_size}")
    images = train.data.reshape(-1, NUM_PIXELS).float().div_(255)
    labels = train.targets.long()
    cut = 60_000 - valid_size
    return (
        Split(images[:cut], labels[:cut]),
        Split(images[cut:], labels[cut:]),
        Split(test.data.reshape(-1, NUM_PIXELS).float().div_(255), test.targets.long()),
    )


# --- statically binarized MNIST (Larochelle & Murray) ----------------------------------------


def _load_binarized_mnist(roots: list[Path]):
    for root in roots:
        for folder in (root / "binarized_mnist", root):
            paths = {s: _amat_path(folder, s) for s in ("train", "valid", "test")}
            if all(paths.values()):
                splits = tuple(_read_amat(paths[s], s) for s in ("train", "valid", "test"))
                return splits + (folder,)
    searched = ", ".join(str(r) for r in roots)
    raise ValueError(
        f"binarized-mnist not found: looked in {searched} (each as <dir>/binarized_mnist/ or "
        "<dir>/) for binarized_mnist_{train,valid,test}.amat.gz (Larochelle & Murray's split); "
        "point PYRO_VAE_DATA (or data_dir) at a folder that holds them"
    )


def _amat_path(folder: Path, split: str) -> Path | None:
    for suffix in (".amat.gz", ".amat"):
        path = folder / f"binarized_mnist_{split}{suffix}"
        if path.exists():
            return path
    return None


def _read_amat(path: Path, split: str) -> Split:
    """Parse an .amat file: one image per line, 784 space-separated 0/1 values."""
    try:
        raw = path.read_bytes()
        if path.suffix == ".gz":
            md5 = hashlib.md5(raw).hexdigest()
            if md5 != _BINARIZED_MNIST_MD5[split]:
                raise ValueError(
                    f"{path}: md5 {md5} is not that of Larochelle & Murray's file "
                    f"({_BINARIZED_MNIST_MD5[split]}); the file is corrupt - replace it"
                )
            raw = gzip.decompress(raw)
    except (OSError, EOFError) as error:
        raise ValueError(f"{path}: cannot read ({error})") from None
    chars = np.frombuffer(raw, dtype=np.uint8)
    is_digit = (chars == ord("0")) | (chars == ord("1"))
    is_blank = (chars == ord(" ")) | (chars == ord("\n")) | (chars == ord("\r"))
    digits = chars[is_digit]
    expected = _BINARIZED_MNIST_SIZES[split]
    if not np.all(is_digit | is_blank) or digits.size != expected * NUM_PIXELS:
        raise ValueError(
            f"{path}: expected {expected} lines of {NUM_PIXELS} values 0/1, found something else"
        )
    images = torch.from_numpy((digits - ord("0")).astype(np.float32).reshape(expected, NUM_PIXELS))
    return Split(images, None)


# --- the registry: each data set in one place -------------------------------------------------


@dataclass(frozen=True)
class DatasetInfo:
    """A data set: ``load(search roots, valid_size)`` gives (train, valid, test, the folder read)
    with grey levels in [0, 1]; its binarization when none is asked for, the ``binarizations``
    it takes (``refusal`` says why not another), the shape of an image (its pixels are stored
    flat) and its class names (None: the labels are the digits)."""

    default_binarization: str
    load: Callable[[list[Path], int], tuple]
    binarizations: tuple[str, ...] = BINARIZATIONS
    refusal: str = ""
    image_shape: tuple[int, int] = (28, 28)
    class_names: tuple[str, ...] | None = None


DATASET_INFO = {
    "mnist": DatasetInfo("none", _torchvision_loader("mnist", tv_datasets.MNIST)),
    "fashion-mnist": DatasetInfo(
        "none", _torchvision_loader("fashion-mnist", tv_datasets.FashionMNIST, (_DEBIAN_FASHION_DIR,)),
        binarizations=("none", "dynamic"),
        refusal="a static binarization exists only for MNIST (Larochelle & Murray); binarize fashion-mnist 'dynamic'",
        class_names=tuple(tv_datasets.FashionMNIST.classes)),
    "binarized-mnist": DatasetInfo(
        "static", lambda roots, valid_size: _load_binarized_mnist(roots), binarizations=("static",),
        refusal="binarized-mnist is already binary: its binarization is 'static'"),
}
DATASETS = tuple(DATASET_INFO)
