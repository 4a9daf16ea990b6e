"""Valid Pyro programs of the kinds Pyro's own tests/infer/test_valid_models.py exercises, through
every estimator, under Pyro's test conditions (float64, validation on, warnings as errors): each
gives the right answer (trace and meanfield: Pyro's own loss) or a ValueError whose message names
the site or setting and the fix; none hangs (a time limit per case) and none crashes otherwise."""

import math
import signal
import warnings

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO, TraceMeanField_ELBO

from pyro_vae import make_elbo
from pyro_vae.objectives import OBJECTIVES
from pyro_vae.program_check import ParticlesPlate

OPTIONS = {"miwae": {"num_estimates": 2}, "piwae": {"num_estimates": 2}, "renyi": {"alpha": 0.5}}
STOCK = {"trace": Trace_ELBO, "meanfield": TraceMeanField_ELBO}
X = torch.arange(12.0, dtype=torch.float64).reshape(4, 3) / 10


@pytest.fixture(autouse=True)
def pyro_test_conditions():
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    pyro.clear_param_store()
    signal.signal(signal.SIGALRM, _too_long)
    signal.alarm(30)  # a hang fails the case instead of the suite
    with pyro.validation_enabled(True), warnings.catch_warnings():
        warnings.simplefilter("error")
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        yield
    signal.alarm(0)
    torch.set_default_dtype(previous)


def _too_long(*_):
    raise TimeoutError("the case ran over its time limit")


def local(x):
    """Every site in the data plate: what every estimator takes."""
    with pyro.plate("data", len(x)):
        z = pyro.sample("z", dist.Normal(torch.zeros(len(x), 2), 1.0).to_event(1))
        pyro.sample("x", dist.Normal(z.sum(-1, keepdim=True).expand(z.shape[:-1] + (3,)), 1.0).to_event(1), obs=x)


def local_guide(x):
    loc = pyro.param("loc", torch.zeros(2))
    with pyro.plate("data", len(x)):
        pyro.sample("z", dist.Normal(loc + x[:, :2], 0.8).to_event(1))


def global_latent(x):
    shift = pyro.sample("shift", dist.Normal(0.0, 1.0))
    with pyro.plate("data", len(x)):
        pyro.sample("x", dist.Normal(shift[..., None].expand(shift.shape + (3,)), 1.0).to_event(1), obs=x)


def global_guide(x):
    pyro.sample("shift", dist.Normal(pyro.param("m", torch.tensor(0.1)), 0.5))


def no_plate(x):
    mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
    pyro.sample("x", dist.Normal(mu[..., None, None], 1.0).expand(mu.shape + x.shape).to_event(2), obs=x)


def no_plate_guide(x):
    pyro.sample("mu", dist.Normal(pyro.param("m", torch.tensor(0.0)), 1.0))


def nested(x):
    with pyro.plate("data", len(x), dim=-2):
        z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([len(x), 1]))
        with pyro.plate("features", x.shape[1], dim=-1):
            pyro.sample("x", dist.Normal(z, 1.0), obs=x)


def nested_guide(x):
    with pyro.plate("data", len(x), dim=-2):
        pyro.sample("z", dist.Normal(pyro.param("m", torch.tensor(0.2)).expand([len(x), 1]), 1.0))


def discrete_guide(x):
    logits = pyro.param("logits", torch.zeros(2))
    with pyro.plate("data", len(x)):
        pyro.sample("z", dist.Bernoulli(logits=logits.expand(len(x), 2)).to_event(1))


def masked_guide(x):
    loc = pyro.param("loc", torch.zeros(2))
    with pyro.plate("data", len(x)), pyro.poutine.mask(mask=torch.arange(len(x)) % 2 == 0):
        pyro.sample("z", dist.Normal(loc + x[:, :2], 0.8).to_event(1))


def shape_asserting(x):
    """A program that asserts its unvectorized shapes: it cannot take vectorized particles."""
    with pyro.plate("data", len(x)):
        z = pyro.sample("z", dist.Normal(torch.zeros(len(x), 2), 1.0).to_event(1))
        assert z.shape == (len(x), 2)
        pyro.sample("x", dist.Normal(z.sum(-1, keepdim=True).expand(z.shape[:-1] + (3,)), 1.0).to_event(1), obs=x)


def empty(x):
    pass


