"""Trained checkpoints read back: a file of the kind a command needs (else one line naming the
script that trains it), its EMA weights when it has them, and the VAE a latent diffusion
checkpoint carries (config, weights and their SHA-256, checked on load). The files themselves
are written and read by `checkpoint`; the models rebuilt from them live in `pipeline` (diffusion)
and the recipes (VAE, classifier).
"""

from __future__ import annotations

import torch

from .checkpoint import CheckpointError, checkpoint_kind, load_checkpoint, state_digest
from .config import from_stored
from .errors import first_line
from .vae import VAE, VAEConfig

KINDS = {"vae": ("VAE", "train_vae.py"), "diffusion": ("diffusion", "train_diffusion.py"),
         "classifier": ("classifier", "sdlab-train-classifier")}


def load_trained(path: str, device: torch.device, kind: str) -> dict:
    """A checkpoint of `kind` (a key of KINDS), read once; CheckpointError naming the script if not."""
    state = load_checkpoint(path, device)
    found = checkpoint_kind(state)
    if found != kind:
        name, script = KINDS[kind]
        raise CheckpointError(f"{path} is not a {name} checkpoint (kind {found!r}); train one with {script}")
    return state


def trained_weights(state: dict) -> dict:
    """The EMA weights when the checkpoint has them, else the raw model weights."""
    return state["ema"] if state.get("ema") is not None else state["model"]


def load_weights(model: torch.nn.Module, weights: dict, path: str) -> None:
    """`model.load_state_dict(weights)`, with CheckpointError naming `path` when they do not fit."""
    try:
        model.load_state_dict(weights)
    except (RuntimeError, KeyError, TypeError) as err:
        raise CheckpointError(f"{path}: its weights do not fit the model its config describes "
                              f"({first_line(err)}); the file is damaged or was edited") from None


def autoencoder_weights(state: dict) -> dict:
    """The VAE weights of a train_vae.py checkpoint (EMA when present): the whole model of an
    ELBO run; the "vae." part of a run with Stable Diffusion's loss, whose model also holds the
    discriminator and the log-scale (`autoencoder_loss.AutoencoderTraining`, recognised by its
    top-level "logvar")."""
    weights = trained_weights(state)
    if "logvar" not in weights:
        return weights
    return {k.removeprefix("vae."): v for k, v in weights.items() if k.startswith("vae.")}


def carried_vae(state: dict) -> dict:
    """What a latent diffusion checkpoint stores of the VAE in train_vae.py checkpoint `state`:
    config, weights and their SHA-256."""
    weights = autoencoder_weights(state)
    return {"config": state["config"]["vae"], "weights": weights, "sha256": state_digest(weights)}


def stored_vae(state: dict, path: str) -> dict | None:
    """The VAE diffusion checkpoint `state` carries (`carried_vae`'s dict), its weights checked
    against their SHA-256; None when it carries none (pixel models, older checkpoints)."""
    carried = (state.get("frozen") or {}).get("vae")
    if carried is not None and state_digest(carried["weights"]) != carried["sha256"]:
        raise CheckpointError(f"{path}: the VAE weights it carries do not match their SHA-256; "
                              "the file is damaged or was edited")
    return carried


def build_vae(carried: dict, device: torch.device, path: str) -> VAE:
    """A frozen VAE from a dict with its "config" and "weights" (`path` names where they came
    from, for errors)."""
    vae = VAE(from_stored(VAEConfig, carried["config"]))
    load_weights(vae, carried["weights"], path)
    return vae.to(device).eval().requires_grad_(False)


def load_vae(path: str, device: torch.device) -> tuple[VAE, dict]:
    """(frozen VAE with EMA weights if present, the whole checkpoint) from a train_vae.py file."""
    state = load_trained(path, device, "vae")
    parts = {"config": state["config"]["vae"], "weights": autoencoder_weights(state)}
    return build_vae(parts, device, path), state
