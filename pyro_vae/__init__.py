"""pyro_vae: Kingma & Welling's variational auto-encoder as a Pyro program, and the tools to
compare ELBO estimators and score log p(x) on any Pyro model and guide."""

from .ais import AISResult, BDMCResult, ais_log_likelihood, bdmc
from .fit import Callback, Checkpoint, FitState, fit
from .marginal import LogLikelihood, estimate_log_likelihood
from .model import VAE, TwoLayerVAE
from .objectives import make_elbo, register_objective
from .runs import load_run

__all__ = ["AISResult", "BDMCResult", "ais_log_likelihood", "bdmc",
           "VAE", "TwoLayerVAE", "Callback", "Checkpoint", "FitState", "fit", "LogLikelihood",
           "estimate_log_likelihood", "load_run", "make_elbo", "register_objective"]
__version__ = "0.1.0"
