"""Sample-quality metrics against closed forms, and the offline classifier they can use."""

import pytest
import torch

from sdlab.classifier import Classifier, ClassifierConfig, classifier_loss, translate
from sdlab.data import DataConfig
from sdlab.errors import UserError
from sdlab.quality import INCEPTION_FILE, ClassifierFeatures, InceptionFeatures, frechet_distance, kernel_distance
from sdlab.randomness import NoiseSource
from sdlab.recipes import ClassifierRun, load_classifier, train_classifier
from sdlab.trainer import TrainConfig


def with_moments(n: int, mean: torch.Tensor, cov: torch.Tensor, seed: int) -> torch.Tensor:
    """n points whose sample mean and (unbiased) covariance are exactly `mean` and `cov`."""
    x = torch.randn(n, len(mean), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    x = x - x.mean(0)
    whiten = torch.linalg.inv(torch.linalg.cholesky(x.T @ x / (n - 1)))
    return x @ whiten.T @ torch.linalg.cholesky(cov).T + mean


def sqrtm(m: torch.Tensor) -> torch.Tensor:
    values, vectors = torch.linalg.eigh(m)
    return vectors @ torch.diag(values.clamp_min(0).sqrt()) @ vectors.T


def random_cov(d: int, seed: int) -> torch.Tensor:
    a = torch.randn(d, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return a @ a.T / d + 0.1 * torch.eye(d, dtype=torch.float64)


def test_frechet_distance_of_two_gaussians_is_the_closed_form():
    d = 6
    mu1, mu2 = torch.zeros(d, dtype=torch.float64), torch.linspace(-1, 1, d, dtype=torch.float64)
    s1, s2 = random_cov(d, 1), random_cov(d, 2)        # they do not commute
    root = sqrtm(s1)
    closed = (mu1 - mu2).pow(2).sum() + torch.trace(s1 + s2 - 2 * sqrtm(root @ s2 @ root))
    measured = frechet_distance(with_moments(500, mu1, s1, 3), with_moments(700, mu2, s2, 4))
    assert measured == pytest.approx(closed.item(), rel=1e-6)
    same = with_moments(500, mu1, s1, 5)
    assert abs(frechet_distance(same, same)) < 1e-6


def test_kernel_distance_is_unbiased_around_zero_for_one_distribution():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(2000, 16, generator=g), torch.randn(2000, 16, generator=g)
    shifted = torch.randn(2000, 16, generator=g) + 0.3
    same, _ = kernel_distance(a, b, subsets=50, subset_size=500)
    differ, _ = kernel_distance(a, shifted, subsets=50, subset_size=500)
    assert differ > 0.02 and abs(same) < 0.05 * differ
    assert kernel_distance(a, b, subsets=10, subset_size=200) == kernel_distance(a, b, subsets=10, subset_size=200)


def test_translation_moves_every_image_by_at_most_the_shift():
    images = torch.arange(2 * 1 * 6 * 6, dtype=torch.float32).reshape(2, 1, 6, 6)
    assert torch.equal(translate(images, 0, NoiseSource(torch.Generator().manual_seed(0))), images)
    moved = translate(images, 1, NoiseSource(torch.Generator().manual_seed(0)))
    centre = moved[:, :, 1:-1, 1:-1]           # away from the reflected border
    for b in range(2):
        matches = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)
                   if torch.equal(centre[b], images[b, :, 1 + dy:5 + dy, 1 + dx:5 + dx])]
        assert len(matches) == 1


def test_classifier_features_and_loss_terms():
    cfg = ClassifierConfig(widths=(8, 16), num_classes=4)
    model = Classifier(cfg)
    x = torch.rand(5, 3, 16, 16) * 2 - 1
    assert model(x).shape == (5, 4) and model.features(x).shape == (5, 16)
    terms = classifier_loss(model, x, torch.tensor([0, 1, 2, 3, 0]), cfg, step=None)
    assert set(terms) == {"loss", "accuracy", "nll"} and 0 <= terms["accuracy"] <= 1
    features, probs = ClassifierFeatures(model)(torch.randint(0, 256, (5, 3, 16, 16), dtype=torch.uint8))
    assert features.shape == (5, 16) and torch.allclose(probs.sum(1), torch.ones(5))


def test_the_classifier_recipe_learns_synthetic_shapes_and_reloads(tmp_path):
    run = ClassifierRun(
        data=DataConfig(dataset="synthetic", synthetic_size=400, image_size=16, batch_size=20),
        train=TrainConfig(epochs=6, lr=1e-3, save_dir=str(tmp_path), device="cpu"),
        classifier=ClassifierConfig(widths=(16, 32)))
    history = train_classifier(run).trainer.history
    assert history[-1]["val/accuracy"] > 0.2            # 10 shapes: chance is 0.1 (0.33 when written)
    assert history[-1]["train/loss"] < history[0]["train/loss"]
    model, classes = load_classifier(str(tmp_path / "best.pt"), torch.device("cpu"))
    assert classes[:2] == ("disc", "square") and model.cfg.num_classes == 10


def test_missing_inception_weights_say_which_file_to_fetch(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.raises(UserError) as err:
        InceptionFeatures()
    message = str(err.value)
    assert INCEPTION_FILE in message and "--inception-weights" in message and "\n" not in message
    with pytest.raises(UserError, match="no such file"):
        InceptionFeatures(str(tmp_path / "nope.pth"))
