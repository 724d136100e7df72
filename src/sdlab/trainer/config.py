"""The training options of every command (TrainConfig), shared by the trainer and the CLIs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..config import option, require, require_choice, require_finite
from ..runtime import DEVICE_HELP, PRECISIONS, check_device_name

OPTIMIZERS = ("adam", "adamw")
SCHEDULERS = ("none", "step", "cosine", "plateau")


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = option(10, "passes over the training set")
    max_steps: int = option(0, "stop after this many optimizer steps (0: no limit)")
    max_minutes: float = option(0.0, "stop after this many minutes of wall time in fit (0: no limit)")
    lr: float = option(2e-4, "peak learning rate")
    optimizer: str = option("adamw", "optimizer", choices=OPTIMIZERS)
    beta1: float = option(0.9, "Adam beta1")
    beta2: float = option(0.999, "Adam beta2")
    weight_decay: float = option(0.0, "weight decay (decoupled for adamw)")
    scheduler: str = option("none", "learning-rate schedule after warm-up", choices=SCHEDULERS)
    step_size: int = option(10, "step: epochs between LR drops; plateau: epochs without improvement")
    gamma: float = option(0.5, "LR factor applied by the step and plateau schedules")
    warmup_steps: int = option(0, "linear LR warm-up over this many optimizer steps")
    grad_clip: float = option(1.0, "clip the gradient norm to this value (0 disables)")
    grad_accum: int = option(1, "accumulate gradients over this many batches per step")
    ema_decay: float = option(0.0, "EMA decay of the weights used for validation (0 disables)")
    precision: str = option("auto", "autocast precision: auto (bf16 where the hardware runs it natively, else "
                                    "fp32), fp32, bf16, fp16 (CUDA)", choices=PRECISIONS)
    device: str = option("auto", DEVICE_HELP)
    seed: int = option(0, "seed of weights, batches and noise")
    early_stop_patience: int = option(0, "stop after this many epochs without improvement (0 disables)")
    min_delta: float = option(0.0, "smallest change of the --select-by metric that counts as improvement")
    select_by: str = option("val/loss", "metric that picks best.pt and drives early stopping: val/<term>, or "
                                        "eval/<metric> with --eval-every; *accuracy is maximised, the rest minimised")
    save_dir: str = option("outputs", "checkpoints, history and figures go here")
    log_dir: str = option("", "TensorBoard events and train.log (default: SAVE_DIR/logs)")
    log_every: int = option(20, "log train/<term> to TensorBoard every this many steps")
    resume: str = option("", "continue from a checkpoint (no value: SAVE_DIR/last.pt)",
                         nargs="?", const="last")
    overwrite: bool = option(False, "start again in a save dir that holds an earlier run's checkpoints "
                                    "(deletes its last.pt, best.pt and history.json)")
    reset_schedule: bool = option(False, "with --resume: fit the cosine LR schedule to this command's "
                                         "--epochs/--max-steps instead of keeping the stored length")
    save_every_steps: int = option(0, "also write last.pt every this many optimizer steps (0: at epoch ends only)")
    visualize: bool = option(False, "write figures (PNG) into the save dir after training")
    debug: bool = option(False, "autograd anomaly detection (slow)")

    def __post_init__(self):
        require_finite(self)
        for name in ("epochs", "grad_accum", "log_every", "step_size"):
            require(getattr(self, name) >= 1, name, f"must be >= 1 (got {getattr(self, name)})")
        for name in ("max_steps", "max_minutes", "early_stop_patience", "warmup_steps", "grad_clip",
                     "min_delta", "weight_decay", "save_every_steps"):
            require(getattr(self, name) >= 0, name, f"must be >= 0 (got {getattr(self, name)})")
        require(self.lr > 0, "lr", f"must be > 0 (got {self.lr})")
        require(0 <= self.ema_decay < 1, "ema_decay", f"must be in [0, 1) (got {self.ema_decay})")
        require(0 < self.gamma <= 1, "gamma", f"must be in (0, 1] (got {self.gamma})")
        for name in ("beta1", "beta2"):
            require(0 <= getattr(self, name) < 1, name, f"must be in [0, 1) (got {getattr(self, name)})")
        require_choice(self.optimizer, OPTIMIZERS, "optimizer")
        require_choice(self.scheduler, SCHEDULERS, "scheduler")
        require_choice(self.precision, PRECISIONS, "precision")
        check_device_name(self.device)
        require(not (self.resume and self.overwrite), "overwrite", "cannot be combined with --resume")
        require(self.select_by.startswith(("val/", "eval/")), "select_by",
                f"must name a val/<term> or eval/<metric> (got {self.select_by!r})")

    @property
    def maximise(self) -> bool:
        """Whether the --select-by metric improves upwards (accuracies)."""
        return self.select_by.endswith("accuracy")

    @property
    def logs(self) -> Path:
        return Path(self.log_dir or Path(self.save_dir) / "logs")
