"""The learning-rate factor of each optimizer step: linear warm-up, then step, cosine or plateau."""

from __future__ import annotations

import math

from .config import TrainConfig


class LRSchedule:
    """Learning-rate factor per optimizer step: linear warm-up, then step, cosine or plateau.

    `total_steps` is the cosine schedule's length; checkpoints store it, so a resumed run keeps
    the curve it started on even when its --epochs or --max-steps differ.
    """

    def __init__(self, cfg: TrainConfig, steps_per_epoch: int, total_steps: int):
        self.cfg, self.steps_per_epoch, self.total_steps = cfg, steps_per_epoch, max(total_steps, 1)
        self.plateau = {"scale": 1.0, "best": math.inf, "bad": 0}

    def factor(self, step: int) -> float:
        cfg = self.cfg
        warm = min(1.0, (step + 1) / cfg.warmup_steps) if cfg.warmup_steps else 1.0
        if cfg.scheduler == "step":
            return warm * cfg.gamma ** (step // self.steps_per_epoch // cfg.step_size)
        if cfg.scheduler == "cosine":
            progress = min(max(step - cfg.warmup_steps, 0) / max(self.total_steps - cfg.warmup_steps, 1), 1.0)
            return warm * 0.5 * (1 + math.cos(math.pi * progress))
        if cfg.scheduler == "plateau":
            return warm * self.plateau["scale"]
        return warm

    def epoch_end(self, val_loss: float) -> None:
        p = self.plateau
        if val_loss < p["best"] - self.cfg.min_delta:
            p["best"], p["bad"] = val_loss, 0
        else:
            p["bad"] += 1
            if p["bad"] >= self.cfg.step_size:
                p["scale"], p["bad"] = p["scale"] * self.cfg.gamma, 0

    def state_dict(self) -> dict:
        return {"plateau": dict(self.plateau), "total_steps": self.total_steps}

    def load_state_dict(self, state: dict) -> None:
        """Restore the plateau state and the stored length (`total_steps`)."""
        if "plateau" not in state:     # written before the length was stored
            state = {"plateau": state, "total_steps": self.total_steps}
        self.plateau = dict(state["plateau"])
        self.total_steps = state["total_steps"]
