"""Run directories and checkpoints: written atomically, read safely.

A run directory holds ``config.json`` (every setting, library versions), ``metrics.csv`` (one row
per epoch), ``checkpoint.pt`` (model, optimizer, epoch, RNG states, metric history) and figures.
Checkpoints are written to a temporary file in the same directory, flushed to disk, then renamed
over the old one, so a crash leaves the old or the new checkpoint, never a torn one. They are
read with ``torch.load(weights_only=True)``: tensors and plain containers only, never code.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import fcntl
import io
import json
import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import pyro
import torch

from .model import VAE, build_model

CONFIG_FILE = "config.json"
LOCK_FILE = ".lock"  # held (flock) by the one process writing the run; holds its PID
METRICS_FILE = "metrics.csv"
CHECKPOINT_FILE = "checkpoint.pt"
CHECKPOINT_FORMAT = "pyro_vae-checkpoint-1"
# a trained model without what training needs to go on (optimizer, RNG, history): export_model
MODEL_FILE, MODEL_FORMAT = "model.pt", "pyro_vae-model-1"
SNAPSHOT_DIR = "snapshots"  # weights kept at chosen epochs: <run>/snapshots/epoch-NNNNN.pt
CURVE_FILE = "learning_curve.csv"  # IS test NLL of the snapshots (experiments curve)
# what --overwrite may delete: only files a run writes, never the user's other files
RUN_OUTPUT_PATTERNS = (CONFIG_FILE, METRICS_FILE, CHECKPOINT_FILE, MODEL_FILE, CURVE_FILE, "*.png", "eval_*.json",
                       f"{SNAPSHOT_DIR}/epoch-*.pt")


_held_locks: set[Path] = set()  # run directories this process holds


@contextlib.contextmanager
def claim_run_dir(run_dir: str | os.PathLike) -> Iterator[Path]:
    """Be the one writer of ``run_dir`` while the block runs; create it if needed.

    The lock is an ``fcntl.flock`` on ``run_dir/.lock``: the OS releases it when the process
    ends, however it ends, so a killed run never leaves a lock that blocks its resumption. A
    second writer gets a ValueError naming the holder's PID; a path that is a file, or a folder
    that cannot be created or written, gets one too, before any work. The claim nests within one
    process (a recipe may claim what the trainer claims again). A folder created here that is
    still empty when the block ends (the work failed before writing anything) is removed.
    """
    run_dir = Path(run_dir)
    key = run_dir.resolve()
    if key in _held_locks:  # a nested claim: the outer one holds the lock
        yield run_dir
        return
    if run_dir.exists() and not run_dir.is_dir():
        raise ValueError(f"{run_dir} is a file, not a run directory")
    created = not run_dir.exists()
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(run_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as error:
        raise ValueError(f"cannot write in {run_dir}: {error.strerror or error}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            if error.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise ValueError(f"{run_dir} is being written by another process (PID {holder}); "
                             "wait for it to end, or stop it") from None
        _check_writable(run_dir)  # an earlier writer's lock file opens even in a folder now read-only
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        _held_locks.add(key)
        try:
            yield run_dir
        finally:
            _held_locks.discard(key)
            if created and [p.name for p in run_dir.iterdir()] == [LOCK_FILE]:
                (run_dir / LOCK_FILE).unlink()
                run_dir.rmdir()
    finally:
        os.close(fd)  # releases the flock


def check_writable_file(path: str | os.PathLike) -> None:
    """Refuse, before any work, an output file whose folder cannot be written."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path} is a folder; name a file")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ValueError(f"cannot write in {path.parent}: {error.strerror or error}") from None
    _check_writable(path.parent)


def _check_writable(folder: Path) -> None:
    """A real write probe (permissions alone say nothing to root, or of a read-only mount)."""
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        raise ValueError(f"cannot write in {folder}: {error.strerror or error}") from None


