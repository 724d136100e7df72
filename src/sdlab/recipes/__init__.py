"""Training recipes as Python functions: what the commands run, callable from a script or notebook.

    train_vae(VAERun(...))              the VAE (recipes/vae.py)
    train_diffusion(DiffusionRun(...))  pixel or latent DDPM, unconditional or class-conditional
                                        with classifier-free guidance (recipes/diffusion.py)
    train_classifier(ClassifierRun(...)) the classifier of the offline quality metric
                                        (recipes/classifier.py)

Each run dataclass holds the config sections written into config.json and every checkpoint;
each recipe checks its output folder first, resumes when `train.resume` is set, trains, writes
figures with `train.visualize`, and returns `Trained` (the trainer, and a sampling pipeline for
diffusion). The `cli` modules only turn flags into these dataclasses.
"""

from .classifier import ClassifierRun, load_classifier, train_classifier
from .diffusion import DiffusionRun, train_diffusion
from .run import Trained
from .vae import VAERun, train_vae

__all__ = ["ClassifierRun", "DiffusionRun", "Trained", "VAERun", "load_classifier", "train_classifier",
           "train_diffusion", "train_vae"]
