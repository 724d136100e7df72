"""The optimizers of a run. One Update is one optimizer: the parameters it owns, the loss it
descends, its learning rate and Adam betas, and the step it starts at.

Most runs have one Update owning the whole model. Stable Diffusion's autoencoder has two (LDM,
arXiv:2112.10752, appendix; CompVis `contperceptual.py`): the autoencoder and a PatchGAN
discriminator, updated alternately on every batch, each with its own Adam moments, LR schedule
and grad scaler. While an update's loss runs forward and backward, the parameters of every
other update are switched to requires_grad=False (Lightning's `toggle_optimizer`), so its
gradients never land in another update's parameters and gradient accumulation stays per update.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from ..config import ConfigError
from ..runtime import fused_optimizer
from .config import TrainConfig
from .schedule import LRSchedule

LossFn = Callable[..., dict]


@dataclass(frozen=True)
class Update:
    """One optimizer of a run.

    Args:
        loss_fn: loss_fn(model, images, labels, generator=..., step=...) -> {"loss": scalar, ...};
            `model` is always the whole model (the trainer's first argument), so a loss can use
            parts it does not train (the generator's loss runs the discriminator).
        module: the part of the model this optimizer steps (None: the whole model).
        name: prefixes its terms in logs and history ("disc" -> train/disc_loss); the first
            update's terms are logged unprefixed.
        lr, betas: override TrainConfig's lr and (beta1, beta2) for this optimizer.
        starts_at: optimizer step before which this update neither runs nor steps.
    """

    loss_fn: LossFn
    module: nn.Module | None = None
    name: str = "model"
    lr: float | None = None
    betas: tuple[float, float] | None = None
    starts_at: int = 0


class Optimizer:
    """An Update's live state: the torch optimizer, its LR schedule and its grad scaler."""

    def __init__(self, update: Update, model: nn.Module, cfg: TrainConfig, steps_per_epoch: int,
                 total_steps: int, device: torch.device):
        self.update, self.cfg = update, cfg
        module = update.module if update.module is not None else model
        self.params = list(module.parameters())
        self.base_lr = update.lr if update.lr is not None else cfg.lr
        betas = update.betas if update.betas is not None else (cfg.beta1, cfg.beta2)
        opt = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
        self.optimizer = opt(self.params, lr=self.base_lr, betas=betas, weight_decay=cfg.weight_decay,
                             fused=fused_optimizer(module))
        self.schedule = LRSchedule(cfg, steps_per_epoch, total_steps)
        self.scaler = torch.amp.GradScaler(device.type, enabled=cfg.precision == "fp16")

    @property
    def name(self) -> str:
        return self.update.name

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def active(self, step: int) -> bool:
        return step >= self.update.starts_at

    def backward(self, loss: torch.Tensor, grad_accum: int) -> None:
        self.scaler.scale(loss / grad_accum).backward()

    def step(self, step: int, average=None) -> None:
        """Set the scheduled LR, (average the gradients over processes,) clip, step, zero grads."""
        lr = self.base_lr * self.schedule.factor(step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        if average is not None:
            average([p.grad for p in self.params if p.grad is not None])
        if self.cfg.grad_clip:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.params, self.cfg.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)

    def state_dict(self) -> dict:
        return {"optimizer": self.optimizer.state_dict(), "lr_schedule": self.schedule.state_dict(),
                "scaler": self.scaler.state_dict()}

    def load_state_dict(self, state: dict, reset_schedule: bool) -> list[str]:
        """Restore; returns notes for the log (a cosine schedule length kept or changed)."""
        self.optimizer.load_state_dict(state["optimizer"])
        notes, planned = [], self.schedule.total_steps
        self.schedule.load_state_dict(state["lr_schedule"])
        stored = self.schedule.total_steps
        if self.cfg.scheduler == "cosine" and stored != planned:
            if reset_schedule:
                self.schedule.total_steps = planned
                notes.append(f"cosine LR schedule: length changed from {stored} to {planned} steps "
                             "(--reset-schedule); the learning rate jumps to the new curve")
            else:
                notes.append(f"cosine LR schedule: kept the stored length of {stored} steps (these "
                             f"flags give {planned}; add --reset-schedule to use that)")
        self.scaler.load_state_dict(state["scaler"])
        return notes


def check_updates(updates: list[Update], model: nn.Module) -> None:
    """Names unique, the first update running from step 0, and no parameter owned twice."""
    names = [u.name for u in updates]
    if len(set(names)) != len(names):
        raise ConfigError("updates", f"names must differ (got {names})")
    if updates[0].starts_at != 0:
        raise ConfigError("updates", f"the first update ({names[0]}) must start at step 0")
    owned: set[int] = set()
    for u in updates:
        ids = {id(p) for p in (u.module if u.module is not None else model).parameters()}
        if ids & owned:
            raise ConfigError("updates", f"update {u.name!r} shares parameters with an earlier update")
        owned |= ids