# program -> (model, guide, max_plate_nesting, {estimator: expected ValueError text} with
# "per-item" for every estimator but trace and meanfield; no entry: the estimator runs)
PER_ITEM = [name for name in OBJECTIVES if name not in ("trace", "meanfield")]
CASES = {
    "local": (local, local_guide, 1, {}),
    "global latent": (global_latent, global_guide, 1, {"per-item": "^guide site 'shift' is not in the data plate "
                                                                   "'data' at dim -1 \\(its plates: none\\): "
                                                                   "{estimator} bounds each item's log p"}),
    "no plate": (no_plate, no_plate_guide, 1, {"per-item": "site 'mu' is not in a data plate"}),
    "nested, max_plate_nesting 2": (nested, nested_guide, 2, {}),
    "nested, max_plate_nesting 1": (nested, nested_guide, 1, {"all": "increasing max_plate_nesting to at least 2"}),
    "nested, infinite": (nested, nested_guide, math.inf, {"all": "pass max_plate_nesting=2"}),
    "discrete guide": (local, discrete_guide, 1, {"per-item": "guide site 'z' is not reparameterized",
                                                  "meanfield": "guide site 'z' is not reparameterized"}),
    "masked guide site": (local, masked_guide, 1, {}),
    "asserts its shapes": (shape_asserting, local_guide, 1, {
        "per-item": "^the program fails under [0-9]+ vectorized particles at dim -2 \\(AssertionError: (?s:.*)\\): "
                    "a program that asserts its own shapes, or whose batch dims are not all plates within "
                    "max_plate_nesting, cannot be vectorized; the per-item estimators need it$"}),
    "empty": (empty, empty, 1, {"per-item": "no sample sites"}),
}


def expected_error(case: str, estimator: str) -> str | None:
    errors = CASES[case][3]
    if estimator in errors:
        return errors[estimator]
    if estimator in PER_ITEM and "per-item" in errors:
        return errors["per-item"].replace("{estimator}", estimator)  # a refusal names the estimator
    return errors.get("all")


def svi_step_and_loss(elbo, model, guide):
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    SVI(model, guide, pyro.optim.Adam({"lr": 1e-6}), elbo).step(X)
    pyro.set_rng_seed(1)
    return elbo.differentiable_loss(model, guide, X)


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("estimator", list(OBJECTIVES)[:9])
def test_every_estimator_gives_the_right_answer_or_one_true_sentence(case, estimator):
    model, guide, max_plate_nesting, _ = CASES[case]
    elbo = make_elbo(estimator, 2, vectorize=True, max_plate_nesting=max_plate_nesting, **OPTIONS.get(estimator, {}))
    expected = expected_error(case, estimator)
    if case == "asserts its shapes" and estimator in STOCK:
        expected = None  # Pyro's own vectorized Trace_ELBO runs into the program's assertion too
        with pytest.raises(AssertionError):
            svi_step_and_loss(elbo, model, guide)
        return
    if expected is not None:
        with pytest.raises(ValueError, match=expected):
            svi_step_and_loss(elbo, model, guide)
        return
    loss = svi_step_and_loss(elbo, model, guide)
    assert torch.isfinite(loss)
    if estimator in STOCK:  # the right answer: Pyro's own loss on the same draws
        stock = STOCK[estimator](num_particles=2, vectorize_particles=True, max_plate_nesting=max_plate_nesting)
        assert torch.allclose(loss, torch.as_tensor(svi_step_and_loss(stock, model, guide)), rtol=1e-10)


@pytest.mark.parametrize("estimator", ["trace", "meanfield"])
def test_one_particle_is_not_vectorized_so_a_shape_asserting_program_runs(estimator):
    """As Pyro's: with L = 1 the particles plate is left out even when asked to vectorize, so a
    program that asserts its unvectorized shapes runs, with Pyro's loss."""
    elbo = make_elbo(estimator, 1, vectorize=True)
    stock = STOCK[estimator](num_particles=1, vectorize_particles=True, max_plate_nesting=1)
    loss = svi_step_and_loss(elbo, shape_asserting, local_guide)
    assert torch.allclose(loss, torch.as_tensor(svi_step_and_loss(stock, shape_asserting, local_guide)), rtol=1e-10)


