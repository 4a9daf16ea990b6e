"""Score a trained run by annealed importance sampling: ``evaluate_run_ais`` (log p(x) of its
test images) and ``bdmc_run`` (Grosse et al.'s bounds on items simulated from it), behind
``pyro-vae evaluate RUN --method ais`` and ``pyro-vae evaluate RUN --bdmc N`` (flags in
pyro_vae/cli/evaluate.py; the method in ais.py).

Reports are written into the run directory, named by every setting that changes the numbers:

    eval_<split>_ais_C<chains>_T<steps>_<init>[_L<leapfrog>][_firstN][_seedN][_cuda][_last].json
    eval_bdmc_N<items>_C<chains>_T<steps>_<init>[...].json

An AIS evaluation keeps each finished batch of items in ``<report>.parts/`` as it goes, so
an interrupted one (Ctrl-C, a killed job) resumes where it stopped with the same command and
gives the numbers an uninterrupted run gives; the folder is removed once the report is
written. Parts made by another model or other settings are refused, never mixed in.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import time
from pathlib import Path
from typing import Callable

import torch

from . import runs
from .ais import AISSettings, ais_per_item, bdmc_per_item, log_mean_exp_over_chains
from .evaluation import SPLITS, report_destination, write_report
from .marginal import mean_and_stderr

PART_FORMAT = "pyro_vae-ais-part-1"
DEFAULTS = AISSettings()


def ais_report_name(split: str, settings: AISSettings, subset: int | bool, seed: int, device_type: str,
                    last: bool) -> str:
    """eval_<split>_ais_C<chains>_T<steps>_<init>, then each other setting that is not its default."""
    return _name([f"eval_{split}_ais"], settings, subset, seed, device_type, last)


def bdmc_report_name(num_items: int, settings: AISSettings, seed: int, device_type: str, last: bool) -> str:
    return _name([f"eval_bdmc_N{num_items}"], settings, False, seed, device_type, last)


def _name(parts: list[str], s: AISSettings, subset, seed, device_type, last) -> str:
    parts += [f"C{s.num_chains}", f"T{s.num_steps}", s.init]
    parts += [f"L{s.leapfrog_steps}"] if s.leapfrog_steps != DEFAULTS.leapfrog_steps else []
    parts += [f"{s.schedule}"] if isinstance(s.schedule, str) and s.schedule != DEFAULTS.schedule else []
    parts += ["betas" + hashlib.sha256(repr(s.schedule).encode()).hexdigest()[:8]] \
        if not isinstance(s.schedule, str) else []
    parts += [f"accept{s.target_accept:g}"] if s.target_accept != DEFAULTS.target_accept else []
    parts += [f"eps{s.step_size:g}"] if s.step_size != DEFAULTS.step_size else []
    parts += [f"b{s.batch_size}"] if s.batch_size != DEFAULTS.batch_size else []
    parts += [f"first{subset}"] if subset else []
    parts += [f"seed{seed}"] if seed != 0 else []
    parts += [device_type] if device_type != "cpu" else []
    parts += ["last"] if last else []
    return "_".join(parts) + ".json"


class Parts:
    """The finished batches of one evaluation, one file each in ``folder``, stamped with a
    fingerprint of the model and settings that made them."""

    def __init__(self, folder: Path, fingerprint: str, enabled: bool = True):
        self.folder, self.fingerprint, self.enabled = Path(folder), fingerprint, enabled

    def load(self, direction: str) -> dict[int, dict]:
        """The batches of ``direction`` already finished; a ValueError for parts made otherwise."""
        done = {}
        if not self.enabled or not self.folder.is_dir():
            return done
        for path in sorted(self.folder.glob(f"{direction}-*.pt")):
            state = runs.load_checkpoint(path, "cpu", PART_FORMAT)
            if state.get("fingerprint") != self.fingerprint:
                raise ValueError(f"{path} was computed for another model or other settings; remove "
                                 f"{self.folder} to start this evaluation afresh")
            done[int(state["index"])] = state["result"]
        return done

    def save(self, direction: str, index: int, result: dict) -> None:
        if self.enabled:
            self.folder.mkdir(exist_ok=True)
            cpu = {k: v.detach().cpu() for k, v in result.items()}
            runs.save_checkpoint(self.folder / f"{direction}-{index:06d}.pt",
                                 {"fingerprint": self.fingerprint, "index": index, "result": cpu}, PART_FORMAT)

    def remove(self) -> None:
        if self.enabled and self.folder.is_dir():
            shutil.rmtree(self.folder)


def model_fingerprint(vae: torch.nn.Module, what: dict) -> str:
    """A hash of the model's weights and of what is computed from them."""
    digest = hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode())
    for name, tensor in vae.state_dict().items():
        buffer = io.BytesIO()
        torch.save(tensor.detach().cpu().contiguous(), buffer)
        digest.update(name.encode())
        digest.update(buffer.getvalue())
    return digest.hexdigest()


