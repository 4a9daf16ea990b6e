"""Compare ELBO estimators: ``python -m pyro_vae.compare RUN_DIR`` or ``... --train``.

Fixed-model mode scores each estimator on one trained model: the bound's value per test image
(mean and standard error), the signal-to-noise ratio of its gradient on one fixed minibatch
drawn ``--repeats`` times (encoder and decoder separately, as Rainforth et al. 2018), and the
time one gradient takes. Training mode trains the same net from the same seed with each
estimator under the same budget (epochs, or wall time) and scores each by importance sampling.
Both write comparison.md, comparison.json and PNGs into ``--out``.
"""

from __future__ import annotations

import itertools
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from .evaluation import DEFAULT_IWAE_K


FINISHED_FILE = "comparison_row.json"  # in each run of a training comparison, once trained and scored


@dataclass(frozen=True)
class Estimator:
    """One entry of --estimators: an objective, its K samples per estimate and M estimates."""

    name: str
    particles: int
    estimates: int = 1

    @property
    def samples(self) -> int:
        """Draws of z per image: M·K."""
        return self.estimates * self.particles

    @property
    def multi_estimate(self) -> bool:
        """Whether the estimator averages M estimates (written NAME:MxK)."""
        from .objectives import OBJECTIVES

        return OBJECTIVES[self.name].multi_estimate

    @property
    def label(self) -> str:
        from .objectives import objective_label

        return objective_label(self.name, self.particles, self.estimates)

    def make_elbo(self):
        from .objectives import make_elbo

        options = {"num_estimates": self.estimates} if self.multi_estimate else {}
        return make_elbo(self.name, self.particles, vectorize=self.samples > 1, **options)

    def run_name(self, budget: str) -> str:
        """The folder of its run in a training comparison, e.g. ``piwae-2x4-epochs``."""
        shape = f"{self.estimates}x{self.particles}" if self.estimates > 1 else f"{self.particles}"
        return f"{self.name}-{shape}-{budget}"

    def train_settings(self) -> dict:
        """The TrainConfig fields that make this estimator."""
        extra = {"num_estimates": self.estimates} if self.multi_estimate else {}
        return {"elbo": self.name, "num_particles": self.particles, "vectorize_particles": self.samples > 1,
                "extra": extra}


def score_fixed_model(vae, images, batch, specs, repeats: int, seed: int, progress: bool = True) -> list[dict]:
    """Bound per image, gradient SNR and time per gradient of each estimator on one model."""
    import pyro
    import torch
    from tqdm.auto import tqdm

    from .gradients import gradient_moments, snr_summary
    from .marginal import mean_and_stderr

    rows = []
    groups = {"encoder": list(vae.encoder.parameters()), "decoder": list(vae.decoder.parameters())}
    for spec in tqdm(specs, desc="estimators", disable=None if progress else True):
        elbo = spec.make_elbo()
        pyro.set_rng_seed(seed)
        with torch.no_grad():  # one call per image: the per-image value of the bound
            values = torch.tensor([-elbo.differentiable_loss(vae.model, vae.guide, x[None]).item()
                                   for x in images], dtype=torch.float64)
        pyro.set_rng_seed(seed)
        started = time.perf_counter()
        moments = gradient_moments(lambda: elbo.differentiable_loss(vae.model, vae.guide, batch),
                                   groups, repeats)
        seconds = (time.perf_counter() - started) / repeats
        row = {"estimator": spec.name, "particles": spec.particles, "estimates": spec.estimates,
               "samples": spec.samples, "label": spec.label,
               **dict(zip(("bound_mean", "bound_stderr"), mean_and_stderr(values))),
               "ms_per_gradient": 1e3 * seconds}
        for group, moment in moments.items():
            row.update({f"{group}_{k}": v for k, v in snr_summary(moment).items()})
        rows.append(row)
    return rows


