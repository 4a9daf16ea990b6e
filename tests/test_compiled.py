"""The compiled step: the traced graph computes the eager Pyro step's loss and gradients from
the same draws, for every estimator; a compiled fit trains as an eager one does and resumes
exactly; the step never reads a device value on the host."""

import pyro
import pytest
import torch

import pyro_vae
from pyro_vae.compiled import CompiledLoss, host_reads
from pyro_vae.model import VAE, TwoLayerVAE

ESTIMATORS = [("trace", 1, False, {}), ("trace", 3, False, {}), ("trace", 3, True, {}), ("meanfield", 2, True, {}),
              ("iwae", 4, True, {}), ("renyi", 3, True, {"alpha": 0.5}), ("stl", 2, True, {}),
              ("dreg", 4, True, {}), ("miwae", 2, True, {"num_estimates": 2}),
              ("piwae", 2, True, {"num_estimates": 2}), ("ciwae", 3, True, {"beta": 0.3})]


def eager_loss_and_grads(module, elbo, x, seed):
    pyro.set_rng_seed(seed)
    params = list(module.parameters())
    loss = elbo.differentiable_loss(module.model, module.guide, x)
    return loss.detach(), torch.autograd.grad(loss, params, allow_unused=True)


def assert_same_step(module, elbo, x):
    traced = CompiledLoss(module, elbo, backend=None)
    pyro.set_rng_seed(5)
    traced(x)  # the first call traces (on a forked random stream) and runs the graph
    assert host_reads(traced.trace(x)) == []
    loss, grads = eager_loss_and_grads(module, elbo, x, seed=1)
    pyro.set_rng_seed(1)
    graph_loss, graph_grads = traced(x)
    assert torch.allclose(graph_loss, loss, rtol=1e-6), (graph_loss, loss)
    for name, a, b in zip(traced.names, graph_grads, grads):
        assert (a is None) == (b is None), name
        if a is not None:
            assert torch.allclose(a, b, rtol=1e-5, atol=1e-6), name
    # other draws give another loss: the draws are in the graph, not baked into it
    pyro.set_rng_seed(2)
    assert not torch.equal(traced(x)[0], graph_loss)


@pytest.mark.parametrize("name,particles,vectorize,options", ESTIMATORS,
                         ids=[f"{e[0]}-{e[1]}{'v' if e[2] else ''}" for e in ESTIMATORS])
def test_the_traced_step_is_the_eager_step(name, particles, vectorize, options):
    pyro.clear_param_store()
    torch.manual_seed(0)
    vae = VAE(3, (16,))
    x = torch.rand(8, 784).bernoulli()
    assert_same_step(vae, pyro_vae.make_elbo(name, particles, vectorize=vectorize, **options), x)


def test_the_traced_step_of_the_two_layer_model():
    pyro.clear_param_store()
    torch.manual_seed(0)
    model = TwoLayerVAE()
    x = torch.rand(4, 784).bernoulli()
    assert_same_step(model, pyro_vae.make_elbo("dreg", 3), x)


def fit_tiny(epochs, compile, callbacks=(), seed=0):
    pyro.clear_param_store()
    torch.manual_seed(seed)
    vae = VAE(2, (16,))
    data = torch.rand(110, 784, generator=torch.Generator().manual_seed(1)).bernoulli()  # 2 full batches + 10
    optimizer = torch.optim.Adam(vae.parameters(), lr=1e-2)
    state = pyro_vae.fit(vae, data, pyro_vae.make_elbo("iwae", 3, vectorize=True), epochs=epochs, batch_size=50,
                         optimizer=optimizer, callbacks=callbacks, seed=seed, compile=compile)
    return vae, state


def test_a_compiled_fit_trains_as_an_eager_one_and_resumes_exactly(tmp_path):
    eager, eager_state = fit_tiny(3, compile=False)
    compiled, compiled_state = fit_tiny(3, compile=True)
    for a, b in zip(eager_state.history, compiled_state.history):  # same draws, rounding apart
        assert abs(a["train_elbo"] - b["train_elbo"]) < 1e-3 * abs(a["train_elbo"]), (a, b)
    assert eager_state.history[-1]["train_elbo"] > eager_state.history[0]["train_elbo"]
    for a, b in zip(eager.parameters(), compiled.parameters()):
        assert torch.allclose(a, b, atol=1e-3)
    # stopped after 2 epochs and resumed: the same weights as the uninterrupted compiled fit
    path = tmp_path / "checkpoint.pt"
    fit_tiny(2, compile=True, callbacks=[pyro_vae.Checkpoint(path)])
    resumed, _ = fit_tiny(3, compile=True, callbacks=[pyro_vae.Checkpoint(path, resume=True)])
    for (name, a), b in zip(resumed.named_parameters(), compiled.parameters()):
        assert torch.equal(a, b), name


def test_a_score_function_guide_is_refused_by_name_where_the_step_is_compiled():
    vae = VAE(2, (8,))

    def discrete_guide(x):
        logits = pyro.param("logits", torch.zeros(2))
        with pyro.plate("data", len(x)):
            pyro.sample("z", pyro.distributions.Bernoulli(logits=logits.expand(len(x), 2)).to_event(1))

    vae.guide = discrete_guide  # trace takes it eagerly, with Pyro's score-function surrogate
    x = torch.rand(4, 784).bernoulli()
    elbo = pyro_vae.make_elbo("trace", 2)
    assert torch.isfinite(elbo.differentiable_loss(vae.model, vae.guide, x))
    with pytest.raises(ValueError, match="guide site 'z' is not reparameterized: its score-function surrogate"):
        CompiledLoss(vae, elbo, backend=None)(x)


def test_every_registered_estimator_is_traced_above():
    from pyro_vae.objectives import OBJECTIVES

    assert {name for name, *_ in ESTIMATORS} == set(OBJECTIVES)
