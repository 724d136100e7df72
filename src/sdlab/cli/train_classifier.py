"""`sdlab-train-classifier`: train the small classifier whose features and predictions make the
offline sample-quality metric (FD-classifier, accuracy of class-conditional samples); flags ->
`recipes.ClassifierRun` -> `recipes.train_classifier`.

    sdlab-train-classifier --dataset folder --data-dir cifar10 --save-dir outputs/classifier
"""

from __future__ import annotations

import torch

from ..classifier import ClassifierConfig
from ..data import DataConfig
from ..recipes import ClassifierRun, train_classifier
from ..recipes.classifier import DEFAULTS
from ..trainer import TrainConfig
from .flags import add_config_flags, build_configs
from .session import machine_defaults, resolve_device, shared_parser, user_errors

def build_parser():
    parser = shared_parser("sdlab-train-classifier", "Train the classifier of the offline sample-"
                           "quality metric (FD-classifier and class accuracy of samples).")
    add_config_flags(parser, ClassifierConfig, "classifier", skip=("in_channels", "num_classes", "test_flip"))
    machine_defaults(parser, DEFAULTS)
    return parser


def parse(argv=None) -> tuple[dict, torch.device]:
    """Flags -> {section: config} of a ClassifierRun and the device."""
    parser = build_parser()
    args = parser.parse_args(argv)
    classes = {"data": DataConfig, "train": TrainConfig, "classifier": ClassifierConfig}
    configs = build_configs(parser, args, classes, overrides=DEFAULTS)
    return configs, resolve_device(parser, configs["train"])


@user_errors
def main(argv=None) -> None:
    configs, _ = parse(argv)
    train_classifier(ClassifierRun(**configs))


if __name__ == "__main__":
    main()
