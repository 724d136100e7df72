"""The training loop: each batch runs every active update's loss forward and backward and steps
its optimizer; each epoch ends with validation, selection, checkpoints and the epoch hook.

The parts it is made of live beside it: `updates` (the optimizers), `stops` (signals, time
limit, agreement of processes), `selection` (best.pt, early stopping), `runlog` (console,
train.log, TensorBoard, history.json) and `checkpoints` (the run folder, files, RNG states).
"""

from __future__ import annotations

import dataclasses
import datetime
import math
import signal
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from ..checkpoint import CheckpointError, checkpoint_kind, load_checkpoint
from ..config import ConfigError
from ..data import BatchLoader
from ..distributed import Dist
from ..ema import EMA
from ..errors import first_line
from ..outputs import unlock_dir
from ..randomness import NoiseSource
from ..runtime import autocast, memory_format, resolve_precision
from .checkpoints import dropout_seed, prepare_run_dir, restore_rng, rng_state, write_checkpoints
from .config import TrainConfig
from .runlog import Means, RunLog
from .selection import Selection
from .stops import StopAgreement, TrainingStopped
from .updates import LossFn, Optimizer, Update, check_updates


class Trainer:
    """Fits `model` on `train`, validating on `val` after every epoch.

    Args:
        model: the network, already on `device` (with several updates: everything they train).
        loss: one loss function (one optimizer over the whole model), or a list of `Update`s,
            run in order on every batch, each stepping its own optimizer (see `updates`).
        train, val: batch loaders (val without shuffling or flips).
        cfg: TrainConfig.
        run_config: the whole resolved config (plain dict), stored in every checkpoint so that
            commands can rebuild the model from the file alone.
        epoch_hook: called as epoch_hook(trainer) after each epoch's checkpoint is written
            (TensorBoard images, sample grids); it and epoch_metrics run under the autocast of
            cfg.precision, as training does.
        epoch_metrics: called as epoch_metrics(trainer) after validation, before best.pt is
            chosen, by rank 0; returns {"eval/<name>": value} (empty on epochs it skips), logged
            like the validation terms and usable as --select-by.
        frozen: tensors the run depends on but does not train (e.g. {"vae": {...}} for latent
            diffusion), stored as they are in every checkpoint.
        dist: this process's place in a torchrun job (the loaders must be sharded to match);
            the default is one process.
    """

    def __init__(self, model: nn.Module, loss: LossFn | Sequence[Update], train: BatchLoader, val: BatchLoader,
                 cfg: TrainConfig, *, run_config: dict, device: torch.device,
                 epoch_hook: Callable[["Trainer"], None] | None = None, frozen: dict | None = None,
                 dist: Dist = Dist(), epoch_metrics: Callable[["Trainer"], dict] | None = None):
        updates = [Update(loss)] if callable(loss) else list(loss)
        check_updates(updates, model)
        self.model, self.train_loader, self.val_loader = model, train, val
        self.memory_format = memory_format(device, train.images.shape[-1])
        model.to(memory_format=self.memory_format)
        cfg = dataclasses.replace(cfg, precision=resolve_precision(device, cfg.precision))   # once, not per step
        self.cfg, self.run_config, self.device, self.epoch_hook = cfg, run_config, device, epoch_hook
        self.frozen, self.dist, self.epoch_metrics = frozen or {}, dist, epoch_metrics
        if cfg.select_by.startswith("eval/") and epoch_metrics is None:
            raise ConfigError("select_by", f"{cfg.select_by} is measured only with --eval-every N")
        self.steps_per_epoch = math.ceil(len(train) / cfg.grad_accum)
        total = cfg.epochs * self.steps_per_epoch
        self.total_steps = min(total, cfg.max_steps) if cfg.max_steps else total
        self._timing: tuple[int, float | None] = (0, None)     # `_estimate`'s window
        self.optimizers = [Optimizer(u, model, cfg, self.steps_per_epoch, self.total_steps, device)
                           for u in updates]
        owned = {id(p) for opt in self.optimizers for p in opt.params}
        for p in model.parameters():           # parameters no update owns are not trained
            if id(p) not in owned:
                p.requires_grad_(False)
        # One update of the whole model trains through DistributedDataParallel (gradients averaged
        # during backward); otherwise each optimizer averages its own gradients before it steps.
        self.ddp = dist.world > 1 and len(updates) == 1 and updates[0].module is None
        self.net = dist.wrap(model, device) if self.ddp else model    # what training calls
        self.noise = torch.Generator(device).manual_seed(cfg.seed)   # the loss's draws, same on every rank
        if dist.world > 1:                        # dropout: a stream of each process's own
            torch.manual_seed(dropout_seed(cfg.seed, dist.rank))
        self.save_dir = Path(cfg.save_dir)
        self.ema = EMA(model, cfg.ema_decay) if cfg.ema_decay > 0 else None
        self.epoch = 0          # completed epochs
        self.batch = 0          # batches done within the current epoch (non-zero after a signal)
        self.step = 0           # optimizer steps
        self.selection = Selection(cfg)
        self.history: list[dict] = []
        self.partial = Means()  # this epoch's train terms so far
        self.runlog = RunLog(cfg.logs, dist)
        self.stops = StopAgreement(dist, device)
        self._saved: tuple[int, int, int] | None = None   # (epoch, batch, step) held by last.pt

    @property
    def eval_model(self) -> nn.Module:
        """The weights used for validation, sampling and evaluation (EMA when enabled)."""
        return self.ema.model if self.ema is not None else self.model

    @property
    def schedule(self):
        """The first update's LR schedule."""
        return self.optimizers[0].schedule

    @property
    def best(self) -> dict:
        """{"value": the best --select-by value so far, "epoch": the epoch that reached it}."""
        return self.selection.best

    @property
    def writer(self):
        """The TensorBoard SummaryWriter (rank 0, inside `fit`; else None)."""
        return self.runlog.writer

    def log(self, message: str) -> None:
        """Print `message` and append it to LOG_DIR/train.log (rank 0 only)."""
        self.runlog.message(message)

    def request_stop(self, signum: int = signal.SIGINT) -> None:
        """Stop after the current step as if `signum` had arrived (what the signal handlers do)."""
        self.stops.request(signum)

    # ------------------------------------------------------------ loop

    def fit(self, resume_state: dict | None = None) -> list[dict]:
        """Train until epochs, max_steps or early stopping. Returns the metric history.

        With cfg.resume, training continues from that checkpoint; a caller that has already read
        it (to rebuild the model from its config) passes it as `resume_state`, so it is read once.

        Raises TrainingStopped on SIGINT/SIGTERM (after writing last.pt) and on a non-finite
        loss (leaving the last good checkpoint untouched).
        """
        cfg, dist = self.cfg, self.dist
        resume = dist.on_main(lambda: prepare_run_dir(cfg))    # locks the save dir until fit returns
        try:
            if resume is not None:
                self._resume(resume, resume_state)
            self._check_select_by()
            with self.runlog.open(), self.stops.handling_signals(cfg.max_minutes), \
                    torch.autograd.set_detect_anomaly(cfg.debug):
                if dist.world > 1:
                    self.log(f"data parallel: {dist.world} processes x batch {self.train_loader.batch_size} = "
                             f"{self.train_loader.global_batch} images per step")
                self.log(self._plan())
                self._timing = (self.step, None)
                while self.epoch < cfg.epochs and not self._out_of_steps():
                    if self._train_epoch():
                        break
        finally:
            if dist.is_main:
                unlock_dir(self.save_dir)
        return self.history

    @torch.no_grad()
    def _check_select_by(self) -> None:
        """Refuse a --select-by val/<term> that this run's losses never report (best.pt would
        never be written): the term names come from one validation batch, with its own seed.
        val/loss, the default, is every first update's."""
        cfg = self.cfg
        if cfg.select_by == "val/loss" or not cfg.select_by.startswith("val/") or not len(self.val_loader):
            return
        images, labels = next(iter(self.val_loader.epoch(0)))
        if not images.shape[0]:           # this process's share of a tiny split
            return
        was_training = self.model.training
        self.model.eval()
        noise = NoiseSource(torch.Generator(self.device).manual_seed(cfg.seed + 7919), 0, images.shape[0])
        names = set()
        for opt in self.optimizers:
            with autocast(self.device, cfg.precision):
                terms = opt.update.loss_fn(self.model, images, labels, generator=noise, step=None)
            names |= {f"val/{k}" for k in self._named(opt, terms)}
        self.model.train(was_training)
        if cfg.select_by not in names:
            raise ConfigError("select_by", f"{cfg.select_by} is not reported by this run's validation; "
                                           f"choose one of {', '.join(sorted(names))}")

    def _plan(self) -> str:
        """What fit is about to do: steps left, global batch, precision, device, limits."""
        cfg, left = self.cfg, self.total_steps - self.step
        limits = [f"--max-minutes {cfg.max_minutes:g}"] if cfg.max_minutes else []
        return (f"plan: {left} optimizer steps ({cfg.epochs} epochs x {self.steps_per_epoch} steps"
                f"{', cut by --max-steps' if self.total_steps < cfg.epochs * self.steps_per_epoch else ''}"
                f"{', from step ' + str(self.step) if self.step else ''}), {self.train_loader.global_batch} images "
                f"per step, precision {cfg.precision}, device {self.device}"
                + (f", stopping after {limits[0]}" if limits else ""))

    ESTIMATE_AFTER = (5, 25)       # steps after fit starts: the timed window (the first steps warm up)

    def _estimate(self) -> None:
        """Once, after the timed window: the whole run's training time at the measured pace."""
        begin, started = self._timing          # the step fit started at; when the timed window began
        done = self.step - begin
        if done == self.ESTIMATE_AFTER[0]:
            self._timing = (begin, time.perf_counter())
        elif done == self.ESTIMATE_AFTER[1] and started is not None:
            per_step = (time.perf_counter() - started) / (self.ESTIMATE_AFTER[1] - self.ESTIMATE_AFTER[0])
            left = self.total_steps - self.step
            self.log(f"estimate: {per_step:.3g} s per step, {left} steps left: about "
                     f"{datetime.timedelta(seconds=round(per_step * left))} of training (validation and figures "
                     f"not counted{'; --max-minutes may stop it first' if self.cfg.max_minutes else ''})")

    def _out_of_steps(self) -> bool:
        """True once --max-steps or --max-minutes is used up (the epoch then ends as usual)."""
        return (bool(self.cfg.max_steps) and self.step >= self.cfg.max_steps) or self.stops.time_up

    def _train_epoch(self) -> bool:
        """One epoch (or its remainder after a resume). Returns True when early stopping fires."""
        cfg, loader = self.cfg, self.train_loader
        self.model.train()
        n_batches = len(loader)
        bar = tqdm(total=n_batches, initial=self.batch, desc=f"epoch {self.epoch + 1}/{cfg.epochs}",
                   leave=False, dynamic_ncols=True, disable=not self.dist.is_main)
        window, start, seen = Means(), time.perf_counter(), 0
        for images, labels in loader.epoch(self.epoch, self.batch):
            images = images.contiguous(memory_format=self.memory_format)
            stepping = (self.batch + 1) % cfg.grad_accum == 0 or self.batch + 1 == n_batches
            first, count = loader.rows(self.batch)        # count: images in the global batch
            noise = NoiseSource(self.noise, first, count)
            values = {}
            for opt in self.optimizers:
                if opt.active(self.step):
                    values.update(self._update(opt, images, labels, noise, stepping))
            self.batch += 1
            seen += count
            self.partial.add(values, count)
            window.add(values, 1)
            bar.update(1)
            bar.set_postfix(loss=f"{values['loss']:.4g}")
            if not stepping:
                continue
            self._optimizer_step()
            self._estimate()
            if self.step % cfg.log_every == 0:
                window = self._log_window(window)
            if cfg.save_every_steps and self.step % cfg.save_every_steps == 0 and self.batch < n_batches:
                self._write_checkpoints()
            if self.stops.signal is not None:
                bar.close()
                self._stop_for_signal()
            if self._out_of_steps():
                break
        bar.close()
        self._log_window(window)
        return self._end_epoch(seen / (time.perf_counter() - start))

    def _update(self, opt: Optimizer, images, labels, noise: NoiseSource, stepping: bool) -> dict[str, float]:
        """`opt`'s loss forward and backward on this batch, and its optimizer step once the
        accumulated gradients are complete. Returns its terms, averaged over all processes."""
        # DDP averages gradients in backward; accumulation batches skip that until the step
        sync = stepping or not self.ddp
        with self._trains_only(opt), nullcontext() if sync else self.net.no_sync():
            with autocast(self.device, self.cfg.precision):
                terms = opt.update.loss_fn(self.net, images, labels, generator=noise, step=self.step)
            values = self._named(opt, self.stops.agree(terms, images.shape[0]))
            self._check_finite(values)
            opt.backward(terms["loss"], self.cfg.grad_accum)
        if stepping:
            opt.step(self.step, average=self._average if self.dist.world > 1 and not self.ddp else None)
        return values

    def _optimizer_step(self) -> None:
        """Count the step the active updates have just taken; move the EMA weights."""
        self.step += 1
        if self.ema is not None:
            self.ema.update(self.model, self.step)

    @contextmanager
    def _trains_only(self, opt: Optimizer):
        """Switch off the gradients of the other updates' parameters while `opt`'s loss runs."""
        others = [p for o in self.optimizers if o is not opt for p in o.params if p.requires_grad]
        for p in others:
            p.requires_grad_(False)
        try:
            yield
        finally:
            for p in others:
                p.requires_grad_(True)

    def _average(self, grads: list[torch.Tensor]) -> None:
        """Average gradients over the processes in place (what DDP does for a single update)."""
        if grads:
            flat = self.dist.sum(torch.cat([g.reshape(-1) for g in grads])) / self.dist.world
            for g, mean in zip(grads, flat.split([g.numel() for g in grads])):
                g.copy_(mean.view_as(g))

    def _named(self, opt: Optimizer, values: dict[str, float]) -> dict[str, float]:
        """Terms of every update but the first carry its name: {"loss"} of "disc" -> {"disc_loss"}."""
        return values if opt is self.optimizers[0] else {f"{opt.name}_{k}": v for k, v in values.items()}

    def _log_window(self, window: Means) -> Means:
        """Write the mean of each train term since the last write; returns an empty window."""
        if window:
            self.runlog.scalars({f"train/{k}": v for k, v in window.means().items()}, self.step)
            self.runlog.scalars(self._lrs(), self.step)
        return Means()

    def _lrs(self) -> dict[str, float]:
        return {"lr" if i == 0 else f"lr_{o.name}": o.lr for i, o in enumerate(self.optimizers)}

    def _check_finite(self, values: dict[str, float]) -> None:
        for name, value in values.items():
            if not math.isfinite(value):
                self._stop_non_finite(f"loss at step {self.step + 1} (epoch {self.epoch + 1}): term "
                                      f"'{name}' = {value}")

    def _end_epoch(self, images_per_second: float) -> bool:
        """Validate, select, checkpoint, log and run the hook. True when early stopping fires."""
        cfg = self.cfg
        record = {"epoch": self.epoch + 1, "step": self.step, **self._lrs()}
        record.update({f"train/{k}": v for k, v in self.partial.means().items()})
        val = self.evaluate(stop_on_signal=True)
        bad = sorted(k for k, v in val.items() if not math.isfinite(v))
        if bad:
            self._stop_non_finite(f"validation loss after epoch {self.epoch + 1} (step {self.step}): "
                                  f"{', '.join(f'{k} = {val[k]}' for k in bad)}")
        record.update({f"val/{k}": v for k, v in val.items()})
        if self.epoch_metrics is not None:       # scored at the precision the run trains at
            with autocast(self.device, self.cfg.precision):
                record.update(self.dist.on_main(lambda: self.epoch_metrics(self)))
        self.runlog.scalars({k: v for k, v in record.items() if k.startswith(("val/", "eval/"))}, self.step)
        self.history.append(record)
        self.epoch += 1
        self.batch, self.partial = 0, Means()
        for opt in self.optimizers:
            opt.schedule.epoch_end(val["loss"])
        improved = self.selection.judge(record, self.epoch)
        self._write_checkpoints(best=improved)
        self.runlog.history(self.history, self.save_dir)
        terms = "  ".join(f"{k} {v:.4g}" for k, v in record.items() if "/" in k)
        self.log(f"epoch {self.epoch}/{cfg.epochs} step {self.step}  {terms}"
                 f"  {images_per_second:.0f} img/s{'  (best)' if improved else ''}")
        self._stop_if_signalled()           # arrived during validation's last batch: skip the hook
        if self.epoch_hook is not None and self.dist.is_main:
            with autocast(self.device, self.cfg.precision):     # grids drawn as the run trains
                self.epoch_hook(self)
            self.writer.flush()
        self._stop_if_signalled()           # arrived during the hook (sample grids take a while)
        message = self.selection.early_stop(self.epoch, self.save_dir)
        if message:
            self.log(message)
        return message is not None

    @torch.no_grad()
    def evaluate(self, model: nn.Module | None = None, stop_on_signal: bool = False) -> dict[str, float]:
        """Mean of each loss term of every update over the validation loader, with fixed-seed
        randomness (`step` None).

        With `stop_on_signal` (inside `fit`) a SIGINT/SIGTERM stops between batches: last.pt
        then holds the finished epoch's training state and a resumed run validates it again.
        """
        model = model if model is not None else self.eval_model
        was_training = model.training
        model.eval()
        generator = torch.Generator(self.device).manual_seed(self.cfg.seed + 7919)
        means = Means()
        terms: dict[Optimizer, dict] = {opt: {} for opt in self.optimizers}
        for batch, (images, labels) in enumerate(self.val_loader.epoch(0)):
            first, total = self.val_loader.rows(batch)     # total: images in the global batch
            noise = NoiseSource(generator, first, total)
            for opt in self.optimizers:
                if images.shape[0]:       # a process's share of the last batch may be empty
                    with autocast(self.device, self.cfg.precision):
                        terms[opt] = opt.update.loss_fn(model, images, labels, generator=noise, step=None)
                means.add(self._named(opt, self.stops.agree(terms[opt], images.shape[0])), total)
            if stop_on_signal and self.stops.signal is not None:
                self._stop_for_signal()
        model.train(was_training)
        return means.means()

    # ------------------------------------------------------------ state and checkpoints

    def state_dict(self) -> dict:
        """The training state; with several processes every one must call it (it gathers each
        process's RNG state: rank 0's is "rng", all of them "rank_rng"). The first update's
        optimizer, LR schedule and grad scaler are top-level keys, the others' under "updates"."""
        first, *others = self.optimizers
        return {
            "model": self.model.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            **first.state_dict(),
            **({"updates": {o.name: o.state_dict() for o in others}} if others else {}),
            "epoch": self.epoch, "batch": self.batch, "step": self.step,
            **self.selection.state_dict(),
            "partial": self.partial.state_dict(), **rng_state(self.dist, self.noise),
            "config": self.run_config, "history": list(self.history), "frozen": self.frozen,
            "global_batch": self.train_loader.global_batch,
        }

    def load_state_dict(self, state: dict) -> list[str]:
        """Restore a `state_dict`; returns notes for the log (an LR schedule length kept or changed)."""
        self.model.load_state_dict(state["model"])
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"] if state["ema"] is not None else state["model"])
        first, *others = self.optimizers
        notes = first.load_state_dict(state, self.cfg.reset_schedule)
        for opt in others:
            notes += opt.load_state_dict(state["updates"][opt.name], self.cfg.reset_schedule)
        self.epoch, self.batch, self.step = state["epoch"], state["batch"], state["step"]
        self.selection.load_state_dict(state)
        self.partial.load_state_dict(state["partial"])
        self.history = list(state["history"])
        notes += restore_rng(state, self.dist, self.noise, self.cfg.seed, self.step)
        stored = state.get("global_batch", self.train_loader.global_batch)
        if stored != self.train_loader.global_batch and self.batch:
            done = self.batch * stored
            self.batch = done // self.train_loader.global_batch
            notes.append(f"global batch changed from {stored} to {self.train_loader.global_batch} images: "
                         f"epoch {self.epoch + 1} continues at batch {self.batch} (it had seen {done} images)")
        self._saved = (self.epoch, self.batch, self.step)
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
        """Write best.pt (when `best`) and last.pt, once the weights are known to be finite."""
        for name, module in (("model", self.model), ("EMA", self.ema.model if self.ema else None)):
            if module is not None and not all(torch.isfinite(p).all() for p in module.parameters()):
                self._stop_non_finite(f"{name} weights after step {self.step}")
        state = self.state_dict()
        self.dist.on_main(lambda: write_checkpoints(state, self.save_dir, best))
        self._saved = (self.epoch, self.batch, self.step)

    # ------------------------------------------------------------ stopping

    def _stop_non_finite(self, what: str) -> None:
        if self._saved is not None:
            epoch, batch, step = self._saved
            kept = (f"{self.save_dir / 'last.pt'} still holds the last good checkpoint (epoch {epoch}"
                    f"{f', batch {batch}' if batch else ''}, step {step})")
        else:
            kept = "no checkpoint was written yet"
        raise TrainingStopped(f"non-finite {what}; stopped. {kept}. "
                              "Try a lower --lr, --grad-clip 1, or --precision fp32.", exit_code=1)

    def _stop_if_signalled(self) -> None:
        self.stops.agree()
        if self.stops.signal is not None:
            self._stop_for_signal()

    def _stop_for_signal(self) -> None:
        path = self.save_dir / "last.pt"
        if self._saved != (self.epoch, self.batch, self.step):
            self._write_checkpoints()
        name = signal.Signals(self.stops.signal).name
        self.log(f"{name}: stopped at epoch {self.epoch + 1}, batch {self.batch}, step {self.step}; "
                 f"saved {path}. Resume with the same command plus --resume")
        raise TrainingStopped(f"interrupted by {name}; resume with --resume", exit_code=130)