def fixed_model_table(rows: list[dict]) -> str:
    lines = ["| estimator | bound (nats/image) | encoder SNR (median) | decoder SNR (median) | "
             "encoder grad var (mean) | decoder grad var (mean) | ms / gradient |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['label']} | {r['bound_mean']:.2f} ± {r['bound_stderr']:.2f} | "
                     f"{r['encoder_snr_median']:.3f} | {r['decoder_snr_median']:.3f} | "
                     f"{r['encoder_grad_variance_mean']:.3g} | {r['decoder_grad_variance_mean']:.3g} | "
                     f"{r['ms_per_gradient']:.1f} |")
    return "\n".join(lines)


def snr_slopes(rows: list[dict]) -> list[dict]:
    """Per estimator with three or more sample counts: the least-squares slope of log SNR
    (median over parameters) against log samples per image, for the encoder and the decoder.
    Rainforth et al. (2018): about -1/2 for IWAE's encoder and +1/2 for its decoder; Tucker
    et al. (2018): about +1/2 for DReG's encoder."""
    slopes = []
    for family in dict.fromkeys(r["estimator"] for r in rows):
        points = [r for r in rows if r["estimator"] == family]
        if len({r["samples"] for r in points}) < 3:
            continue
        x = [math.log(r["samples"]) for r in points]
        row = {"estimator": family, "samples": [r["samples"] for r in points]}
        for group in ("encoder", "decoder"):
            y = [math.log(r[f"{group}_snr_median"]) for r in points]
            mx, my = sum(x) / len(x), sum(y) / len(y)
            row[f"{group}_slope"] = (sum((a - mx) * (b - my) for a, b in zip(x, y))
                                     / sum((a - mx) ** 2 for a in x))
        slopes.append(row)
    return slopes


def slopes_table(slopes: list[dict]) -> str:
    lines = ["| estimator | samples per image | encoder SNR slope | decoder SNR slope |", "|---|---|---:|---:|"]
    lines += [f"| {s['estimator']} | {', '.join(map(str, s['samples']))} | {s['encoder_slope']:+.2f} | "
              f"{s['decoder_slope']:+.2f} |" for s in slopes]
    return "\n".join(lines)


MARKERS = "osD^vP*X"  # distinct markers (and sizes), so that coinciding lines stay visible


def plot_fixed_model(rows: list[dict], out: Path) -> list[Path]:
    from .plots import plt, save_figure

    families = sorted({r["estimator"] for r in rows})
    paths = [out / "bound_vs_particles.png", out / "snr_vs_particles.png"]
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for fam in families:
        pts = [r for r in rows if r["estimator"] == fam]
        ax.errorbar([r.get("samples", r["particles"]) for r in pts], [r["bound_mean"] for r in pts],
                    yerr=[r["bound_stderr"] for r in pts], marker="o", capsize=3, label=fam)
    ax.set_xscale("log")
    ax.set_xlabel("samples of z per image (L, K, or M·K)")
    ax.set_ylabel("bound on log p(x) (nats/image)")
    ax.grid(True, alpha=0.3)
    ax.legend()
    save_figure(fig, paths[0])
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=False)
    for ax, group in zip(axes, ("encoder", "decoder")):
        for fam in families:
            pts = [r for r in rows if r["estimator"] == fam]
            ax.plot([r.get("samples", r["particles"]) for r in pts], [r[f"{group}_snr_median"] for r in pts],
                    marker=MARKERS[families.index(fam) % len(MARKERS)], markersize=7 - families.index(fam) % 3,
                    label=fam)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(f"{group} ({'guide' if group == 'encoder' else 'model'}) gradient SNR, median over parameters",
                     fontsize=9)
        ax.set_xlabel("samples of z per image (L, K, or M·K)")
        ax.set_ylabel("SNR, |mean| / std")
        ax.grid(True, alpha=0.3)
        ax.legend()
    save_figure(fig, paths[1])
    return paths


