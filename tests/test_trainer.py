import math
import os
import signal
import time

import pytest
import torch
from torch import nn

from sdlab.checkpoint import load_checkpoint, save_checkpoint
from sdlab.data import BatchLoader, make_synthetic
from sdlab.randomness import NoiseSource
from sdlab.trainer import LRSchedule, TrainConfig, Trainer, TrainingStopped

from conftest import ROOT, run_script, scalar_tags


class Toy(nn.Module):
    """A tiny denoiser with dropout, so resuming must restore the RNG to match."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.SiLU(), nn.Dropout(0.2),
                                 nn.Conv2d(4, 3, 3, padding=1))

    def forward(self, x):
        return self.net(x)


def toy_loss(model, images, labels, generator=None, step=None):
    noise = NoiseSource.of(generator).normal(images)
    mse = (model(images + 0.3 * noise) - images).pow(2).mean()
    return {"loss": mse, "mse": mse.detach()}


def make_trainer(tmp_path, loss_fn=toy_loss, hook=None, **overrides):
    torch.manual_seed(0)
    data = make_synthetic(48, 8)
    val = make_synthetic(16, 8, seed=1)
    cfg = TrainConfig(**{"epochs": 4, "lr": 1e-2, "save_dir": str(tmp_path / "out"),
                         "log_every": 1, "device": "cpu", **overrides})
    train_loader = BatchLoader(data, 16, shuffle=True, hflip=True, drop_last=True, seed=cfg.seed)
    val_loader = BatchLoader(val, 16, shuffle=False, hflip=False, drop_last=False)
    return Trainer(Toy(), loss_fn, train_loader, val_loader, cfg, run_config={"toy": True},
                   device=torch.device("cpu"), epoch_hook=hook)


def test_a_select_by_metric_the_run_never_reports_is_refused_before_training(tmp_path):
    from sdlab.config import ConfigError

    trainer = make_trainer(tmp_path, epochs=2, select_by="val/accuracy")
    with pytest.raises(ConfigError, match=r"val/accuracy is not reported .* choose one of val/loss, val/mse"):
        trainer.fit()
    assert trainer.step == 0 and not (tmp_path / "out" / "last.pt").exists()
    assert make_trainer(tmp_path, epochs=1, select_by="val/mse").fit()[-1]["val/mse"] > 0


def test_fit_writes_checkpoints_history_and_logs(tmp_path):
    trainer = make_trainer(tmp_path, epochs=2)
    history = trainer.fit()
    assert [r["epoch"] for r in history] == [1, 2]
    assert {"train/loss", "train/mse", "val/loss", "val/mse", "lr"} <= set(history[-1])
    out = tmp_path / "out"
    for name in ("last.pt", "best.pt", "history.json", "logs/train.log"):
        assert (out / name).exists(), name
    state = load_checkpoint(out / "last.pt")
    assert state["epoch"] == 2 and state["step"] == 6 and state["config"] == {"toy": True}
    assert {"model", "ema", "optimizer", "lr_schedule", "scaler", "rng", "history", "best",
            "bad_epochs"} <= set(state)
    tags = scalar_tags(out / "logs")
    assert {"train/loss", "train/mse", "val/loss", "val/mse", "lr"} <= tags


def scripted_val_loss(values):
    """Validation returns values[k] on the k-th validation pass; training is the toy loss."""
    calls = {"n": 0}

    def loss_fn(model, images, labels, generator=None, step=None):
        if step is not None:
            return toy_loss(model, images, labels, generator)
        value = torch.tensor(values[calls["n"]])
        calls["n"] += 1
        return {"loss": value}

    return loss_fn


def test_early_stopping_fires_after_exactly_patience_bad_epochs(tmp_path):
    # best at epoch 2; epochs 3, 4, 5 do not improve by more than min_delta=0.05
    values = [5.0, 4.0, 4.5, 3.97, 4.2, 1.0, 1.0]
    snapshots = []
    hook = lambda t: snapshots.append({k: v.clone() for k, v in t.model.state_dict().items()})
    trainer = make_trainer(tmp_path, scripted_val_loss(values), hook, epochs=7,
                           early_stop_patience=3, min_delta=0.05)
    history = trainer.fit()
    assert len(history) == 5
    assert trainer.best == {"value": 4.0, "epoch": 2}
    best = load_checkpoint(tmp_path / "out" / "best.pt")
    assert best["epoch"] == 2
    for k, v in best["model"].items():
        assert torch.equal(v, snapshots[1][k])
    assert not torch.equal(best["model"]["net.0.weight"], snapshots[-1]["net.0.weight"])
    log = (tmp_path / "out" / "logs" / "train.log").read_text()
    assert "early stopping at epoch 5" in log and "patience 3" in log


def test_resume_after_interruption_matches_an_uninterrupted_run(tmp_path):
    settings = dict(epochs=4, ema_decay=0.9, scheduler="cosine", warmup_steps=2, grad_accum=2)
    full = make_trainer(tmp_path / "full", **settings)
    full.fit()

    holder = {}

    def signal_in_epoch_3(model, images, labels, generator=None, step=None):
        if step == 4:      # the first batch of epoch 3; the signal is acted on after its step
            holder["trainer"].request_stop(signal.SIGINT)
        return toy_loss(model, images, labels, generator)

    first = holder["trainer"] = make_trainer(tmp_path / "cut", signal_in_epoch_3, **settings)
    with pytest.raises(TrainingStopped) as stopped:
        first.fit()
    assert stopped.value.exit_code == 130
    saved = load_checkpoint(tmp_path / "cut" / "out" / "last.pt")
    assert (saved["epoch"], saved["batch"]) == (2, 2)   # stopped after one step into epoch 3
    torch.manual_seed(123)  # resuming must not depend on the global RNG at start-up
    resumed = make_trainer(tmp_path / "cut", resume="last", **settings)
    resumed.fit()
    for (name, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name
    for a, b in zip(full.ema.model.parameters(), resumed.ema.model.parameters()):
        assert torch.equal(a, b)
    assert [r["val/loss"] for r in full.history] == [r["val/loss"] for r in resumed.history]


def test_atomic_save_leaves_the_previous_checkpoint_loadable(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint({"w": torch.ones(3), "epoch": 1}, path)

    def crash_mid_write(obj, f):
        f.write(b"partial bytes of a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash_mid_write)
    with pytest.raises(OSError):
        save_checkpoint({"w": torch.zeros(3), "epoch": 2}, path)
    monkeypatch.undo()
    state = load_checkpoint(path)
    assert state["epoch"] == 1 and torch.equal(state["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    def nan_at_step_5(model, images, labels, generator=None, step=None):
        terms = toy_loss(model, images, labels, generator)
        if step == 5:
            terms["mse"] = terms["mse"] * float("nan")
        return terms

    trainer = make_trainer(tmp_path, nan_at_step_5, epochs=3)
    with pytest.raises(TrainingStopped) as stopped:
        trainer.fit()
    message = str(stopped.value)
    assert "non-finite loss at step 6" in message and "'mse'" in message
    assert "epoch 1" in message
    kept = load_checkpoint(tmp_path / "out" / "last.pt")
    assert kept["epoch"] == 1 and kept["step"] == 3


def test_lr_schedule_warmup_cosine_step_and_plateau():
    cosine = LRSchedule(TrainConfig(scheduler="cosine", warmup_steps=10), steps_per_epoch=10,
                        total_steps=110)
    assert cosine.factor(0) == pytest.approx(0.1)
    assert cosine.factor(9) == pytest.approx(1.0)
    assert cosine.factor(60) == pytest.approx(0.5)
    assert cosine.factor(110) == pytest.approx(0.0, abs=1e-12)
    step = LRSchedule(TrainConfig(scheduler="step", step_size=2, gamma=0.1), 10, 100)
    assert [step.factor(s) for s in (0, 19, 20, 40)] == pytest.approx([1, 1, 0.1, 0.01])
    plateau = LRSchedule(TrainConfig(scheduler="plateau", step_size=2, gamma=0.5), 10, 100)
    for loss in (1.0, 1.0, 1.0):
        plateau.epoch_end(loss)
    assert plateau.factor(0) == pytest.approx(0.5)


def test_sigint_in_a_subprocess_leaves_a_resumable_last_pt(tmp_path):
    import subprocess
    import sys

    out = tmp_path / "run"
    args = [ROOT / "diffusers" / "train_vae.py", "--dataset", "synthetic", "--synthetic-size", "1024",
            "--batch", "8", "--epochs", "40", "--base-channels", "8", "--precision", "fp32",
            "--save-dir", out, "--device", "cpu"]
    proc = subprocess.Popen([sys.executable, *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=dict(os.environ, OMP_NUM_THREADS="2"))  # also under pytest -n
    deadline = time.time() + 240
    while not (out / "last.pt").exists() and time.time() < deadline:
        time.sleep(0.2)
    assert (out / "last.pt").exists(), "the first epoch did not end within 240 s"
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    output, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, output
    assert "resume" in output.lower() and "Traceback" not in output
    state = load_checkpoint(out / "last.pt")
    assert state["epoch"] >= 1
    resumed = run_script([*args[:9], "--epochs", str(state["epoch"] + 1), *args[11:], "--resume"],
                         cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert load_checkpoint(out / "last.pt")["epoch"] == state["epoch"] + 1


def test_config_file_sets_defaults_that_flags_override(tmp_path):
    import json

    from sdlab.cli.train_vae import parse

    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"train": {"lr": 0.005, "epochs": 7}, "kl_weight": 0.5}))
    configs, _ = parse(["--config", str(cfg), "--epochs", "3", "--device", "cpu"])
    assert configs["train"].lr == 0.005 and configs["train"].epochs == 3
    assert configs["loss"].kl_weight == 0.5
    assert math.isclose(parse(["--lr", "0.1", "--device", "cpu"])[0]["train"].lr, 0.1)


class BlowUpAtStep(Trainer):
    """A trainer whose weights turn NaN right after optimizer step `at` (the loss stays finite)."""

    at = 0

    def _optimizer_step(self):
        super()._optimizer_step()
        if self.step == self.at:
            with torch.no_grad():
                self.model.net[0].weight.fill_(float("nan"))


def test_weights_blowing_up_on_an_epochs_last_step_keep_the_last_good_checkpoint(tmp_path):
    trainer = make_trainer(tmp_path, epochs=3)
    trainer.__class__ = BlowUpAtStep
    trainer.at = 6                    # 3 steps per epoch: the last step of epoch 2
    with pytest.raises(TrainingStopped) as stopped:
        trainer.fit()
    message = str(stopped.value)
    assert stopped.value.exit_code == 1
    assert "non-finite validation loss after epoch 2" in message
    assert "still holds the last good checkpoint (epoch 1, step 3)" in message
    kept = load_checkpoint(tmp_path / "out" / "last.pt")
    assert kept["epoch"] == 1 and all(torch.isfinite(v).all() for v in kept["model"].values())


def test_non_finite_weights_are_never_written_by_a_signal_stop(tmp_path):
    holder = {}

    def stop_at_step_4(model, images, labels, generator=None, step=None):
        if step == 4:
            holder["trainer"].request_stop(signal.SIGTERM)
        return toy_loss(model, images, labels, generator)

    trainer = holder["trainer"] = make_trainer(tmp_path, stop_at_step_4, epochs=3)
    trainer.__class__ = BlowUpAtStep
    trainer.at = 5
    with pytest.raises(TrainingStopped, match="non-finite model weights after step 5"):
        trainer.fit()
    assert load_checkpoint(tmp_path / "out" / "last.pt")["step"] == 3


def test_infinite_learning_rate_or_weight_decay_is_refused():
    for field in ("lr", "weight_decay", "min_delta", "max_minutes"):
        with pytest.raises(ValueError, match=f"{field}: must be a finite number"):
            TrainConfig(**{field: float("inf")})


def test_a_new_run_never_overwrites_an_earlier_one_unless_asked(tmp_path):
    from sdlab.errors import UserError

    make_trainer(tmp_path, epochs=1).fit()
    best = (tmp_path / "out" / "best.pt").read_bytes()
    with pytest.raises(UserError, match="add --resume to continue it, or --overwrite"):
        make_trainer(tmp_path, epochs=1).fit()
    assert (tmp_path / "out" / "best.pt").read_bytes() == best
    again = make_trainer(tmp_path, epochs=1, overwrite=True, seed=3)
    again.fit()
    assert (tmp_path / "out" / "best.pt").read_bytes() != best


def test_resume_keeps_the_cosine_schedule_length_unless_reset(tmp_path):
    settings = dict(epochs=4, scheduler="cosine", warmup_steps=1)
    full = make_trainer(tmp_path / "full", **settings)
    full.fit()
    lrs = [r["lr"] for r in full.history]
    holder = {}

    def stop_in_epoch_3(model, images, labels, generator=None, step=None):
        if step == 6:
            holder["trainer"].request_stop()
        return toy_loss(model, images, labels, generator)

    cut = holder["trainer"] = make_trainer(tmp_path / "cut", stop_in_epoch_3, **settings)
    with pytest.raises(TrainingStopped):
        cut.fit()
    longer = make_trainer(tmp_path / "cut", **dict(settings, epochs=6), resume="last")
    longer.cfg = TrainConfig(**{**longer.cfg.__dict__, "epochs": 4})   # stop where the full run did
    longer.fit()
    assert longer.schedule.total_steps == full.schedule.total_steps == 12
    assert [r["lr"] for r in longer.history] == pytest.approx(lrs)     # the same curve
    log = (tmp_path / "cut" / "out" / "logs" / "train.log").read_text()
    assert "kept the stored length of 12 steps (these flags give 18" in log

    reset = make_trainer(tmp_path / "cut", **dict(settings, epochs=6), resume="last", reset_schedule=True)
    reset.fit()
    assert reset.schedule.total_steps == 18
    assert "length changed from 12 to 18 steps" in (tmp_path / "cut" / "out" / "logs" / "train.log").read_text()


def two_batch_validation(trainer: Trainer) -> Trainer:
    trainer.val_loader = BatchLoader(make_synthetic(16, 8, seed=1), 8, shuffle=False, hflip=False,
                                     drop_last=False)
    return trainer


def test_a_signal_during_validation_stops_there_and_resume_is_exact(tmp_path):
    settings = dict(epochs=3, ema_decay=0.9)
    full = two_batch_validation(make_trainer(tmp_path / "full", **settings))
    full.fit()
    holder, calls = {}, {"val": 0}

    def signal_in_second_validation(model, images, labels, generator=None, step=None):
        if step is None:
            calls["val"] += 1
            if calls["val"] == 3:          # epoch 2's validation, the first of its two batches
                holder["trainer"].request_stop()
        return toy_loss(model, images, labels, generator)

    cut = holder["trainer"] = two_batch_validation(
        make_trainer(tmp_path / "cut", signal_in_second_validation, **settings))
    with pytest.raises(TrainingStopped):
        cut.fit()
    saved = load_checkpoint(tmp_path / "cut" / "out" / "last.pt")
    assert (saved["epoch"], saved["batch"], saved["step"]) == (1, 3, 6)   # epoch 2 trained, not validated
    resumed = two_batch_validation(make_trainer(tmp_path / "cut", resume="last", **settings))
    resumed.fit()
    for a, b in zip(full.model.state_dict().values(), resumed.model.state_dict().values()):
        assert torch.equal(a, b)
    assert [r["val/loss"] for r in full.history] == [r["val/loss"] for r in resumed.history]


def test_leftover_temporaries_of_killed_writes_are_removed(tmp_path):
    import os

    from sdlab.checkpoint import remove_stale_temporaries

    dead = tmp_path / ".last.pt.tmp999999999"
    alive = tmp_path / f".best.pt.tmp{os.getpid()}"
    other = tmp_path / "notes.tmp5"
    for path in (dead, alive, other):
        path.write_bytes(b"x")
    assert remove_stale_temporaries(tmp_path) == [dead]
    assert alive.exists() and other.exists() and not dead.exists()


def test_resuming_from_a_checkpoint_of_another_kind_is_a_clear_error(tmp_path):
    from sdlab.checkpoint import CheckpointError

    make_trainer(tmp_path, epochs=1).fit()
    other = make_trainer(tmp_path, epochs=2, resume="last")
    other.run_config = {"kind": "vae"}
    with pytest.raises(CheckpointError, match="a None checkpoint cannot resume a vae run"):
        other.fit()


# ------------------------------------------------------------ several optimizers


class GenCritic(nn.Module):
    """A generator (no dropout, so its trajectory does not depend on who else runs it) and a critic."""

    def __init__(self):
        super().__init__()
        self.gen = nn.Conv2d(3, 3, 3, padding=1)
        self.critic = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Dropout(0.2), nn.Conv2d(4, 1, 1))


def gen_loss(model, images, labels, generator=None, step=None):
    noise = NoiseSource.of(generator).normal(images)
    mse = (model.gen(images + 0.3 * noise) - images).pow(2).mean()
    return {"loss": mse, "mse": mse.detach()}


def critic_loss(model, images, labels, generator=None, step=None):
    """Not detached from the generator: only the trainer keeps its gradients out of model.gen. It
    draws no noise, so the generator's draws are the same with or without it."""
    fake = model.gen(images)
    real, fake = model.critic(images).mean(), model.critic(fake).mean()
    return {"loss": (1 - real).relu() + (1 + fake).relu(), "real": real.detach()}