def write_json_or_fallback(path: Path, obj: Any) -> Path:
    """Write a finished result to ``path``; if that fails now (disk full, permissions changed
    since the start), write it to the system's temporary folder instead, so that no computed
    result is lost, and return where it went."""
    try:
        write_json(path, obj)
        return Path(path)
    except OSError:
        fd, fallback = tempfile.mkstemp(prefix=f"{Path(path).stem}-", suffix=".json")
        with os.fdopen(fd, "wb") as out:
            out.write(_json_bytes(obj))
        return Path(fallback)


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a flushed temporary file and a rename."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; a run's files are ordinary files
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_json(path: Path, obj: Any) -> None:
    atomic_write(path, _json_bytes(obj))


def _json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode()


def save_checkpoint(path: Path, state: dict, marker: str = CHECKPOINT_FORMAT) -> None:
    """Write a checkpoint (or, with MODEL_FORMAT, a model file) atomically, with its marker."""
    buffer = io.BytesIO()
    torch.save({"format": marker, **state}, buffer)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, buffer.getvalue())


def load_checkpoint(path: Path, device: torch.device | str = "cpu", marker: str = CHECKPOINT_FORMAT) -> dict:
    """Read a checkpoint (or, with MODEL_FORMAT, a model file) with weights_only=True; any problem
    is one ValueError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no checkpoint there")
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as error:  # truncated zip, foreign pickle, code-carrying pickle, ...
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(f"{path}: corrupt or not a pyro_vae checkpoint ({reason[:160]})") from None
    if not isinstance(state, dict) or state.get("format") != marker:
        raise ValueError(f"{path}: not a pyro_vae checkpoint (no '{marker}' marker)")
    return state


def export_model(run_dir: str | os.PathLike, out_dir: str | os.PathLike,
                 evaluations: Sequence[str] = ("eval_test_K5000.json",), figures: bool = True) -> Path:
    """Copy a finished run into ``out_dir`` as a small run directory: ``model.pt`` holding only the
    weights the run is scored by (the average, if it kept one) with its config and epoch, beside
    its config.json, metrics.csv, learning curve, the named evaluations and (with ``figures``) its
    other PNGs. ``load_run`` and ``evaluate`` read it; it cannot be resumed (no optimizer or random
    state)."""
    import shutil

    run_dir, out_dir = Path(run_dir), Path(out_dir)
    state = load_checkpoint(run_dir / CHECKPOINT_FILE)
    missing = [name for name in evaluations if not (run_dir / name).is_file()]
    if missing:
        raise ValueError(f"{run_dir} has no {missing[0]}")
    averaged = "model_ema" in state
    save_checkpoint(out_dir / MODEL_FILE, {"config": state["config"], "epoch": state["epoch"],
                                           "weights": "averaged" if averaged else "last",
                                           "model": state["model_ema"] if averaged else state["model"]},
                    MODEL_FORMAT)
    names = [CONFIG_FILE, METRICS_FILE, CURVE_FILE, *evaluations, *(p.name for p in run_dir.glob("*.png") if figures)]
    for name in names:
        if (run_dir / name).is_file():
            shutil.copyfile(run_dir / name, out_dir / name)
    return out_dir


def append_metrics(path: Path, row: dict) -> None:
    """Append one whole row (header first if the file is new) and flush it to disk."""
    new = not Path(path).exists() or Path(path).stat().st_size == 0
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(row), lineterminator="\n")
    if new:
        writer.writeheader()
    writer.writerow(row)
    with open(path, "a") as out:
        out.write(text.getvalue())
        out.flush()
        os.fsync(out.fileno())


def write_metrics(path: Path, rows: list[dict]) -> None:
    """Replace metrics.csv by ``rows`` (used on resume: the checkpoint's history is the truth)."""
    text = io.StringIO()
    if rows:
        writer = csv.DictWriter(text, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    atomic_write(path, text.getvalue().encode())


def read_metrics(path: Path) -> list[dict]:
    with open(path) as f:
        return [{k: _number(v) for k, v in row.items()} for row in csv.DictReader(f)]


def _number(text: str):
    try:
        return int(text)
    except ValueError:
        try:
            return float(text)
        except ValueError:
            return text


def is_run_dir(path: Path) -> bool:
    return any((Path(path) / name).exists() for name in (CONFIG_FILE, CHECKPOINT_FILE, MODEL_FILE))


def clear_run_outputs(path: Path) -> None:
    for pattern in RUN_OUTPUT_PATTERNS:
        for file in Path(path).glob(pattern):
            file.unlink()
    for parts in Path(path).glob("eval_*.parts"):  # an interrupted AIS evaluation's finished batches
        shutil.rmtree(parts)


def rng_state() -> dict:
    """Every RNG a run draws from, as tensors and plain values (loadable with weights_only)."""
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": random.getstate(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
    }


def set_rng_state(state: dict) -> None:
    """Restore :func:`rng_state`'s RNGs. Its tensors may come back on the run's device (a checkpoint
    is loaded there), so each is brought to the CPU first; GPUs beyond those saved keep their state."""
    torch.set_rng_state(state["torch"].cpu())
    if torch.cuda.is_available():
        for index, cuda_state in enumerate(state["cuda"][:torch.cuda.device_count()]):
            torch.cuda.set_rng_state(cuda_state.cpu(), index)
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.cpu().numpy().astype(np.uint32), *rest))