def compare_fixed_model(run_dir: str | Path, estimators: Sequence[Estimator], out: str | Path | None = None, *,
                        num_images: int = 1000, grad_batch: int = 100, repeats: int = 100, seed: int = 0,
                        device: str = "auto", data_dir: str | None = None, progress: bool = True,
                        tensorboard: bool = False) -> Path:
    """Score ``estimators`` on the trained run in ``run_dir`` (see the module docstring); writes
    comparison.md, comparison.json and the figures into ``out`` (default RUN_DIR/comparison),
    held as its one writer from before any work, and returns it; with ``tensorboard``, also the
    SNRs as TensorBoard events in OUT/tensorboard."""
    from . import runs
    from .trainer import resolve_device

    torch_device = resolve_device(device)
    run_dir = Path(run_dir)
    out = Path(out or run_dir / "comparison")
    if tensorboard:
        from .tensorboard_log import check_tensorboard

        check_tensorboard()
    with runs.claim_run_dir(out):  # checked before any work, and one writer
        rows = _compare_fixed_model(run_dir, list(estimators), out, num_images, grad_batch, repeats, seed,
                                    torch_device, data_dir, progress)
        if tensorboard:
            from .tensorboard_log import log_snr

            log_snr(out / "tensorboard", rows)
    return out


def _compare_fixed_model(run_dir: Path, specs: list[Estimator], out: Path, num_images: int, grad_batch: int,
                         repeats: int, seed: int, device, data_dir: str | None, progress: bool) -> list[dict]:
    import torch

    from . import runs

    vae, _, data = runs.load_run_and_data(run_dir, device, data_dir)
    images = data.test.images[:num_images]
    if grad_batch > len(data.test):
        raise ValueError(f"a gradient batch of {grad_batch} images is larger than the test set")
    batch = data.test.images[:grad_batch]
    rows = score_fixed_model(vae, images, batch, specs, repeats, seed, progress)
    settings = {"mode": "fixed-model", "run_dir": str(run_dir), "num_images": len(images),
                "grad_batch": len(batch), "repeats": repeats, "seed": seed,
                "device": str(device), "torch_threads": torch.get_num_threads()}
    slopes = snr_slopes(rows)
    runs.write_json(out / "comparison.json", {"settings": settings, "estimators": rows, "snr_slopes": slopes})
    figures = plot_fixed_model(rows, out)
    table = fixed_model_table(rows)
    fitted = (f"\n\nSlope of log SNR against log samples per image (least squares):\n\n{slopes_table(slopes)}"
              if slopes else "")
    (out / "comparison.md").write_text(
        f"# Estimator comparison on a fixed model\n\nModel: `{run_dir}`; bound over the first "
        f"{len(images)} test images (mean ± standard error); gradient statistics over {repeats} "
        f"draws on a fixed batch of {len(batch)} test images; {settings['torch_threads']} torch "
        f"thread(s) on {device}.\n\n{table}{fitted}\n\n"
        + "".join(f"![{f.stem}]({f.name})\n" for f in figures))
    print(table + fitted)
    print(f"wrote {out}/comparison.md, comparison.json, {', '.join(f.name for f in figures)}")
    return rows


def compare_training(estimators: Sequence[Estimator], out: str | Path, base, *, wall_seconds: float | None = None,
                     iwae_k: int = DEFAULT_IWAE_K, eval_limit: int | None = None, progress: bool = True) -> Path:
    """Train one run per estimator from the TrainConfig ``base`` (same seed, data and net) for
    its epochs, and, with ``wall_seconds``, once more each under that wall-time budget; score
    each by importance sampling (log p(x) with ``base.eval_samples`` samples, IWAE_``iwae_k`` and
    the ELBO from the same samples; on the first ``eval_limit`` test images if given), and each
    log p(x) against the first estimator's, image by image (a paired difference, whose standard
    error is far smaller than either score's). Writes comparison.md, comparison.json
    and learning_curves.png into ``out`` (held as its one writer; an interrupted comparison
    resumes) and returns it."""
    from . import runs
    from .trainer import resolve_device

    out = Path(out)
    torch_device = resolve_device(base.device)
    with runs.claim_run_dir(out):  # checked before any work, and one writer
        _compare_training(list(estimators), out, base, wall_seconds, iwae_k, eval_limit, progress, torch_device)
    return out


