"""pyro_vae: Kingma & Welling's variational auto-encoder as a Pyro program."""

from .model import VAE
from .runs import load_run

__all__ = ["VAE", "load_run"]
__version__ = "0.1.0"