def test_trace_drawing_particles_one_by_one_takes_pyros_guess_of_the_plates():
    elbo = make_elbo("trace", 2, vectorize=False, max_plate_nesting=math.inf)
    loss = svi_step_and_loss(elbo, nested, nested_guide)
    stock = Trace_ELBO(num_particles=2)
    assert torch.allclose(loss, svi_step_and_loss(stock, nested, nested_guide), rtol=1e-10)


@pytest.mark.parametrize("name,options,message", [
    ("trace", {"beta": 0.3}, "the trace estimator takes no option 'beta' \\(ciwae takes it\\)"),
    ("trace", {"foo": 1}, "takes no option 'foo'; its options: none"),
    ("iwae", {"num_estimates": 3}, "\\(miwae and piwae take it\\)"),
    ("dreg", {"alpha": 0.5}, "\\(renyi takes it\\)"),
    ("miwae", {"num_estimates": 0}, "^num_estimates must be a positive integer, got 0$"),
    ("piwae", {"num_estimates": True}, "^num_estimates must be a positive integer, got True$"),
    ("ciwae", {"beta": 1.5}, "^beta must be a number in \\[0, 1\\], got 1.5$"),
    ("renyi", {"alpha": float("nan")}, "^alpha must be a finite number, got nan$"),
    ("renyi", {"alpha": True}, "^alpha must be a finite number, got True$"),
    ("renyi", {"alpha": 1}, "^alpha = 1 is the ordinary ELBO: use the trace estimator$"),
])
def test_options_are_checked_against_the_estimators_record(name, options, message):
    with pytest.raises(ValueError, match=message):
        make_elbo(name, 2, **options)


def test_the_particles_plate_leaves_a_parameter_declared_in_a_data_plate_alone():
    def guide():
        with pyro.plate("data", 3, dim=-1):
            return pyro.param("p", torch.zeros(2, 3), event_dim=0)

    with pyro.plate("particles", 4, dim=-2), pytest.raises(ValueError, match="invalid shape of pyro.param"):
        guide()  # a data plate at the particles' dim checks the parameter's shape against 4
    pyro.clear_param_store()
    with ParticlesPlate("particles", 4, dim=-2):
        assert guide().shape == (2, 3)


class Program(torch.nn.Module):
    """A model and guide as the methods fit expects."""

    def __init__(self, model, guide):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.tensor(1.0))
        self._model, self._guide = model, guide

    def model(self, x):
        return self._model(x)

    def guide(self, x):
        pyro.param("scale", self.scale)
        return self._guide(x)


@pytest.mark.parametrize("name,program,message", [
    ("iwae", (nested, nested_guide), "Try increasing max_plate_nesting to at least 2"),
    ("trace", (nested, nested_guide), "Try increasing max_plate_nesting to at least 2"),
    ("dreg", (global_latent, global_guide), "site 'shift' is not in the data plate"),
    ("stl", (local, discrete_guide), "guide site 'z' is not reparameterized"),
])
def test_fit_keeps_a_structural_error_as_it_is(name, program, message):
    from pyro_vae import fit

    module = Program(*program)
    with pytest.raises(ValueError, match=message) as raised:
        fit(module, X.repeat(2, 1), make_elbo(name, 2, vectorize=True), epochs=1, batch_size=4)
    assert "learning rate" not in str(raised.value)


def test_fit_still_reports_a_nan_as_a_nan():
    from pyro_vae import fit
    from pyro_vae.fit import TrainingFailed

    module = Program(local, local_guide)
    data = X.repeat(2, 1)
    data[:, 1] = math.nan  # in every batch, so in the first, which Pyro validates
    with pytest.raises(TrainingFailed, match="nan"):
        fit(module, data, make_elbo("trace", 1), epochs=1, batch_size=4)


def test_model_and_guide_may_name_their_data_plates_apart():
    def guide(x):
        loc = pyro.param("loc", torch.zeros(2))
        with pyro.plate("batch", len(x)):
            pyro.sample("z", dist.Normal(loc + x[:, :2], 0.8).to_event(1))

    for name in PER_ITEM:
        renamed = svi_step_and_loss(make_elbo(name, 2, **OPTIONS.get(name, {})), local, guide)
        same = svi_step_and_loss(make_elbo(name, 2, **OPTIONS.get(name, {})), local, local_guide)
        assert torch.allclose(renamed, same, rtol=1e-12), name