def _compare_training(specs: list[Estimator], out: Path, base, wall_seconds: float | None, iwae_k: int,
                      eval_limit: int | None, progress: bool, device) -> None:
    import dataclasses

    from . import runs
    from .data import load_dataset
    from .trainer import train_and_report

    data = load_dataset(base.dataset, base.binarize, base.data_dir, device, base.train_size, base.valid_size)
    budgets = [("epochs", {"epochs": base.epochs})]
    if wall_seconds:
        budgets.append(("time", {"epochs": 10_000, "max_seconds": wall_seconds}))
    results = []
    for budget, limits in budgets:
        for spec in specs:
            tag = spec.run_name(budget)
            config = dataclasses.replace(base, **limits, **spec.train_settings(), run_dir=str(out / tag))
            # an interrupted comparison goes on: a run trained and scored with these settings is
            # reused (wherever the comparison's folder has moved), an unfinished one resumed
            settings = {"config": {**config.to_dict(), "run_dir": tag}, "iwae_k": iwae_k, "eval_limit": eval_limit}
            done = out / tag / FINISHED_FILE
            finished = json.loads(done.read_text()) if done.is_file() else {}
            if finished.get("settings") == settings:
                print(f"--- {spec.label}, budget: {budget}: trained and scored, reused")
                results.append(finished["result"])
                continue
            resume = (out / tag / runs.CHECKPOINT_FILE).exists()
            print(f"--- {spec.label}, budget: {budget}")
            report = train_and_report(config, resume=resume, progress=progress, dataset=data, iwae_k=iwae_k,
                                      eval_limit=eval_limit)
            history, evaluation = report["history"], report["eval"] or {"summary": {}, "per_image": {}}
            results.append({"estimator": spec.name, "particles": spec.particles, "estimates": spec.estimates,
                            "label": spec.label,
                            "budget": budget, "epochs": len(history),
                            "train_seconds": sum(r["epoch_seconds"] for r in history),
                            "final_test_elbo": history[-1]["test_elbo"],
                            "log_px": evaluation["summary"].get("log_px_mean"),
                            "log_px_stderr": evaluation["summary"].get("log_px_stderr"),
                            "iwae": evaluation["summary"].get("iwae_mean"),
                            "elbo": evaluation["summary"].get("elbo_mean"),
                            "eval_images": evaluation.get("settings", {}).get("num_images"),
                            "log_px_per_image": evaluation["per_image"].get("log_px"),
                            "history": history})
            runs.write_json(done, {"settings": settings, "result": results[-1]})
    for budget, _ in budgets:
        paired_differences([r for r in results if r["budget"] == budget])
    for r in results:
        del r["log_px_per_image"]  # in each run's eval report; the comparison keeps the differences
    write_training_comparison(results, [budget for budget, _ in budgets], out, base, wall_seconds, iwae_k,
                              eval_limit)