def make_pair_trainer(tmp_path, critic=critic_loss, starts_at=0, critic_too=True, **overrides):
    from sdlab.trainer import Update

    torch.manual_seed(0)
    model = GenCritic()
    cfg = TrainConfig(**{"epochs": 4, "lr": 1e-2, "save_dir": str(tmp_path / "out"), "log_every": 1,
                         "device": "cpu", **overrides})
    updates = [Update(gen_loss, model.gen, "gen")]
    if critic_too:
        updates.append(Update(critic, model.critic, "critic", lr=3e-3, betas=(0.5, 0.9), starts_at=starts_at))
    train_loader = BatchLoader(make_synthetic(48, 8), 16, shuffle=True, hflip=True, drop_last=True, seed=cfg.seed)
    val_loader = BatchLoader(make_synthetic(16, 8, seed=1), 16, shuffle=False, hflip=False, drop_last=False)
    return Trainer(model, updates, train_loader, val_loader, cfg, run_config={"toy": True},
                   device=torch.device("cpu"))


def test_a_second_optimizer_never_moves_the_first_ones_parameters(tmp_path):
    # the critic's loss runs through the generator, yet the generator's weights follow exactly
    # the path they follow with no critic at all
    alone = make_pair_trainer(tmp_path / "alone", critic_too=False, epochs=2)
    alone.fit()
    pair = make_pair_trainer(tmp_path / "pair", epochs=2)
    before = pair.model.critic[0].weight.clone()
    pair.fit()
    for a, b in zip(alone.model.gen.parameters(), pair.model.gen.parameters()):
        assert torch.equal(a, b)
    assert not torch.equal(before, pair.model.critic[0].weight)
    assert all(p.requires_grad for p in pair.model.parameters())     # switched back after each update
    groups = pair.optimizers[1].optimizer.param_groups
    assert groups[0]["betas"] == (0.5, 0.9) and pair.history[-1]["lr_critic"] == pytest.approx(3e-3)
    assert {"train/loss", "train/critic_loss", "train/critic_real", "val/critic_loss"} <= set(pair.history[-1])
    assert pair.history[-1]["val/loss"] == pytest.approx(alone.history[-1]["val/loss"], abs=0)
    state = load_checkpoint(tmp_path / "pair" / "out" / "last.pt")
    assert set(state["updates"]) == {"critic"}
    assert {"optimizer", "lr_schedule", "scaler"} <= set(state["updates"]["critic"])


