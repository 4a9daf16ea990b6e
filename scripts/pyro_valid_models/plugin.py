"""A pytest plugin that runs the programs of Pyro's tests/infer/test_valid_models.py through every
pyro_vae estimator (see run.sh). Pyro's assert_ok / assert_error / assert_warning are replaced by
a recorder: for each program that Pyro's test hands to Trace_ELBO or TraceMeanField_ELBO, every
estimator runs an SVI step and a differentiable loss under Pyro's conditions (float64 from Pyro's
conftest, validation on, warnings as errors), with a time limit, and the outcome is written to
$RECORDS (JSON). trace and meanfield are also checked against Pyro's own loss on the same draws;
where one fails, Pyro's own ELBO with the same settings is run to see whether it fails alike.
$GUESS=1 gives programs left at Pyro's infinite max_plate_nesting Pyro's guess of it instead."""

import json
import math
import os
import signal
import warnings

import pyro
import pytest
from pyro.infer import SVI, Trace_ELBO, TraceMeanField_ELBO
from pyro.optim import Adam

RECORDS = []
ESTIMATORS = [("trace-seq", {}), ("trace", {}), ("meanfield", {}), ("iwae", {}), ("renyi", {}), ("stl", {}),
              ("dreg", {}), ("miwae", {"num_estimates": 2}), ("ciwae", {}), ("piwae", {"num_estimates": 2})]
STOCK = {"trace": Trace_ELBO, "meanfield": TraceMeanField_ELBO}
CURRENT = {"id": None}


class Timeout(Exception):
    pass


def _alarm(*_):
    raise Timeout()


def _pyro_conditions():
    context = warnings.catch_warnings()
    context.__enter__()
    warnings.simplefilter("error")
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    return context


def stock_outcome(name, model, guide, max_plate_nesting, kwargs, particles):
    cls = STOCK.get(name.replace("-seq", ""))
    if cls is None:
        return None
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    context = _pyro_conditions()
    try:
        elbo = cls(num_particles=particles, vectorize_particles=not name.endswith("-seq"),
                   max_plate_nesting=max_plate_nesting)
        SVI(model, guide, Adam({"lr": 1e-6}), elbo).step(**kwargs)
        return "ran"
    except Exception as error:
        return type(error).__name__
    finally:
        context.__exit__(None, None, None)


def run_one(name, options, model, guide, max_plate_nesting, kwargs, particles):
    from pyro_vae import make_elbo

    base = name.replace("-seq", "")
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    elbo = make_elbo(base, particles, vectorize=not name.endswith("-seq"), max_plate_nesting=max_plate_nesting,
                     **options)
    SVI(model, guide, Adam({"lr": 1e-6}), elbo).step(**kwargs)
    pyro.set_rng_seed(0)
    value = elbo.differentiable_loss(model, guide, **kwargs).detach().item()
    if base in STOCK:
        stock = STOCK[base](num_particles=particles, vectorize_particles=not name.endswith("-seq"),
                            max_plate_nesting=max_plate_nesting)
        pyro.set_rng_seed(0)
        try:
            reference = float(stock.differentiable_loss(model, guide, **kwargs))
        except Exception:
            reference = None
        if reference is not None and not math.isclose(reference, value, rel_tol=1e-6, abs_tol=1e-6):
            return f"WRONG {value} vs Pyro's {reference}"
    return "ran" if math.isfinite(value) else f"nonfinite {value}"


def record(kind, model, guide, elbo, kwargs):
    if type(elbo).__name__ not in ("Trace_ELBO", "TraceMeanField_ELBO"):
        return  # programs meant for TraceEnum_ELBO and others
    max_plate_nesting = getattr(elbo, "max_plate_nesting", math.inf)
    if getattr(elbo, "vectorize_particles", False) and elbo.num_particles > 1:
        max_plate_nesting -= 1  # Pyro counts the particles' plate in its own copy
    if max_plate_nesting == math.inf and os.environ.get("GUESS"):
        try:
            guesser = Trace_ELBO()
            guesser._guess_max_plate_nesting(model, guide, (), kwargs)
            max_plate_nesting = guesser.max_plate_nesting
        except Exception:
            pass
    particles = max(2, getattr(elbo, "num_particles", 1))
    # an error or warning Pyro expects of TraceMeanField_ELBO (a guide that is not mean-field) is meanfield's alone
    meanfield_only = kind != "ok" and type(elbo).__name__ == "TraceMeanField_ELBO"
    for name, options in ESTIMATORS:
        if meanfield_only and name != "meanfield":
            continue
        signal.signal(signal.SIGALRM, _alarm)
        signal.alarm(8)
        context = _pyro_conditions()
        try:
            outcome, message = run_one(name, options, model, guide, max_plate_nesting, kwargs, particles), ""
        except Timeout:
            outcome, message = "hang", ""
        except Exception as error:
            outcome, message = type(error).__name__, (str(error).splitlines() or [repr(error)])[0][:300]
        finally:
            signal.alarm(0)
            context.__exit__(None, None, None)
        stock = stock_outcome(name, model, guide, max_plate_nesting, kwargs, particles) if outcome != "ran" else None
        RECORDS.append({"test": CURRENT["id"], "pyro": type(elbo).__name__, "kind": kind,
                        "max_plate_nesting": str(max_plate_nesting), "estimator": name, "outcome": outcome,
                        "message": message, "stock": stock})


def pytest_collection_modifyitems(session, config, items):
    import tests.infer.test_valid_models as programs

    programs.assert_ok = lambda model, guide, elbo, **kwargs: record("ok", model, guide, elbo, kwargs)
    programs.assert_error = lambda model, guide, elbo, match=None: record("error", model, guide, elbo, {})
    programs.assert_warning = lambda model, guide, elbo: record("warning", model, guide, elbo, {})


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    CURRENT["id"] = item.nodeid


def pytest_sessionfinish(session):
    with open(os.environ.get("RECORDS", "records.json"), "w") as f:
        json.dump(RECORDS, f)
