"""Which epoch is best (best.pt) and when to stop early: the --select-by metric and its patience."""

from __future__ import annotations

import math
from pathlib import Path

from .config import TrainConfig


class Selection:
    """The best value of `cfg.select_by` so far and the epochs since it last improved."""

    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg
        self.best = {"value": -math.inf if cfg.maximise else math.inf, "epoch": -1}
        self.bad_epochs = 0

    def judge(self, record: dict, epoch: int) -> bool:
        """Count epoch `record`; True when it improves on the best by more than min_delta.
        eval/ metrics exist only on the epochs they are measured: other epochs do not count."""
        cfg = self.cfg
        if cfg.select_by not in record:
            return False
        value, best = record[cfg.select_by], self.best["value"]
        improved = value > best + cfg.min_delta if cfg.maximise else value < best - cfg.min_delta
        if improved:
            self.best, self.bad_epochs = {"value": value, "epoch": epoch}, 0
        else:
            self.bad_epochs += 1
        return improved

    def early_stop(self, epoch: int, save_dir: Path) -> str | None:
        """The log line when early stopping fires after `epoch`, else None."""
        cfg = self.cfg
        if not (cfg.early_stop_patience and self.bad_epochs >= cfg.early_stop_patience):
            return None
        return (f"early stopping at epoch {epoch}: {cfg.select_by} has not improved by more than "
                f"{cfg.min_delta:g} for {self.bad_epochs} epochs (patience {cfg.early_stop_patience}); "
                f"best {self.best['value']:.5g} at epoch {self.best['epoch']}, weights in {save_dir / 'best.pt'}")

    def state_dict(self) -> dict:
        return {"best": dict(self.best), "bad_epochs": self.bad_epochs}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.bad_epochs = dict(state["best"]), state["bad_epochs"]
