"""Shared by the benchmark scripts: timing, the machine's description, the docs table."""

from __future__ import annotations

import contextlib
import os
import platform
import re
import statistics
import time
from pathlib import Path
from typing import Callable

import pyro
import torch

DOCS = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved_step_times(variants: dict[str, Callable[[], object]], device: torch.device,
                           steps: int, warmup: int = 20, chunk: int = 10,
                           param_scopes: dict[str, dict] | None = None) -> dict[str, list[float]]:
    """Per-step seconds of each variant, measured in interleaved rounds of ``chunk`` steps so
    that the machine's drift (other load, clock changes) falls on all variants alike.

    ``param_scopes`` gives a Pyro param-store state per variant, so that several Pyro models
    with the same parameter names live side by side (``ParamStoreDict.scope``)."""
    scopes = param_scopes or {}
    store = pyro.get_param_store()

    def scope(name):
        return store.scope(scopes[name]) if name in scopes else contextlib.nullcontext()

    for name, fn in variants.items():
        with scope(name):
            for _ in range(warmup):
                fn()
    synchronize(device)
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(-(-steps // chunk)):
        for name, fn in variants.items():
            with scope(name):
                synchronize(device)
                start = time.perf_counter()
                for _ in range(chunk):
                    fn()
                synchronize(device)
            times[name].append((time.perf_counter() - start) / chunk)
    return times


def add_thread_flag(parser) -> None:
    parser.add_argument("--threads", type=int, help="torch's CPU threads (default: torch's own choice)")


def apply_thread_flag(args) -> str:
    """Set torch's CPU threads from --threads; the flag as it belongs in the docs' command line."""
    if args.threads:
        torch.set_num_threads(args.threads)
        return f" --threads {args.threads}"
    return ""


def parse_bench_args(parser) -> tuple:
    """(args, the --threads flag for the docs' command line, the torch device), with the
    --no-write and --threads flags every benchmark takes, torch's seed set to 0."""
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/ alone")
    add_thread_flag(parser)
    args = parser.parse_args()
    threads_flag = apply_thread_flag(args)
    torch.manual_seed(0)
    return args, threads_flag, torch.device(args.device)


def median_ms(samples: list[float]) -> float:
    return 1e3 * statistics.median(samples)


def describe_machine(device: torch.device) -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            match = re.search(r"model name\s*:\s*(.+)", f.read())
            cpu = match.group(1).strip() if match else cpu
    except OSError:
        pass
    text = (f"{cpu}, {os.cpu_count()} logical cores, torch {torch.__version__} "
            f"({torch.get_num_threads()} thread{'' if torch.get_num_threads() == 1 else 's'})")
    if device.type == "cuda":
        text += f", GPU: {torch.cuda.get_device_name(device)}"
    return text


def write_section(title: str, body: str) -> None:
    """Replace (or add) the section ``## title`` of docs/benchmarks.md with ``body``."""
    DOCS.parent.mkdir(exist_ok=True)
    text = DOCS.read_text() if DOCS.exists() else "# Benchmarks\n\nRegenerate with the commands in each section.\n"
    section = f"## {title}\n\n{body.strip()}\n"
    pattern = re.compile(rf"^## {re.escape(title)}\n.*?(?=^## |\Z)", re.S | re.M)
    text = pattern.sub(lambda _: section + "\n", text) if pattern.search(text) else text.rstrip() + "\n\n" + section
    DOCS.write_text(text)
