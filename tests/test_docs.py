"""The code in docs/api.md runs as written and prints what it says."""

import contextlib
import importlib
import io
import re
from pathlib import Path

from tests.conftest import REPO

DOCS = Path(__file__).resolve().parents[1] / "docs"


def test_the_api_page_runs():
    text = (DOCS / "api.md").read_text()
    (code,) = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(code, "docs/api.md", "exec"), {"__name__": "docs_api"})
    lines = printed.getvalue().splitlines()
    assert [line.split(":")[0] for line in lines] == ["trace L=1", "iwae L=5", "iwae L=5, AIS",
                                                      "BDMC on 50 simulated items", "truth"]
    numbers = [float(re.search(r"(-?\d+\.\d+) nats", line).group(1)) for line in lines]
    log_px = [float(re.search(r"log p\(x\) (-?\d+\.\d+)", line).group(1)) for line in lines[:2]]
    ais, gap, truth = numbers[2:]
    for estimate, elbo in zip(log_px, numbers[:2]):
        assert elbo < estimate < truth + 0.3  # trained models close to, and not far above, the truth
        assert estimate > truth - 1.0
    # a 2-D latent and a good guide: AIS agrees with IS at K = 1000, and BDMC's gap is near 0
    assert abs(ais - log_px[1]) < 0.05 and -0.05 < gap < 0.05


def test_the_estimator_table_is_the_registrys_and_the_api_page_names_each_estimator(monkeypatch):
    """docs/cli.md's estimator table is what scripts/estimator_table.py writes from the registry
    now, and docs/api.md names every registered estimator."""
    from pyro_vae.objectives import OBJECTIVES

    monkeypatch.syspath_prepend(str(REPO / "scripts"))
    script = importlib.import_module("estimator_table")
    written = script.section_text(script.DOCS, script.MARKER)
    assert written == script.table(), "run python scripts/estimator_table.py"
    assert all(f"| `{name}` | {record.summary} |" in written for name, record in OBJECTIVES.items())
    api = (DOCS / "api.md").read_text()
    for name in OBJECTIVES:
        assert f"`{name}`" in api, name