def evaluate_run_ais(run_dir: str | Path, settings: AISSettings, *, split: str = "test", device: str = "auto",
                     seed: int = 0, limit: int | None = None, weights: str = "averaged", data_dir: str | None = None,
                     progress: bool = True, out: str | None = None, keep_parts: bool = True) -> dict:
    """AIS estimate of log p(x) for each image of a run's ``split`` (its first ``limit``); writes
    and returns the JSON report, with importance sampling's score of the same images beside it
    when the run holds one (the largest K). ``keep_parts`` keeps finished batches for a resume."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose from {', '.join(SPLITS)}")

    def compute(vae, config, dataset, world, torch_device, parts_for):
        split_images = dataset.split(split).images
        images = split_images[:limit]
        if len(images) == 0:
            raise ValueError(f"the {split} split of this run is empty")
        subset = len(images) < len(split_images) and len(images)
        name = ais_report_name(split, settings, subset, seed, torch_device.type, _scored_last(weights, config))
        parts = parts_for(name, {"split": split, "images": len(images), "seed": seed})
        result = ais_per_item(vae.model, vae.guide, images, settings, seed=seed, world=world, progress=progress,
                              finished=parts.load("forward"), on_batch=lambda i, r: parts.save("forward", i, r))
        log_px = log_mean_exp_over_chains(result["log_weights"])
        mean, stderr = mean_and_stderr(log_px)
        report = {"settings": {**_common_settings(run_dir, settings, seed, torch_device, config, weights),
                               "method": "ais", "split": split, "num_images": len(images)},
                  "summary": {"log_px_mean": mean, "log_px_stderr": stderr,
                              "acceptance_mean": result["acceptance"].mean().item()},
                  "per_image": {"log_px": _rounded(log_px), "acceptance": _rounded(result["acceptance"])}}
        beside = importance_sampling_beside(Path(run_dir), report)
        if beside:
            report["importance_sampling"] = beside
        return name, report, parts

    return _scored(run_dir, device, weights, data_dir, out, settings, keep_parts, compute)


def bdmc_run(run_dir: str | Path, num_items: int, settings: AISSettings, *, device: str = "auto", seed: int = 0,
             weights: str = "averaged", data_dir: str | None = None, progress: bool = True,
             out: str | None = None, keep_parts: bool = True) -> dict:
    """BDMC on ``num_items`` items simulated from a run's model: per item, forward AIS's lower
    and reverse AIS's upper bound on log p(x), and their mean gap; writes and returns the report."""
    def compute(vae, config, dataset, world, torch_device, parts_for):
        shapes = dataset.split("test").images
        name = bdmc_report_name(num_items, settings, seed, torch_device.type, _scored_last(weights, config))
        parts = parts_for(name, {"bdmc": num_items, "seed": seed})
        finished = {direction: parts.load(direction) for direction in ("forward", "reverse")}
        _, forward, reverse = bdmc_per_item(vae.model, vae.guide, shapes, settings, num_items=num_items, seed=seed,
                                            world=world, progress=progress, finished=finished,
                                            on_batch=parts.save)
        lower = log_mean_exp_over_chains(forward["log_weights"])
        upper = -log_mean_exp_over_chains(reverse["log_weights"])
        summary = {}
        for key, values in (("lower", lower), ("upper", upper), ("gap", upper - lower)):
            summary[f"{key}_mean"], summary[f"{key}_stderr"] = mean_and_stderr(values)
        summary["acceptance_mean"] = forward["acceptance"].mean().item()
        report = {"settings": {**_common_settings(run_dir, settings, seed, torch_device, config, weights),
                               "method": "bdmc", "num_items": num_items},
                  "summary": summary, "per_item": {"lower": _rounded(lower), "upper": _rounded(upper)}}
        return name, report, parts

    return _scored(run_dir, device, weights, data_dir, out, settings, keep_parts, compute)


