"""The probabilistic program: Kingma & Welling's VAE as a Pyro model and guide.

    p(z)    = N(z; 0, I)                              z in R^J
    p(x|z)  = prod_d Bernoulli(x_d; sigmoid(f(z)_d))   f: tanh MLP decoder (logits)
    q(z|x)  = N(z; mu(x), diag(sigma(x)^2))            mu, log sigma^2: tanh MLP encoder

Seed architecture: 784-500-J with one tanh hidden layer on each side. For grey-level targets
(x in [0, 1]) the Bernoulli "log-likelihood" is the negative binary cross-entropy the seed uses:
a training signal, not a normalised density, so log p(x) figures are only densities on binary data.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro.distributions.util import broadcast_shape
from torch import nn

NUM_PIXELS = 784


class BernoulliPixels(dist.Independent):
    """``Bernoulli(logits=logits).to_event(1)`` whose log-density sums the pixels' cross-entropies
    before negating them: the same value, without a negation over every pixel forward and backward
    (17% of a vectorized L = 10 step on the CPU, docs/benchmarks.md)."""

    def __init__(self, logits: torch.Tensor, validate_args: bool | None = None):
        super().__init__(dist.Bernoulli(logits=logits, validate_args=validate_args), 1,
                         validate_args=validate_args)

    def expand(self, batch_shape, _instance=None) -> "BernoulliPixels":
        logits = self.base_dist.logits.expand(torch.Size(batch_shape) + self.event_shape)
        return BernoulliPixels(logits, validate_args=self._validate_args)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if self._validate_args:
            self._validate_sample(value)
        logits = self.base_dist.logits
        shape = broadcast_shape(logits.shape, value.shape)
        cross_entropy = F.binary_cross_entropy_with_logits(logits.expand(shape), value.expand(shape),
                                                           reduction="none")
        return -cross_entropy.sum(-1)


def tanh_mlp(sizes: Sequence[int]) -> nn.Sequential:
    """Linear layers of the given sizes, each followed by tanh."""
    layers: list[nn.Module] = []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(fan_in, fan_out), nn.Tanh()]
    return nn.Sequential(*layers)


class Encoder(nn.Module):
    """x -> (loc, scale) of q(z|x); scale = exp(log-variance / 2)."""

    def __init__(self, latent_dim: int, hidden_dims: Sequence[int], input_dim: int = NUM_PIXELS):
        super().__init__()
        self.hidden = tanh_mlp([input_dim, *hidden_dims])
        self.loc = nn.Linear(hidden_dims[-1], latent_dim)
        self.log_variance = nn.Linear(hidden_dims[-1], latent_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.hidden(x)
        return self.loc(h), torch.exp(0.5 * self.log_variance(h))


class Decoder(nn.Module):
    """z -> Bernoulli logits of the 784 pixels."""

    def __init__(self, latent_dim: int, hidden_dims: Sequence[int], output_dim: int = NUM_PIXELS):
        super().__init__()
        self.hidden = tanh_mlp([latent_dim, *hidden_dims])
        self.logits = nn.Linear(hidden_dims[-1], output_dim)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.logits(self.hidden(z))


class VAE(nn.Module):
    """Model p(x, z) and guide q(z|x) as two methods, as in Pyro's examples/vae.

    ``hidden_dims`` lists the encoder's hidden layers; the decoder mirrors them.
    ``binary_data=False`` lets the likelihood score grey levels (the seed's cross-entropy).

    :param int latent_dim: J, the size of z.
    :param hidden_dims: the encoder's tanh hidden layers (784-500-J by default, Kingma & Welling's).
    :param bool binary_data: a Bernoulli likelihood of binary pixels; False scores grey levels
        by the same cross-entropy (not a normalized density).

    Reference: D. P. Kingma, M. Welling, Auto-Encoding Variational Bayes, ICLR 2014
    (arXiv:1312.6114), appendix C.
    """

    def __init__(self, latent_dim: int = 20, hidden_dims: Sequence[int] = (500,), binary_data: bool = False):
        super().__init__()
        self.latent_dim = latent_dim
        self.hidden_dims = tuple(hidden_dims)
        self.binary_data = binary_data
        self.encoder = Encoder(latent_dim, self.hidden_dims)
        self.decoder = Decoder(latent_dim, self.hidden_dims[::-1])

    def model(self, x: torch.Tensor) -> None:
        pyro.module("decoder", self.decoder)
        # device=: the plate's index tensor is made where the data is, with no device probe
        with pyro.plate("data", x.shape[0], device=x.device):
            prior = dist.Normal(x.new_zeros(self.latent_dim), x.new_ones(self.latent_dim))
            z = pyro.sample("z", prior.to_event(1))
            pyro.sample("x", BernoulliPixels(self.decoder(z), validate_args=self._validate_obs), obs=x)

    def guide(self, x: torch.Tensor) -> None:
        pyro.module("encoder", self.encoder)
        with pyro.plate("data", x.shape[0], device=x.device):
            loc, scale = self.encoder(x)
            pyro.sample("z", dist.Normal(loc, scale).to_event(1))

    @property
    def _validate_obs(self) -> bool | None:
        # grey-level targets are outside Bernoulli's support: skip the check only for them
        return None if self.binary_data else False

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Pixel means p(x=1|z) at z = the encoder's mean."""
        return torch.sigmoid(self.decoder(self.encoder(x)[0]))

    @torch.no_grad()
    def sample_images(self, num: int) -> torch.Tensor:
        """Pixel means p(x=1|z) for z drawn from the prior."""
        device = next(self.parameters()).device
        return torch.sigmoid(self.decoder(torch.randn(num, self.latent_dim, device=device)))


