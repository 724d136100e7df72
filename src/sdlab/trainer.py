"""One training loop for every model: fit, evaluate, early stopping, checkpoints, TensorBoard.

The model side supplies a loss function

    loss_fn(model, images, labels, generator=..., step=...) -> {"loss": scalar, "<term>": scalar}

that draws its random numbers (noise, timesteps, label dropout) from `generator`, a
`randomness.NoiseSource`. In training it draws from the trainer's noise generator (saved in
checkpoints) and `step` is the optimizer step (for warm-ups); in validation from a freshly
seeded generator with `step` None, so every epoch's validation loss sees the same noise and
timesteps and epochs compare. The trainer logs every term, train and val.

On several processes (`distributed.Dist`, started by torchrun) the model is wrapped in
DistributedDataParallel, each process takes its rows of every global batch, the logged terms
and validation losses are means over all processes, and only rank 0 writes files.

Checkpoints (`last.pt` each epoch and every `save_every_steps` steps, `best.pt` on improvement)
hold everything needed to continue exactly: model, EMA, optimizer, LR schedule (with its
length), grad scaler, epoch, batch within the epoch, step, best metric, early-stopping counter,
RNG states, the run config, the metric history and any frozen parts the run depends on (the
VAE of a latent run). Nothing is lost: a checkpoint is written only when the loss, the
validation terms and the weights are finite; a signal, even during validation, stops with
`last.pt` written; a save dir that holds another run's checkpoints is never silently reused.
"""

from __future__ import annotations

import json
import math
import signal
import threading
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from tqdm.auto import tqdm

from .checkpoint import (CheckpointError, checkpoint_kind, load_checkpoint, remove_stale_temporaries,
                         save_checkpoint)
from .config import ConfigError, option, require, require_choice, require_finite
from .data import BatchLoader
from .distributed import Dist
from .ema import EMA
from .errors import UserError, first_line
from .outputs import lock_dir, unlock_dir, writable_dir
from .randomness import NoiseSource
from .runtime import DEVICE_HELP, PRECISIONS, autocast, check_device_name, fused_optimizer, memory_format

OPTIMIZERS = ("adam", "adamw")
SCHEDULERS = ("none", "step", "cosine", "plateau")

LossFn = Callable[..., dict]


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
    precision: str = option("fp32", "autocast precision (fp16 needs CUDA)", choices=PRECISIONS)
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


CHECKPOINTS = ("last.pt", "best.pt")


class TrainingStopped(UserError):
    """Training ended early and abnormally (signal or non-finite values); the message says why.
    All processes of a job stop together (the decision is agreed), so only rank 0 reports it."""

    agreed = True

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


def prepare_run_dir(cfg: TrainConfig) -> Path | None:
    """Check the save and log dirs before any work; returns the checkpoint to resume from.

    Both folders must be writable, and the save dir is locked for this process (`lock_dir`: a
    second run into it is refused). Leftover temporaries of a killed checkpoint write are
    removed. Without `resume`, a save dir that already holds checkpoints is refused unless
    `overwrite` is set, which deletes them (and history.json) so nothing of the old run mixes
    with the new one. Raises UserError naming the flag and the fix.
    """
    save_dir = writable_dir(cfg.save_dir, "--save-dir")
    writable_dir(cfg.logs, "--log-dir")
    lock_dir(save_dir, "--save-dir")
    remove_stale_temporaries(save_dir)
    if cfg.resume:
        path = save_dir / "last.pt" if cfg.resume == "last" else Path(cfg.resume)
        if not path.is_file():
            raise CheckpointError(f"--resume: no checkpoint at {path}; drop --resume to start a new run")
        return path
    found = [name for name in CHECKPOINTS if (save_dir / name).exists()]
    if found and not cfg.overwrite:
        raise UserError(f"--save-dir {save_dir} already holds {' and '.join(found)} of an earlier run: "
                        "add --resume to continue it, or --overwrite to start again (deletes them)")
    for name in (*found, "history.json"):
        (save_dir / name).unlink(missing_ok=True)
    return None


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