def _scored(run_dir, device: str, weights: str, data_dir, out, settings: AISSettings, keep_parts: bool,
            compute: Callable) -> dict:
    """Load the run, compute its report (resumable by parts), write it: the flow both share."""
    from .distributed import barrier
    from .trainer import world_and_device

    run_dir = Path(run_dir)
    world, torch_device = world_and_device(device)
    with report_destination(run_dir, out, world):
        vae, config, dataset = runs.load_run_and_data(run_dir, torch_device, data_dir, weights)
        started = time.perf_counter()

        def parts_for(name: str, what: dict) -> Parts:
            path = Path(out) if out is not None else run_dir / name
            what = {**what, **settings.as_dict(), "weights": weights, "device": torch_device.type}
            return Parts(path.with_suffix(".parts"), model_fingerprint(vae, what), keep_parts)

        name, report, parts = compute(vae, config, dataset, world, torch_device, parts_for)
        report["seconds"] = round(time.perf_counter() - started, 3)
        report["processes"] = world.size
        path = Path(out) if out is not None else run_dir / name
        barrier(world)  # every rank's parts are in before they are removed
        if write_report(report, path, world) and world.is_main:
            parts.remove()
        return report


def _scored_last(weights: str, config: dict) -> bool:
    return weights == "last" and bool(config.get("ema_decay"))


def _common_settings(run_dir, settings: AISSettings, seed: int, torch_device, config: dict, weights: str) -> dict:
    return {"run_dir": str(run_dir), **settings.as_dict(), "seed": seed,
            "device": str(torch_device), "dataset": config["dataset"], "binarize": config["binarize"],
            "binarization_seed": 0, "weights": weights if config.get("ema_decay") else "last"}


def _rounded(values: torch.Tensor) -> list[float]:
    return [round(v, 6) for v in values.tolist()]


def importance_sampling_beside(run_dir: Path, report: dict) -> dict | None:
    """The run's importance-sampled score of the same images (the largest K among its
    eval_<split>_K*.json of the same weights and binarization), paired with AIS's, or None."""
    s = report["settings"]
    best = None
    for path in run_dir.glob(f"eval_{s['split']}_K*.json"):
        try:
            other = json.loads(path.read_text())
            o = other["settings"]
            values = other["per_image"]["log_px"]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        same = (o.get("binarization_seed", 0) == 0 and o.get("weights") == s["weights"]
                and len(values) >= s["num_images"])
        if same and (best is None or o["num_samples"] > best[1]["settings"]["num_samples"]):
            best = (path, other)
    if best is None:
        return None
    path, other = best
    n = s["num_images"]
    is_log_px = torch.tensor(other["per_image"]["log_px"][:n], dtype=torch.float64)
    ais_log_px = torch.tensor(report["per_image"]["log_px"], dtype=torch.float64)
    difference, stderr = mean_and_stderr(ais_log_px - is_log_px)
    return {"file": path.name, "num_samples": other["settings"]["num_samples"],
            "log_px_mean": is_log_px.mean().item(), "ais_minus_is": difference, "ais_minus_is_stderr": stderr}


def format_ais_summary(report: dict) -> str:
    s, cfg = report["summary"], report["settings"]
    how = (f"{cfg['num_chains']} chains, {cfg['num_steps']} steps from the {cfg['init']}, "
           f"{cfg['leapfrog_steps']} leapfrog steps")
    if cfg["method"] == "bdmc":
        return "\n".join([
            f"BDMC on {cfg['num_items']} items simulated from the model ({how}; {report['seconds']:.1f} s)",
            f"  forward AIS, lower bound  {s['lower_mean']:10.3f} +- {s['lower_stderr']:.3f} nats",
            f"  reverse AIS, upper bound  {s['upper_mean']:10.3f} +- {s['upper_stderr']:.3f}",
            f"  gap (upper - lower)       {s['gap_mean']:10.3f} +- {s['gap_stderr']:.3f}   bounds AIS's error "
            "at these settings, on data like the model's own",
            f"  HMC acceptance {s['acceptance_mean']:.2f}"])
    lines = [f"{cfg['split']} set, {cfg['num_images']} images, AIS ({how}; {report['seconds']:.1f} s)",
             f"  log p(x)  (AIS)              {s['log_px_mean']:10.3f} +- {s['log_px_stderr']:.3f} nats"]
    beside = report.get("importance_sampling")
    if beside:
        lines += [f"  log p(x)  (IS, K={beside['num_samples']:<6})     {beside['log_px_mean']:10.3f}   "
                  f"({beside['file']}, the same images)",
                  f"  AIS - IS                     {beside['ais_minus_is']:+10.3f} +- "
                  f"{beside['ais_minus_is_stderr']:.3f} (paired)"]
    lines.append(f"  HMC acceptance {s['acceptance_mean']:.2f}")
    if cfg["binarize"] == "none":
        lines.append("  note: grey-level data - these are cross-entropy scores, not normalised log-likelihoods")
    return "\n".join(lines)