def test_an_update_that_starts_later_neither_runs_nor_steps_before(tmp_path):
    calls, losses = [], []

    def counted(model, images, labels, generator=None, step=None):
        calls.append(step)
        terms = critic_loss(model, images, labels, generator)
        if step is not None:
            losses.append(terms["loss"].item())
        return terms

    trainer = make_pair_trainer(tmp_path, counted, starts_at=4, epochs=2)
    before = trainer.model.critic[0].weight.clone()
    trainer.fit()
    assert [s for s in calls if s is not None] == [4, 5]      # training calls; validation has step None
    assert "train/critic_loss" not in trainer.history[0] and "train/critic_loss" in trainer.history[1]
    assert not torch.equal(before, trainer.model.critic[0].weight)
    # epoch 2's mean counts only the two batches the critic ran on, not all three
    assert trainer.history[1]["train/critic_loss"] == pytest.approx(sum(losses) / 2, rel=1e-12)
    assert trainer.optimizers[1].optimizer.state[trainer.optimizers[1].params[0]]["step"].item() == 2


def test_two_optimizers_resume_bitwise(tmp_path):
    settings = dict(epochs=4, ema_decay=0.9, scheduler="cosine", warmup_steps=2, grad_accum=2, precision="bf16")
    full = make_pair_trainer(tmp_path / "full", starts_at=1, **settings)
    full.fit()
    holder = {}

    def signal_in_epoch_3(model, images, labels, generator=None, step=None):
        if step == 4:
            holder["trainer"].request_stop(signal.SIGINT)
        return critic_loss(model, images, labels, generator)

    cut = holder["trainer"] = make_pair_trainer(tmp_path / "cut", signal_in_epoch_3, starts_at=1, **settings)
    with pytest.raises(TrainingStopped):
        cut.fit()
    assert load_checkpoint(tmp_path / "cut" / "out" / "last.pt")["batch"] == 2
    torch.manual_seed(123)
    resumed = make_pair_trainer(tmp_path / "cut", resume="last", starts_at=1, **settings)
    resumed.fit()
    for (name, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name
    for a, b in zip(full.ema.model.parameters(), resumed.ema.model.parameters()):
        assert torch.equal(a, b)
    for f, r in zip(full.optimizers, resumed.optimizers):
        for p, q in zip(f.params, r.params):
            assert torch.equal(f.optimizer.state[p]["exp_avg_sq"], r.optimizer.state[q]["exp_avg_sq"])
    assert full.history == resumed.history


def test_updates_must_not_share_parameters_or_names(tmp_path):
    from sdlab.config import ConfigError
    from sdlab.trainer import Update

    model = GenCritic()
    loaders = [BatchLoader(make_synthetic(8, 8), 4, shuffle=False, hflip=False, drop_last=False)] * 2
    cfg = TrainConfig(save_dir=str(tmp_path), device="cpu")
    for updates, message in (([Update(gen_loss, model.gen, "a"), Update(critic_loss, model, "b")], "shares"),
                             ([Update(gen_loss, model.gen, "a"), Update(critic_loss, model.critic, "a")], "differ"),
                             ([Update(gen_loss, model.gen, "a", starts_at=3)], "start at step 0")):
        with pytest.raises(ConfigError, match=message):
            Trainer(model, updates, *loaders, cfg, run_config={}, device=torch.device("cpu"))