def write_training_comparison(results: list[dict], budgets: list[str], out: Path, base, wall_seconds: float | None,
                              iwae_k: int, eval_limit: int | None) -> None:
    """comparison.json, comparison.md (the table) and learning_curves.png of a training comparison."""
    from . import runs
    from .plots import plt, save_figure

    runs.write_json(out / "comparison.json", {"settings": {**base.to_dict(), "mode": "train", "epochs": base.epochs,
                                                           "wall_seconds": wall_seconds, "iwae_k": iwae_k,
                                                           "eval_limit": eval_limit},
                                              "estimators": results})
    k = min(iwae_k, base.eval_samples) if base.eval_samples else iwae_k
    images = next((f" on {r['eval_images']} test images" for r in results if r["eval_images"]), "")
    lines = [f"| estimator | budget | epochs | train s | final test ELBO (1 sample) | "
             f"IS log p(x), K={base.eval_samples}{images} | minus the first row's, paired | IWAE_{k} | "
             f"ELBO (same samples) |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        lp = "n/a" if r["log_px"] is None else f"{r['log_px']:.2f} ± {r['log_px_stderr']:.2f}"
        diff = "n/a" if r.get("log_px_diff") is None else f"{r['log_px_diff']:+.2f} ± {r['log_px_diff_stderr']:.2f}"
        bounds = " | ".join("n/a" if r[key] is None else f"{r[key]:.2f}" for key in ("iwae", "elbo"))
        lines.append(f"| {r['label']} | {r['budget']} | {r['epochs']} | {r['train_seconds']:.0f} | "
                     f"{r['final_test_elbo']:.2f} | {lp} | {diff} | {bounds} |")
    scored = [budget for budget in budgets
              if any(r.get("log_px_diff") is not None and r["budget"] == budget for r in results)]
    panels = len(budgets) + len(scored)
    fig, axes = plt.subplots(1, panels, figsize=(6 * panels, 4.2), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, budget in zip(axes[0], budgets):
        mine = [r for r in results if r["budget"] == budget]
        for i, r in enumerate(mine):
            xs = ([row["images_seen"] for row in r["history"]] if budget == "epochs"
                  else list(itertools.accumulate(row["epoch_seconds"] for row in r["history"])))
            ax.plot(xs, [row["test_elbo"] for row in r["history"]], marker="o", markersize=2,
                    color=colors[i % len(colors)], linestyle="-" if i < len(colors) else "--", label=r["label"])
        # the first tenth of training (hundreds of nats below) would flatten the rest
        late = [row["test_elbo"] for r in mine for row in r["history"][len(r["history"]) // 10:]]
        if late:
            ax.set_ylim(min(late) - 1, max(late) + 1)
        ax.set_xlabel("training images seen" if budget == "epochs" else "training seconds")
        ax.set_ylabel("test ELBO, 1 sample (nats/image)")
        ax.set_title(f"same {budget} budget", fontsize=9)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    for ax, budget in zip(axes[0][len(budgets):], scored):
        mine = [r for r in results if r["budget"] == budget and r.get("log_px_diff") is not None]
        ys = range(len(mine))[::-1]
        ax.errorbar([r["log_px_diff"] for r in mine], ys, xerr=[2 * r["log_px_diff_stderr"] for r in mine],
                    fmt="o", capsize=3)
        ax.set_yticks(list(ys), [r["label"] for r in mine], fontsize=8)
        ax.axvline(0.0, color="grey", linewidth=0.8)
        ax.set_xlabel(f"IS log p(x) minus {mine[0]['label']}'s, paired over test images (nats; ± 2 s.e.)")
        ax.set_title(f"final log p(x), same {budget} budget", fontsize=9)
        ax.grid(True, axis="x", alpha=0.3)
    save_figure(fig, out / "learning_curves.png")
    table = "\n".join(lines)
    (out / "comparison.md").write_text(f"# Estimators trained under the same budget\n\n{table}\n\n"
                                       "![learning curves](learning_curves.png)\n")
    print(table)
    print(f"wrote {out}/comparison.md")


def paired_differences(results: list[dict]) -> None:
    """Add each result's log p(x) minus the first result's, per image (the same images and
    importance-sampling seed), as ``log_px_diff`` ± ``log_px_diff_stderr`` (standard error of the
    mean difference): the between-image spread, which dominates either score's error, cancels."""
    import torch

    from .marginal import mean_and_stderr

    reference = results[0]["log_px_per_image"] if results else None
    for r in results:
        values = r["log_px_per_image"]
        if reference is None or values is None or len(values) != len(reference):
            continue
        differences = torch.tensor(values, dtype=torch.float64) - torch.tensor(reference, dtype=torch.float64)
        r["log_px_diff"], r["log_px_diff_stderr"] = mean_and_stderr(differences)
