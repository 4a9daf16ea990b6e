"""pyro_vae.fit on a module written here, outside the package: it trains, and a fit stopped and
resumed from its Checkpoint ends exactly where an uninterrupted one does."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch import nn

import pyro_vae


class TinyVAE(nn.Module):
    """A user's own program: Bernoulli pixels from a 2-D latent, linear nets."""

    def __init__(self):
        super().__init__()
        self.decoder, self.encoder = nn.Linear(2, 16), nn.Linear(16, 4)

    def model(self, x):
        pyro.module("decoder", self.decoder)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(2), 1.0).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=self.decoder(z)).to_event(1), obs=x)

    def guide(self, x):
        pyro.module("encoder", self.encoder)
        with pyro.plate("data", x.shape[0]):
            loc, log_scale = self.encoder(x).chunk(2, -1)
            pyro.sample("z", dist.Normal(loc, log_scale.exp()).to_event(1))


def data() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    prototypes = (torch.rand(3, 16, generator=g) > 0.5).float()
    return torch.bernoulli(0.1 + 0.8 * prototypes[torch.randint(0, 3, (240,), generator=g)], generator=g)


def fresh():
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    module = TinyVAE()
    return module, torch.optim.Adam(module.parameters(), lr=1e-2)


def test_fit_trains_a_users_module_with_any_registered_estimator():
    for name, particles in (("trace", 1), ("dreg", 4)):
        module, optimizer = fresh()
        state = pyro_vae.fit(module, data(), pyro_vae.make_elbo(name, particles), epochs=8, batch_size=24,
                             optimizer=optimizer)
        elbos = [row["train_elbo"] for row in state.history]
        assert len(elbos) == 8 and elbos[-1] > elbos[0] + 1.0, (name, elbos)
        assert state.epoch == 8


class StopAfter(pyro_vae.Callback):
    """Ends a fit after some epochs, as a kill would (the checkpoint of the last one is kept)."""

    def __init__(self, epochs: int):
        self.epochs = epochs

    def on_epoch_end(self, state, row):
        state.stop = state.epoch + 1 >= self.epochs


def test_a_resumed_fit_equals_an_uninterrupted_one_exactly(tmp_path):
    elbo = pyro_vae.make_elbo("iwae", 3, vectorize=True)
    module, optimizer = fresh()
    whole = pyro_vae.fit(module, data(), elbo, epochs=6, batch_size=24, optimizer=optimizer, seed=1)
    path = tmp_path / "checkpoint.pt"
    module, optimizer = fresh()
    pyro_vae.fit(module, data(), elbo, epochs=6, batch_size=24, optimizer=optimizer, seed=1,
                 callbacks=[pyro_vae.Checkpoint(path), StopAfter(2)])
    pyro.set_rng_seed(123)  # whatever ran in between: the checkpoint's RNG states are restored
    module, optimizer = fresh()
    resumed = pyro_vae.fit(module, data(), elbo, epochs=6, batch_size=24, optimizer=optimizer, seed=1,
                           callbacks=[pyro_vae.Checkpoint(path, resume=True)])

    def without_time(history):
        return [{k: v for k, v in row.items() if k != "epoch_seconds"} for row in history]

    assert without_time(resumed.history) == without_time(whole.history)
    for a, b in zip(module.parameters(), whole.module.parameters()):
        assert torch.equal(a, b)


def test_bad_arguments_are_python_errors():
    module, _ = fresh()
    with pytest.raises(ValueError, match="positive"):
        pyro_vae.fit(module, data(), pyro_vae.make_elbo("trace"), epochs=0, batch_size=10)
    with pytest.raises(ValueError, match="larger than the 240 items"):
        pyro_vae.fit(module, data(), pyro_vae.make_elbo("trace"), epochs=1, batch_size=500)