class TwoLayerVAE(nn.Module):
    """Burda et al.'s (2016) VAE with two stochastic layers, a second Pyro program with two
    latent sites:

        p(z2) = N(0, I_50)       p(z1|z2) = N(mu(z2), sigma(z2))   z2 -> 100 -> 100 tanh -> z1 (100)
        p(x|z1) = Bernoulli(sigmoid(f(z1)))                          z1 -> 200 -> 200 tanh -> 784
        q(z1|x) = N(mu(x), sigma(x))       x -> 200 -> 200 tanh -> z1
        q(z2|z1) = N(mu(z1), sigma(z1))    z1 -> 100 -> 100 tanh -> z2

    :param bool binary_data: a Bernoulli likelihood of binary pixels (their benchmark's).

    Reference: Y. Burda, R. Grosse, R. Salakhutdinov, Importance Weighted Autoencoders, ICLR 2016
    (arXiv:1509.00519), appendix C.
    """

    latent_dims = (100, 50)

    def __init__(self, binary_data: bool = True):
        super().__init__()
        self.binary_data = binary_data
        self.latent_dim = self.latent_dims[-1]  # the top layer, the one the prior is on
        self.encoder = nn.ModuleDict({"z1": Encoder(100, (200, 200)), "z2": Encoder(50, (100, 100), input_dim=100)})
        self.decoder = nn.ModuleDict({"z1": Encoder(100, (100, 100), input_dim=50), "x": Decoder(100, (200, 200))})

    def model(self, x: torch.Tensor) -> None:
        pyro.module("decoder", self.decoder)
        with pyro.plate("data", x.shape[0], device=x.device):
            z2 = pyro.sample("z2", dist.Normal(x.new_zeros(50), x.new_ones(50)).to_event(1))
            z1 = pyro.sample("z1", dist.Normal(*self.decoder["z1"](z2)).to_event(1))
            validate = None if self.binary_data else False
            pyro.sample("x", BernoulliPixels(self.decoder["x"](z1), validate_args=validate), obs=x)

    def guide(self, x: torch.Tensor) -> None:
        pyro.module("encoder", self.encoder)
        with pyro.plate("data", x.shape[0], device=x.device):
            z1 = pyro.sample("z1", dist.Normal(*self.encoder["z1"](x)).to_event(1))
            pyro.sample("z2", dist.Normal(*self.encoder["z2"](z1)).to_event(1))

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Pixel means p(x=1|z1) at z1 = the encoder's mean."""
        return torch.sigmoid(self.decoder["x"](self.encoder["z1"](x)[0]))

    @torch.no_grad()
    def sample_images(self, num: int) -> torch.Tensor:
        """Pixel means p(x=1|z1) for z2 from the prior and z1 at its conditional mean."""
        device = next(self.parameters()).device
        z1 = self.decoder["z1"](torch.randn(num, self.latent_dim, device=device))[0]
        return torch.sigmoid(self.decoder["x"](z1))


@dataclass(frozen=True)
class ModelRecord:
    """A net that ``--model`` (and a run's config) names.

    :param build: the module from a run's config (``latent_dim``, ``hidden_dims``, ``binarize``).
    :param sizes: the (latent_dim, hidden_dims) the net fixes, or None where the flags set them.
    :param describe: a run's net in a few words, for figure titles, from its config.
    :param run_prefix: what the benchmark recipe puts before a run's name.
    """

    name: str
    build: Callable[[dict], nn.Module]
    help: str
    describe: Callable[[dict], str]
    sizes: tuple[int, tuple[int, ...]] | None = None
    run_prefix: str = ""


MODELS: dict[str, ModelRecord] = {}


def register_model(record: ModelRecord) -> None:
    """Make a net available to ``--model`` and to :func:`build_model`."""
    if record.name in MODELS:
        raise ValueError(f"model {record.name!r} is already registered")
    MODELS[record.name] = record


def build_model(config: dict) -> nn.Module:
    """The module a run's config names (runs written before ``--model`` existed are the seed's VAE)."""
    name = config.get("model", "vae")
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; registered: {', '.join(MODELS)}")
    return MODELS[name].build(config)


register_model(ModelRecord(
    "vae", lambda c: VAE(c["latent_dim"], c["hidden_dims"], binary_data=c["binarize"] != "none"),
    "the seed's VAE, sized by --latent-dim and --hidden-dims",
    lambda c: f"J={c['latent_dim']}, hidden {list(c['hidden_dims'])}"))
register_model(ModelRecord(
    "burda2", lambda c: TwoLayerVAE(binary_data=c["binarize"] != "none"),
    "Burda et al.'s two stochastic layers, 784-200-200-100-100-50",
    lambda c: "Burda et al.'s two stochastic layers",
    sizes=(TwoLayerVAE.latent_dims[-1], (200, 200)), run_prefix="burda2-"))
