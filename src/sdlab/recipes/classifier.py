"""The classifier recipe: the small classifier of `sdlab.classifier`, trained on any labelled
dataset, whose checkpoint `sdlab-eval-samples --features classifier` measures samples with.

    from sdlab.recipes import ClassifierRun, train_classifier
    trained = train_classifier(ClassifierRun(train=TrainConfig(epochs=8, save_dir="runs/classifier")))
    model = trained.trainer.eval_model
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch

from ..classifier import Classifier, ClassifierConfig, classifier_loss, feature_map_size
from ..config import from_stored
from ..data import DataConfig, to_unit_range
from ..errors import UserError
from ..trained import load_trained, load_weights, trained_weights
from ..trainer import TrainConfig, Trainer
from .run import Trained, build_loaders, prepare_run, report, save_run_config, start_run, with_defaults


WHITENING_IMAGES = 5000     # training images the whitening stem's patch statistics are taken from


# Defaults chosen for test accuracy per CPU-minute on CIFAR-10 (BENCHMARKS.md, "Classifier").
DEFAULTS = {"batch_size": 256, "epochs": 8, "lr": 3e-3, "weight_decay": 0.05, "scheduler": "cosine",
            "warmup_steps": 100, "grad_clip": 0.0, "save_dir": "outputs/classifier"}


@dataclass(frozen=True)
class ClassifierRun:
    """Everything a classifier run is made of; its fields are the sections of config.json."""

    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    classifier: ClassifierConfig = field(default_factory=ClassifierConfig)

    @classmethod
    def recommended(cls, **sections) -> "ClassifierRun":
        """What `sdlab-train-classifier` runs with no flags, with `sections` over it."""
        return with_defaults(cls, DEFAULTS, sections)


def train_classifier(run: ClassifierRun) -> Trained:
    """Train (or, with run.train.resume, continue) a classifier; channels and classes are taken
    from the dataset. The trainer's history holds train/val loss and accuracy per epoch."""
    dist, device, run = start_run(run)
    resumed = prepare_run(run.train, "classifier", dist)
    if resumed is not None:
        run = dataclasses.replace(run, classifier=from_stored(ClassifierConfig, resumed["config"]["classifier"]))
    torch.manual_seed(run.train.seed)
    splits, train_loader, val_loader = build_loaders(run.data, run.train, device, dist=dist)
    cfg = dataclasses.replace(run.classifier, in_channels=splits.train.channels,
                              num_classes=len(splits.train.classes), test_flip=run.data.hflip)
    size = splits.train.images.shape[-1]
    if feature_map_size(cfg, size) < 1:
        raise UserError(f"--widths: {len(cfg.widths)} stages halve {size}-pixel images to nothing; "
                        f"give fewer widths or a larger --image-size")
    model = Classifier(cfg)
    if resumed is None:                                   # a resumed run loads its fitted filters
        model.stem.fit(to_unit_range(splits.train.images[:WHITENING_IMAGES]))
    model = model.to(device)
    if dist.is_main:
        print(f"classifier: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters, "
              f"{cfg.num_classes} classes, {len(splits.train)} train / {len(splits.test)} val images, "
              f"device {device}, precision {run.train.precision}")
    run_config = save_run_config(dict(vars(run), classifier=cfg), run.train.save_dir, dist)
    run_config.update(kind="classifier", classes=list(splits.train.classes))

    def loss_fn(net, images, labels, generator=None, step=None):
        return classifier_loss(net, images, labels, cfg, generator, step)

    trainer = Trainer(model, loss_fn, train_loader, val_loader, run.train, run_config=run_config,
                      device=device, dist=dist)
    trainer.fit(resume_state=resumed)
    report(trainer)
    return Trained(trainer)


def load_classifier(path: str, device: torch.device) -> tuple[Classifier, tuple[str, ...]]:
    """The trained classifier of checkpoint `path` (EMA weights when it has them), in eval mode,
    and its class names."""
    state = load_trained(path, torch.device("cpu"), "classifier")
    model = Classifier(from_stored(ClassifierConfig, state["config"]["classifier"]))
    load_weights(model, trained_weights(state), path)
    return model.to(device).eval(), tuple(state["config"]["classes"])
