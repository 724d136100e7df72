"""Training recipes as Python functions: what the commands run, callable from a script or notebook.

    train_vae(VAERun(...))              the VAE (recipes/vae.py)
    train_diffusion(DiffusionRun(...))  pixel or latent DDPM, unconditional or class-conditional
                                        with classifier-free guidance (recipes/diffusion.py)

Each run dataclass holds the config sections written into config.json and every checkpoint;
each recipe checks its output folder first, resumes when `train.resume` is set, trains, writes
figures with `train.visualize`, and returns `Trained` (the trainer, and a sampling pipeline for
diffusion). The `cli` modules only turn flags into these dataclasses.
"""

from .diffusion import DiffusionRun, train_diffusion
from .run import Trained
from .vae import VAERun, train_vae

__all__ = ["DiffusionRun", "Trained", "VAERun", "train_diffusion", "train_vae"]