def test_an_elbo_with_only_loss_and_grads_trains_as_svi_does():
    """Pyro's TraceGraph_ELBO has no differentiable_loss: fit drives its loss_and_grads, and one
    step moves the parameters exactly as SVI.step with the same optimizer does."""
    from pyro_vae.data import epoch_permutation

    x = data()[:32]
    initial = torch.cat([p.detach().flatten() for p in fresh()[0].parameters()])
    moved = []
    for use_fit in (True, False):
        vae, _ = fresh()
        pyro.set_rng_seed(3)
        if use_fit:
            state = pyro_vae.fit(vae, x, pyro.infer.TraceGraph_ELBO(), epochs=1, batch_size=32,
                                 optimizer=torch.optim.SGD(vae.parameters(), lr=0.05))
            assert state.history[0]["train_elbo"] < 0
        else:
            svi = pyro.infer.SVI(vae.model, vae.guide, pyro.optim.SGD({"lr": 0.05}), pyro.infer.TraceGraph_ELBO())
            svi.step(x[epoch_permutation(32, 0, 0)])  # the items in the order fit's epoch 0 takes them
        moved.append(torch.cat([p.detach().flatten() for p in vae.parameters()]))
    assert not torch.allclose(moved[0], initial)
    assert torch.allclose(moved[0], moved[1], atol=1e-6), (moved[0] - moved[1]).abs().max()


@pytest.mark.parametrize("sync_every", [1, 3])
def test_the_loss_watch_stops_on_the_first_non_finite_loss_whenever_it_reads(sync_every):
    from pyro_vae.fit import FitState, TrainingFailed
    from pyro_vae.trainer import LossWatch

    vae = TinyVAE()
    state = FitState(vae, torch.optim.SGD(vae.parameters(), lr=0.1), epochs=1, num_batches=7, batch_size=4)
    state.losses = torch.tensor([1.0, 2.0, 3.0, 4.0, float("nan"), 6.0, 7.0])
    watch = LossWatch(sync_every, progress=False)
    watch.on_epoch_start(state)
    reads = []
    with pytest.raises(TrainingFailed, match="step 5"):
        for state.step in range(7):
            before = watch.checked
            watch.on_step_end(state)
            reads.append(watch.checked != before)
    # with sync_every 3 the losses are read at steps 3 and 6 only: the NaN of step 5 is found at 6
    assert state.step == (4 if sync_every == 1 else 5)
    assert reads == ([True] * 4 if sync_every == 1 else [False, False, True, False, False])


def test_a_time_budget_stops_mid_epoch_and_counts_the_epochs_before_a_resume(monkeypatch):
    """TimeBudget on a fake clock: each step takes 1 s; a budget of 5.5 s closes the first epoch
    (10 steps of 24 items) after its sixth step; a resumed run's earlier epochs count against it."""
    import sys

    from pyro_vae.trainer import TimeBudget

    fit_module = sys.modules["pyro_vae.fit"]
    clock = {"now": 0.0}
    monkeypatch.setattr(fit_module.time, "perf_counter", lambda: clock["now"])

    class Tick(pyro_vae.Callback):
        def on_step_end(self, state):
            clock["now"] += 1.0

    module, optimizer = fresh()
    # Tick first: the budget then sees the step's second
    state = pyro_vae.fit(module, data(), pyro_vae.make_elbo("trace"), epochs=3, batch_size=24, optimizer=optimizer,
                         callbacks=[Tick(), TimeBudget(5.5)])
    assert [row["images_seen"] for row in state.history] == [6 * 24]
    budget = TimeBudget(6.0)
    budget.spent = 0.0
    state.history = [{"epoch_seconds": 4.0}]  # as a resumed run's history
    budget.on_fit_start(state)
    assert budget.spent == 4.0
    state.stop = False
    budget.on_epoch_start(state)
    assert not state.stop
    budget.on_epoch_end(state, {"epoch_seconds": 2.0})
    budget.on_epoch_start(state)
    assert state.stop  # 4 + 2 s spent: no further epoch starts