class Trainer:
    """Fits `model` with `loss_fn` on `train`, validating on `val` after every epoch.

    Args:
        model: the network, already on `device`.
        loss_fn: see the module docstring.
        train, val: batch loaders (val without shuffling or flips).
        cfg: TrainConfig.
        run_config: the whole resolved config (plain dict), stored in every checkpoint so that
            commands can rebuild the model from the file alone.
        epoch_hook: called as epoch_hook(trainer) after each epoch's checkpoint is written
            (TensorBoard images, sample grids).
        epoch_metrics: called as epoch_metrics(trainer) after validation, before best.pt is
            chosen, by rank 0; returns {"eval/<name>": value} (empty on epochs it skips), logged
            like the validation terms and usable as --select-by.
        frozen: tensors the run depends on but does not train (e.g. {"vae": {...}} for latent
            diffusion), stored as they are in every checkpoint.
        dist: this process's place in a torchrun job (the loaders must be sharded to match);
            the default is one process.
    """

    def __init__(self, model: nn.Module, loss_fn: LossFn, train: BatchLoader, val: BatchLoader,
                 cfg: TrainConfig, *, run_config: dict, device: torch.device,
                 epoch_hook: Callable[["Trainer"], None] | None = None, frozen: dict | None = None,
                 dist: Dist = Dist(), epoch_metrics: Callable[["Trainer"], dict] | None = None):
        self.model, self.loss_fn, self.train_loader, self.val_loader = model, loss_fn, train, val
        self.memory_format = memory_format(device, train.images.shape[-1])
        model.to(memory_format=self.memory_format)
        self.cfg, self.run_config, self.device, self.epoch_hook = cfg, run_config, device, epoch_hook
        self.frozen, self.dist, self.epoch_metrics = frozen or {}, dist, epoch_metrics
        if cfg.select_by.startswith("eval/") and epoch_metrics is None:
            raise ConfigError("select_by", f"{cfg.select_by} is measured only with --eval-every N")
        self.net = dist.wrap(model, device)       # what training calls: DDP averages the gradients
        self.noise = torch.Generator(device).manual_seed(cfg.seed)   # the loss's draws, same on every rank
        if dist.world > 1:                        # dropout: a stream of each process's own
            torch.manual_seed(cfg.seed + 1_000_003 * (dist.rank + 1))
        self.save_dir = Path(cfg.save_dir)
        opt = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
        self.optimizer = opt(model.parameters(), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2),
                             weight_decay=cfg.weight_decay, fused=fused_optimizer(model))
        self.steps_per_epoch = math.ceil(len(train) / cfg.grad_accum)
        total = cfg.epochs * self.steps_per_epoch
        self.total_steps = min(total, cfg.max_steps) if cfg.max_steps else total
        self.schedule = LRSchedule(cfg, self.steps_per_epoch, self.total_steps)
        self.scaler = torch.amp.GradScaler(device.type, enabled=cfg.precision == "fp16")
        self.ema = EMA(model, cfg.ema_decay) if cfg.ema_decay > 0 else None
        self.epoch = 0          # completed epochs
        self.batch = 0          # batches done within the current epoch (non-zero after a signal)
        self.step = 0           # optimizer steps
        self.best = {"value": -math.inf if cfg.maximise else math.inf, "epoch": -1}
        self.bad_epochs = 0
        self.history: list[dict] = []
        self.partial: dict[str, float] = {}   # running sums of this epoch's train terms
        self.writer = None
        self._signal: int | None = None           # a signal this process received
        self._stop_signal: int | None = None      # one that some process received (agreed by all)
        self._time_up = False                     # --max-minutes used up on some process (agreed)
        self._deadline = math.inf
        self._saved: tuple[int, int, int] | None = None   # (epoch, batch, step) held by last.pt

    @property
    def eval_model(self) -> nn.Module:
        """The weights used for validation, sampling and evaluation (EMA when enabled)."""
        return self.ema.model if self.ema is not None else self.model

    # ------------------------------------------------------------ checkpoints

    def state_dict(self) -> dict:
        """The training state; with several processes every one must call it (it gathers each
        process's RNG state: rank 0's is "rng", all of them "rank_rng")."""
        rng = {"cpu": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        ranks = self.dist.gather(rng)
        rng = dict(rng, noise=self.noise.get_state())
        return {
            "model": self.model.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "optimizer": self.optimizer.state_dict(),
            "lr_schedule": self.schedule.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": self.epoch, "batch": self.batch, "step": self.step,
            "best": dict(self.best), "bad_epochs": self.bad_epochs,
            "partial": dict(self.partial), "rng": rng,
            "config": self.run_config, "history": list(self.history), "frozen": self.frozen,
            "global_batch": self.train_loader.global_batch,
            **({"rank_rng": ranks} if self.dist.world > 1 else {}),
        }

    def load_state_dict(self, state: dict) -> list[str]:
        """Restore a `state_dict`; returns notes for the log (an LR schedule length kept or changed)."""
        self.model.load_state_dict(state["model"])
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"] if state["ema"] is not None else state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        notes, planned = [], self.schedule.total_steps
        self.schedule.load_state_dict(state["lr_schedule"])
        stored = self.schedule.total_steps
        if self.cfg.scheduler == "cosine" and stored != planned:
            if self.cfg.reset_schedule:
                self.schedule.total_steps = planned
                notes.append(f"cosine LR schedule: length changed from {stored} to {planned} steps "
                             "(--reset-schedule); the learning rate jumps to the new curve")
            else:
                notes.append(f"cosine LR schedule: kept the stored length of {stored} steps (these "
                             f"flags give {planned}; add --reset-schedule to use that)")
        self.scaler.load_state_dict(state["scaler"])
        self.epoch, self.batch, self.step = state["epoch"], state["batch"], state["step"]
        self.best, self.bad_epochs = dict(state["best"]), state["bad_epochs"]
        self.partial, self.history = dict(state["partial"]), list(state["history"])
        notes += self._restore_rng(state)
        stored = state.get("global_batch", self.train_loader.global_batch)
        if stored != self.train_loader.global_batch and self.batch:
            done = self.batch * stored
            self.batch = done // self.train_loader.global_batch
            notes.append(f"global batch changed from {stored} to {self.train_loader.global_batch} images: "
                         f"epoch {self.epoch + 1} continues at batch {self.batch} (it had seen {done} images)")
        self._saved = (self.epoch, self.batch, self.step)
        return notes

    def _restore_rng(self, state: dict) -> list[str]:
        """Set this process's RNG states from `state`; returns a note when they cannot be restored."""
        rng, notes = state["rng"], []
        ranks = state.get("rank_rng")
        if self.dist.world > 1:
            if ranks is not None and len(ranks) == self.dist.world:
                rng = dict(rng, **ranks[self.dist.rank])
            else:   # a checkpoint of another world size: the dropout streams start afresh
                rng = {"cpu": torch.manual_seed(self.cfg.seed + 1_000_003 * (self.dist.rank + 1) + self.step).get_state()}
                notes.append(f"written by {len(ranks) if ranks else 1} process(es), resumed on {self.dist.world}: "
                             "the loss's noise continues exactly, each process's dropout stream starts afresh")
        torch.set_rng_state(rng["cpu"].cpu())      # RNG states are CPU byte tensors
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state_all([s.cpu() for s in rng["cuda"]])
        if "noise" in rng:
            self.noise.set_state(rng["noise"].cpu())
        else:                       # written before the loss had its own generator
            self.noise.manual_seed(self.cfg.seed + self.step)
        return notes

    def _resume(self, path: Path, state: dict | None = None) -> None:
        """Continue from checkpoint `path` (`state`: its contents when the caller has read them);
        CheckpointError when it is not a checkpoint of this run's kind."""
        if state is None:
            state = load_checkpoint(path, "cpu")     # load_state_dict moves each part where it belongs
        found, expected = checkpoint_kind(state), self.run_config.get("kind")
        if found != expected:
            raise CheckpointError(f"--resume {path}: a {found} checkpoint cannot resume a {expected} "
                                  "run; pass the last.pt of this command's earlier run")
        try:
            notes = self.load_state_dict(state)
        except (KeyError, RuntimeError, ValueError, TypeError) as err:
            raise CheckpointError(f"--resume {path}: it does not hold this run's training state "
                                  f"({first_line(err)}); pass the last.pt of the same command") from None
        self.log(f"resumed from {path} at epoch {self.epoch}, step {self.step}")
        for note in notes:
            self.log(note)

    def _write_checkpoints(self, best: bool = False) -> None:
        """Write best.pt (when `best`) and then last.pt, after checking that the weights are finite.

        best.pt goes first: a kill between the two leaves last.pt one epoch behind, and the
        resumed run redoes that epoch and writes best.pt again.
        """
        for name, module in (("model", self.model), ("EMA", self.ema.model if self.ema else None)):
            if module is not None and not all(torch.isfinite(p).all() for p in module.parameters()):
                self._stop_non_finite(f"{name} weights after step {self.step}")
        state = self.state_dict()
        self.dist.on_main(lambda: self._save(state, best))
        self._saved = (self.epoch, self.batch, self.step)

    def _save(self, state: dict, best: bool) -> None:
        for path in ([self.save_dir / "best.pt"] if best else []) + [self.save_dir / "last.pt"]:
            existed = path.exists()
            try:
                save_checkpoint(state, path)
            except OSError as err:
                kept = f"the previous {path.name} is intact" if existed else "nothing was written"
                again = "with --resume" if (self.save_dir / "last.pt").exists() else "with --overwrite"
                raise UserError(f"cannot write {path} ({err.strerror or err}); {kept}. Free disk space "
                                f"or fix the folder, then run the command again {again}") from None

    def _stop_non_finite(self, what: str) -> None:
        if self._saved is not None:
            epoch, batch, step = self._saved
            kept = (f"{self.save_dir / 'last.pt'} still holds the last good checkpoint (epoch {epoch}"
                    f"{f', batch {batch}' if batch else ''}, step {step})")
        else:
            kept = "no checkpoint was written yet"
        raise TrainingStopped(f"non-finite {what}; stopped. {kept}. "
                              "Try a lower --lr, --grad-clip 1, or --precision fp32.", exit_code=1)

    # ------------------------------------------------------------ logging

    def log(self, message: str) -> None:
        """Print `message` and append it to LOG_DIR/train.log (rank 0 only)."""
        if not self.dist.is_main:
            return
        tqdm.write(message)
        self.cfg.logs.mkdir(parents=True, exist_ok=True)
        with open(self.cfg.logs / "train.log", "a") as f:
            f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}\n")

    # ------------------------------------------------------------ loop

    def fit(self, resume_state: dict | None = None) -> list[dict]:
        """Train until epochs, max_steps or early stopping. Returns the metric history.

        With cfg.resume, training continues from that checkpoint; a caller that has already read
        it (to rebuild the model from its config) passes it as `resume_state`, so it is read once.

        Raises TrainingStopped on SIGINT/SIGTERM (after writing last.pt) and on a non-finite
        loss (leaving the last good checkpoint untouched).
        """
        from torch.utils.tensorboard import SummaryWriter

        cfg, dist = self.cfg, self.dist
        resume = dist.on_main(lambda: prepare_run_dir(cfg))    # locks the save dir until fit returns
        previous = {}
        try:
            if resume is not None:
                self._resume(resume, resume_state)
            if dist.is_main:
                self.writer = SummaryWriter(str(cfg.logs))
            if dist.world > 1:
                self.log(f"data parallel: {dist.world} processes x batch {self.train_loader.batch_size} = "
                         f"{self.train_loader.global_batch} images per step")
            self._deadline = time.monotonic() + 60 * cfg.max_minutes if cfg.max_minutes else math.inf
            previous = self._install_signal_handlers()
            with torch.autograd.set_detect_anomaly(cfg.debug):
                while self.epoch < cfg.epochs and not self._out_of_steps():
                    if self._train_epoch():
                        break
        finally:
            self._restore_signal_handlers(previous)
            if self.writer is not None:
                self.writer.close()
            if dist.is_main:
                unlock_dir(self.save_dir)
        return self.history

    def _out_of_steps(self) -> bool:
        """True once --max-steps or --max-minutes is used up (the epoch then ends as usual)."""
        return (bool(self.cfg.max_steps) and self.step >= self.cfg.max_steps) or self._time_up

    def _agree(self, terms: dict | None = None, count: int = 0) -> dict[str, float]:
        """Agree with the other processes (one all-reduce): returns each term's mean over the
        global batch (`count` images here), and sets `_stop_signal` and `_time_up` when any
        process received a signal or reached --max-minutes. A non-finite term anywhere makes the
        mean non-finite everywhere, so all processes stop on it together."""
        names = list(terms or {})
        flags = torch.tensor([count, self._signal == signal.SIGINT, self._signal == signal.SIGTERM,
                              time.monotonic() >= self._deadline], dtype=torch.float64, device=self.device)
        if names:
            sums = torch.stack([terms[k].detach().double() for k in names]) * count
            flags = torch.cat([sums, flags])
        *sums, total, sigint, sigterm, late = self.dist.sum(flags).tolist()
        self._stop_signal = signal.SIGINT if sigint else signal.SIGTERM if sigterm else None
        self._time_up = late > 0
        return {k: v / total for k, v in zip(names, sums)}

    def _train_epoch(self) -> bool:
        """One epoch (or its remainder after a resume). Returns True when early stopping fires."""
        cfg, loader = self.cfg, self.train_loader
        self.model.train()
        n_batches = len(loader)
        bar = tqdm(total=n_batches, initial=self.batch, desc=f"epoch {self.epoch + 1}/{cfg.epochs}",
                   leave=False, dynamic_ncols=True, disable=not self.dist.is_main)
        window: dict[str, float] = {}
        start, seen = time.perf_counter(), 0
        for images, labels in loader.epoch(self.epoch, self.batch):
            images = images.contiguous(memory_format=self.memory_format)
            stepping = (self.batch + 1) % cfg.grad_accum == 0 or self.batch + 1 == n_batches
            first, count = loader.rows(self.batch)        # count: images in the global batch
            noise = NoiseSource(self.noise, first, count)
            # DDP averages gradients in backward; accumulation batches skip that until the step
            with nullcontext() if stepping or self.dist.world == 1 else self.net.no_sync():
                with autocast(self.device, cfg.precision):
                    terms = self.loss_fn(self.net, images, labels, generator=noise, step=self.step)
                values = self._agree(terms, images.shape[0])
                self._check_finite(values)
                self.scaler.scale(terms["loss"] / cfg.grad_accum).backward()
            self.batch += 1
            seen += count
            for k, v in values.items():
                self.partial[k] = self.partial.get(k, 0.0) + v * count
                window[k] = window.get(k, 0.0) + v
            self.partial["_count"] = self.partial.get("_count", 0.0) + count
            window["_count"] = window.get("_count", 0.0) + 1
            bar.update(1)
            bar.set_postfix(loss=f"{values['loss']:.4g}")
            if not stepping:
                continue
            self._optimizer_step()
            if self.step % cfg.log_every == 0:
                window = self._log_window(window)
            if cfg.save_every_steps and self.step % cfg.save_every_steps == 0 and self.batch < n_batches:
                self._write_checkpoints()
            if self._stop_signal is not None:
                bar.close()
                self._stop_for_signal()
            if self._out_of_steps():
                break
        bar.close()
        self._log_window(window)
        return self._end_epoch(seen / (time.perf_counter() - start))

    def _log_window(self, window: dict) -> dict:
        """Write the mean of each train term since the last write; returns an empty window."""
        if window and self.writer is not None:
            for k, v in window.items():
                if k != "_count":
                    self.writer.add_scalar(f"train/{k}", v / window["_count"], self.step)
            self.writer.add_scalar("lr", self.optimizer.param_groups[0]["lr"], self.step)
        return {}

    def _optimizer_step(self) -> None:
        cfg = self.cfg
        lr = cfg.lr * self.schedule.factor(self.step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        if cfg.grad_clip:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        if self.ema is not None:
            self.ema.update(self.model, self.step)

    def _check_finite(self, values: dict[str, float]) -> None:
        for name, value in values.items():
            if not math.isfinite(value):
                self._stop_non_finite(f"loss at step {self.step + 1} (epoch {self.epoch + 1}): term "
                                      f"'{name}' = {value}")

    def _end_epoch(self, images_per_second: float) -> bool:
        cfg = self.cfg
        count = self.partial.pop("_count", 1.0)
        record = {"epoch": self.epoch + 1, "step": self.step,
                  "lr": self.optimizer.param_groups[0]["lr"]}
        record.update({f"train/{k}": v / count for k, v in self.partial.items()})
        val = self.evaluate(stop_on_signal=True)
        bad = sorted(k for k, v in val.items() if not math.isfinite(v))
        if bad:
            self._stop_non_finite(f"validation loss after epoch {self.epoch + 1} (step {self.step}): "
                                  f"{', '.join(f'{k} = {val[k]}' for k in bad)}")
        record.update({f"val/{k}": v for k, v in val.items()})
        if self.epoch_metrics is not None:
            record.update(self.dist.on_main(lambda: self.epoch_metrics(self)))
        for k, v in record.items():
            if self.writer is not None and k.startswith(("val/", "eval/")):
                self.writer.add_scalar(k, v, self.step)
        self.history.append(record)
        self.epoch += 1
        self.batch, self.partial = 0, {}
        self.schedule.epoch_end(val["loss"])

        improved = False
        if cfg.select_by in record:         # eval/ metrics exist only on the epochs they are measured
            value, best = record[cfg.select_by], self.best["value"]
            improved = value > best + cfg.min_delta if cfg.maximise else value < best - cfg.min_delta
            if improved:
                self.best, self.bad_epochs = {"value": value, "epoch": self.epoch}, 0
            else:
                self.bad_epochs += 1
        self._write_checkpoints(best=improved)
        if self.dist.is_main:
            (self.save_dir / "history.json").write_text(json.dumps(self.history, indent=1))
        terms = "  ".join(f"{k} {v:.4g}" for k, v in record.items() if "/" in k)
        self.log(f"epoch {self.epoch}/{cfg.epochs} step {self.step}  {terms}"
                 f"  {images_per_second:.0f} img/s{'  (best)' if improved else ''}")
        self._agree()
        if self._stop_signal is not None:   # arrived during validation's last batch: skip the hook
            self._stop_for_signal()
        if self.epoch_hook is not None and self.dist.is_main:
            self.epoch_hook(self)
            self.writer.flush()
        self._agree()
        if self._stop_signal is not None:   # arrived during the hook (sample grids take a while)
            self._stop_for_signal()
        if cfg.early_stop_patience and self.bad_epochs >= cfg.early_stop_patience:
            self.log(f"early stopping at epoch {self.epoch}: {cfg.select_by} has not improved by more than "
                     f"{cfg.min_delta:g} for {self.bad_epochs} epochs (patience "
                     f"{cfg.early_stop_patience}); best {self.best['value']:.5g} at epoch "
                     f"{self.best['epoch']}, weights in {self.save_dir / 'best.pt'}")
            return True
        return False

    @torch.no_grad()
    def evaluate(self, model: nn.Module | None = None, stop_on_signal: bool = False) -> dict[str, float]:
        """Mean of each loss term over the validation loader, with fixed-seed randomness.

        With `stop_on_signal` (inside `fit`) a SIGINT/SIGTERM stops between batches: last.pt
        then holds the finished epoch's training state and a resumed run validates it again.
        """
        model = model if model is not None else self.eval_model
        was_training = model.training
        model.eval()
        generator = torch.Generator(self.device).manual_seed(self.cfg.seed + 7919)
        sums: dict[str, float] = {}
        count, terms = 0, {}
        for batch, (images, labels) in enumerate(self.val_loader.epoch(0)):
            first, total = self.val_loader.rows(batch)     # total: images in the global batch
            if images.shape[0]:       # a process's share of the last batch may be empty
                with autocast(self.device, self.cfg.precision):
                    terms = self.loss_fn(model, images, labels, generator=NoiseSource(generator, first, total),
                                         step=None)
            values = self._agree(terms, images.shape[0])
            for k, v in values.items():
                sums[k] = sums.get(k, 0.0) + v * total
            count += total
            if stop_on_signal and self._stop_signal is not None:
                self._stop_for_signal()
        model.train(was_training)
        return {k: v / count for k, v in sums.items()}

    # ------------------------------------------------------------ signals

    def _install_signal_handlers(self) -> dict:
        if threading.current_thread() is not threading.main_thread():
            return {}

        def request_stop(signum, _frame):
            self._signal = signum

        return {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}

    @staticmethod
    def _restore_signal_handlers(previous: dict) -> None:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

    def request_stop(self, signum: int = signal.SIGINT) -> None:
        """Stop after the current step as if `signum` had arrived (what the handlers call)."""
        self._signal = signum

    def _stop_for_signal(self) -> None:
        path = self.save_dir / "last.pt"
        if self._saved != (self.epoch, self.batch, self.step):
            self._write_checkpoints()
        name = signal.Signals(self._stop_signal).name
        self.log(f"{name}: stopped at epoch {self.epoch + 1}, batch {self.batch}, step {self.step}; "
                 f"saved {path}. Resume with the same command plus --resume")
        raise TrainingStopped(f"interrupted by {name}; resume with --resume", exit_code=130)
