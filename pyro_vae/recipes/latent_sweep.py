"""Kingma & Welling's latent-size experiment (their Figure 2): the seed model trained for each
latent size J, train and test ELBO against training images seen, one panel per J, and the final
test ELBO and IS log p(x) against J. Each J is an ordinary run directory: finished ones are
skipped, interrupted ones resumed, earlier ones with other settings refused."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

from . import existing_run, score_path_for

DEFAULT_LATENT_DIMS = (3, 5, 10, 20, 200)


def latent_sweep(args) -> None:
    from .. import runs
    from ..data import load_dataset
    from ..train import train_and_report
    from ..cli import train_config
    from ..trainer import RESUMABLE_SETTINGS, resolve_device

    out = Path(args.out)
    device = resolve_device(args.device)
    with runs.claim_run_dir(out):  # the sweep's table and figures; each J's run is claimed in turn
        configs = [train_config(args, latent_dim=latent_dim, run_dir=str(out / f"J{latent_dim}"))
                   for latent_dim in args.latent_dims]
        # every earlier run is checked against the settings asked for before any work
        found = [existing_run(Path(c.run_dir), c, RESUMABLE_SETTINGS) for c in configs]
        first = configs[0]
        data = load_dataset(first.dataset, first.binarize, first.data_dir, device, first.train_size)
        results = []
        for config, state in zip(configs, found):
            run_dir, latent_dim = Path(config.run_dir), config.latent_dim
            score = score_path_for(run_dir, args.eval_samples, args.device)
            if state is not None and state["epoch"] == args.epochs and (not args.eval_samples or score.exists()):
                print(f"J={latent_dim}: finished run in {run_dir}, skipped")
            else:
                print(f"J={latent_dim}: {'resuming' if state else 'training'} in {run_dir}")
                train_and_report(config, resume=state is not None, progress=not args.no_progress, dataset=data)
            history = runs.read_metrics(run_dir / runs.METRICS_FILE)
            summary = json.loads(score.read_text())["summary"] if args.eval_samples else {}
            results.append({"latent_dim": latent_dim, "epochs": len(history),
                            "train_elbo": history[-1]["train_elbo"], "test_elbo": history[-1]["test_elbo"],
                            "log_px": summary.get("log_px_mean", math.nan),
                            "log_px_stderr": summary.get("log_px_stderr", math.nan), "history": history})
        _write_sweep(results, out, args)


def _write_sweep(results: list[dict], out: Path, args) -> None:
    from ..plots import plt, save_figure

    fields = ["latent_dim", "epochs", "train_elbo", "test_elbo", "log_px", "log_px_stderr"]
    with open(out / "latent_sweep.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(results)
    lines = ["| J | epochs | train ELBO | test ELBO | IS log p(x), K=%d |" % args.eval_samples,
             "|---:|---:|---:|---:|---:|"]
    for r in results:
        lines.append(f"| {r['latent_dim']} | {r['epochs']} | {r['train_elbo']:.2f} | {r['test_elbo']:.2f} | "
                     f"{r['log_px']:.2f} ± {r['log_px_stderr']:.2f} |")
    (out / "latent_sweep.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))

    fig, axes = plt.subplots(1, len(results), figsize=(3.2 * len(results), 3.2), sharey=True, squeeze=False)
    for ax, r in zip(axes[0], results):
        seen = [row["images_seen"] for row in r["history"]]
        ax.plot(seen, [row["train_elbo"] for row in r["history"]], label="train")
        ax.plot(seen, [row["test_elbo"] for row in r["history"]], "--", label="test")
        ax.set_xscale("log")
        ax.set_title(f"J = {r['latent_dim']}", fontsize=10)
        ax.set_xlabel("training images seen")
        ax.grid(True, alpha=0.3)
    axes[0][0].set_ylabel("ELBO (nats per image)")
    axes[0][0].legend()
    save_figure(fig, out / "latent_sweep_curves.png", dpi=90)

    fig, ax = plt.subplots(figsize=(5, 3.6))
    dims = [r["latent_dim"] for r in results]
    ax.plot(dims, [r["test_elbo"] for r in results], marker="o", label="test ELBO")
    if args.eval_samples:
        ax.errorbar(dims, [r["log_px"] for r in results], yerr=[r["log_px_stderr"] for r in results],
                    marker="s", capsize=3, label=f"IS log p(x), K={args.eval_samples}")
    ax.set_xscale("log")
    ax.set_xticks(dims)
    ax.set_xticklabels([str(d) for d in dims])
    ax.set_xlabel("latent dimension J")
    ax.set_ylabel("nats per test image")
    ax.grid(True, alpha=0.3)
    ax.legend()
    save_figure(fig, out / "latent_sweep_summary.png", dpi=90)
    print(f"wrote {out}/latent_sweep.csv, latent_sweep.md, latent_sweep_curves.png, latent_sweep_summary.png")
