"""Sample-quality metrics against closed forms, and the offline classifier they can use."""

import json

import pytest
import torch

from sdlab.checkpoint import load_checkpoint
from sdlab.classifier import Classifier, ClassifierConfig, PatchWhitening, classifier_loss, translate
from sdlab.data import DataConfig, to_uint8
from sdlab.pipeline import DiffusionPipeline
from sdlab.errors import UserError
from sdlab.quality import INCEPTION_FILE, ClassifierFeatures, InceptionFeatures, frechet_distance, kernel_distance
from sdlab.randomness import NoiseSource
from sdlab.recipes import ClassifierRun, load_classifier, train_classifier
from sdlab.recipes.quality import draw_samples, read_samples
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


def test_patch_whitening_gives_the_patches_the_closed_form_second_moment():
    g = torch.Generator().manual_seed(0)
    mix = torch.tensor([[1.0, 0.0, 0.0], [0.8, 0.3, 0.0], [0.6, 0.5, 0.2]])      # correlated channels
    images = torch.einsum("oc,nchw->nohw", mix, torch.randn(40, 3, 9, 9, generator=g))
    images = images + images.roll(1, dims=3)                                     # correlated neighbours
    stem = PatchWhitening(3)
    stem.fit(images)
    z = torch.nn.functional.conv2d(images.double(), stem.weight.double())        # (N, 24, 8, 8), no bias
    d = z.shape[1] // 2
    assert torch.allclose(z[:, d:], -z[:, :d])                                    # each filter and its negative
    z = z[:, :d].permute(0, 2, 3, 1).reshape(-1, d)
    patches = images.double().unfold(2, 2, 1).unfold(3, 2, 1).permute(0, 2, 3, 1, 4, 5).reshape(-1, d)
    lam = torch.linalg.eigvalsh(patches.T @ patches / len(patches))
    # z = (Lambda + eps)^(-1/2) U^T p, so E[z z^T] = diag(lambda / (lambda + eps)) exactly
    expected = torch.diag(lam / (lam + stem.eps))
    assert torch.allclose(z.T @ z / len(z), expected, atol=1e-6)
    assert lam.max() / lam.min() > 100 and expected.diagonal().min() > 0.9     # far from white -> nearly white


def test_classifier_features_and_loss_terms():
    cfg = ClassifierConfig(widths=(8, 16), num_classes=4)
    model = Classifier(cfg)
    x = torch.rand(5, 3, 16, 16) * 2 - 1
    model.stem.fit(x)
    assert model(x).shape == (5, 4) and model.features(x).shape == (5, 16)
    terms = classifier_loss(model, x, torch.tensor([0, 1, 2, 3, 0]), cfg, step=None)
    assert set(terms) == {"loss", "accuracy", "nll"} and 0 <= terms["accuracy"] <= 1
    model.eval()
    both = (model(x) + model(x.flip(-1))) / 2                  # test-time logits: the flip average
    assert torch.allclose(model.predict(x), both, atol=1e-6) and not torch.allclose(both, model(x))
    model.cfg = ClassifierConfig(widths=(8, 16), num_classes=4, test_flip=False)   # data without flips
    assert torch.equal(model.predict(x), model(x))
    model.cfg = cfg
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
    assert model.stem.weight.abs().sum() > 0                    # the fitted whitening filters were saved


def test_a_classifier_too_deep_for_its_images_is_a_user_error(tmp_path):
    run = ClassifierRun(data=DataConfig(dataset="synthetic", synthetic_size=40, image_size=8, batch_size=20),
                        train=TrainConfig(epochs=1, save_dir=str(tmp_path), device="cpu"),
                        classifier=ClassifierConfig(widths=(8, 16, 32)))
    with pytest.raises(UserError, match="--widths: 3 stages halve 8-pixel images"):
        train_classifier(run)