def load_run(run_dir: str | os.PathLike, device: torch.device | str = "cpu") -> VAE:
    """The trained VAE of a run directory, on ``device``, in eval mode.

    :param run_dir: a run directory written by ``pyro_vae.train`` (its ``checkpoint.pt``, or
        an exported run's ``model.pt``), read with ``torch.load(..., weights_only=True)``.
    :param device: where the weights go.
    :returns: the model (:class:`VAE` or :class:`TwoLayerVAE`), with the run's averaged weights
        if it kept them.
    :raises ValueError: for a missing, corrupt or foreign checkpoint.
    """
    return load_run_and_config(run_dir, device)[0]


WEIGHTS = ("averaged", "last")


def load_run_and_config(run_dir: str | os.PathLike, device: torch.device | str = "cpu",
                        weights: str = "averaged") -> tuple[VAE, dict]:
    """(vae, config) of a run directory, from one read of its checkpoint. A run trained with
    --ema-decay is scored by its averaged weights unless ``weights="last"`` (the last iterate)."""
    if weights not in WEIGHTS:
        raise ValueError(f"unknown weights {weights!r}; choose from {', '.join(WEIGHTS)}")
    if not (Path(run_dir) / CHECKPOINT_FILE).exists() and (Path(run_dir) / MODEL_FILE).exists():
        state = load_checkpoint(Path(run_dir) / MODEL_FILE, device, MODEL_FORMAT)  # an exported run
        if weights == "last" and state["weights"] == "averaged":
            raise ValueError(f"{run_dir} holds only the averaged weights it is scored by")
        model = state["model"]  # the one set of weights it holds
    else:
        state = load_checkpoint(Path(run_dir) / CHECKPOINT_FILE, device)
        model = state["model_ema"] if "model_ema" in state and weights == "averaged" else state["model"]
    vae = build_model(state["config"]).to(device)
    try:
        vae.load_state_dict(model)
    except (RuntimeError, KeyError, TypeError) as error:
        raise ValueError(f"{run_dir}: checkpoint does not match its config ({str(error)[:160]})") from None
    pyro.clear_param_store()
    return vae.eval(), state["config"]


def load_run_and_data(run_dir: str | os.PathLike, device: torch.device | str = "cpu",
                      data_dir: str | None = None, weights: str = "averaged", eval_binarization_seed: int = 0):
    """(vae, config, dataset): a trained run with its data set, split as it was for training (its
    valid and test images binarized by another draw if ``eval_binarization_seed`` is not 0)."""
    from .data import load_dataset

    vae, config = load_run_and_config(run_dir, device, weights)
    dataset = load_dataset(config["dataset"], config["binarize"], data_dir or config["data_dir"],
                           device, valid_size=config["valid_size"], eval_binarization_seed=eval_binarization_seed)
    return vae, config, dataset