def test_missing_inception_weights_say_which_file_to_fetch(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.raises(UserError) as err:
        InceptionFeatures()
    message = str(err.value)
    assert INCEPTION_FILE in message and "--inception-weights" in message and "\n" not in message
    with pytest.raises(UserError, match="no such file"):
        InceptionFeatures(str(tmp_path / "nope.pth"))


def test_eval_samples_scores_a_checkpoint_and_the_same_images_read_back_as_pngs(tmp_path, capsys):
    from sdlab.cli import eval_samples, sample, train_classifier as train_classifier_cli, train_diffusion

    data = ["--dataset", "synthetic", "--synthetic-size", "100", "--imgsz", "16", "--device", "cpu"]
    train_classifier_cli.main([*data, "--batch", "20", "--epochs", "1", "--widths", "8,16",
                               "--save-dir", str(tmp_path / "clf")])
    train_diffusion.main([*data, "--batch", "20", "--epochs", "1", "--class-cond", "--hidden-dim", "8",
                          "--down-scale", "1,2", "--attention-resolutions", "8", "--noise-steps", "20",
                          "--num-samples", "4", "--sample-steps", "2", "--save-dir", str(tmp_path / "ddpm")])
    ckpt, clf = str(tmp_path / "ddpm" / "best.pt"), str(tmp_path / "clf" / "best.pt")
    common = ["--classifier", clf, "--steps", "2", "--guidance-scale", "2", "--seed", "3",
              "--kid-subset-size", "10", "--kid-subsets", "5"]
    eval_samples.main([ckpt, "--num-samples", "20", *common, "--out", str(tmp_path / "a.json")])
    first = json.loads((tmp_path / "a.json").read_text())
    assert first["metric"] == "FD-classifier" and first["fd"] > 0 and first["num_samples"] == 20
    assert first["num_reference"] == 100 and 0 <= first["accuracy"] <= 1
    assert set(first["accuracy_per_class"]) == {"disc", "square", "triangle", "diamond", "ring", "cross",
                                                "hbar", "vbar", "ellipse", "corner"}
    assert len(list((tmp_path).glob("features-*.pt"))) == 1          # the reference features, cached

    # the same 20 images through sdlab-sample's PNGs: identical scores (uint8 quantization applied)
    labels = [c for _ in range(2) for c in ("disc", "square", "triangle", "diamond", "ring", "cross",
                                              "hbar", "vbar", "ellipse", "corner")]
    sample.main([ckpt, "--num-samples", "20", "--steps", "2", "--guidance-scale", "2", "--seed", "3",
                 *[a for c in labels[:10] for a in ("--class", c)], "--per-image-dir", str(tmp_path / "pngs"),
                 "--out", str(tmp_path / "grid.png"), "--device", "cpu"])
    eval_samples.main(["--samples", str(tmp_path / "pngs"), "--dataset", "synthetic", "--image-size", "16",
                       "--synthetic-size", "100", "--classifier", clf, "--kid-subset-size", "10", "--kid-subsets", "5",
                       "--out", str(tmp_path / "b.json"), "--cache-dir", str(tmp_path)])
    second = json.loads((tmp_path / "b.json").read_text())
    assert second["fd"] == pytest.approx(first["fd"], rel=1e-6) and second["kid"] == pytest.approx(first["kid"])
    pipe = DiffusionPipeline.from_checkpoint(ckpt, torch.device("cpu"))
    drawn, _ = draw_samples(pipe, 20, balanced=True, guidance_scale=2, seed=3, sampler="ddim", sample_steps=2)
    assert torch.equal(read_samples(str(tmp_path / "pngs"), 16), to_uint8(drawn))   # what was scored


def test_eval_samples_without_inception_weights_is_one_line(tmp_path, capsys, monkeypatch):
    from sdlab.cli import eval_samples

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    (tmp_path / "s").mkdir()
    with pytest.raises(SystemExit) as exited:
        eval_samples.main(["--samples", str(tmp_path / "s"), "--dataset", "synthetic", "--features", "inception"])
    err = capsys.readouterr().err.strip()
    assert exited.value.code == 2 and len(err.splitlines()) == 1 and INCEPTION_FILE in err


def test_eval_every_logs_sample_metrics_and_can_pick_best(tmp_path, capsys):
    from conftest import scalar_tags

    from sdlab.cli import train_classifier as train_classifier_cli, train_diffusion

    data = ["--dataset", "synthetic", "--synthetic-size", "60", "--imgsz", "16", "--device", "cpu", "--batch", "20"]
    train_classifier_cli.main([*data, "--epochs", "1", "--widths", "8,16", "--save-dir", str(tmp_path / "clf")])
    ddpm = [*data, "--class-cond", "--hidden-dim", "8", "--down-scale", "1,2", "--attention-resolutions", "8",
            "--noise-steps", "20", "--num-samples", "4", "--sample-steps", "2", "--save-dir", str(tmp_path / "ddpm")]
    with pytest.raises(SystemExit) as exited:
        train_diffusion.main([*ddpm, "--epochs", "1", "--select-by", "eval/fd_classifier"])
    assert exited.value.code == 2 and "--eval-every" in capsys.readouterr().err
    train_diffusion.main([*ddpm, "--epochs", "3", "--eval-every", "2", "--eval-samples", "10", "--overwrite",
                          "--classifier", str(tmp_path / "clf" / "best.pt"), "--select-by", "eval/fd_classifier"])
    history = json.loads((tmp_path / "ddpm" / "history.json").read_text())
    assert "eval/fd_classifier" not in history[0] and "eval/fd_classifier" not in history[2]
    assert {"eval/fd_classifier", "eval/kid", "eval/accuracy"} <= set(history[1])
    assert {"eval/fd_classifier", "eval/kid", "eval/accuracy"} <= scalar_tags(tmp_path / "ddpm" / "logs")
    assert load_checkpoint(tmp_path / "ddpm" / "best.pt")["best"] == {"value": history[1]["eval/fd_classifier"],
                                                                      "epoch": 2}
