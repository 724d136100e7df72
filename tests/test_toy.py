"""The 2-D lab: toy data, the MLP denoiser held against the exact score of a mixture, the command."""

import subprocess
import sys

import pytest
import torch

from sdlab.config import ConfigError
from sdlab.diffusion import NoiseSchedule, sample
from sdlab.diffusion.guidance import guided
from sdlab.toy import TOY_DATA, GaussianMixture, ToyConfig, draw_toy, eps_error, train_toy


@pytest.mark.parametrize("name", TOY_DATA)
def test_toy_data_is_seeded_and_fits_the_plots(name):
    a, b = draw_toy(name, 500, torch.Generator().manual_seed(0)), draw_toy(name, 500, torch.Generator().manual_seed(0))
    assert a.shape == (500, 2) and torch.equal(a, b)
    assert a.abs().max() < 3.2 and a.std(0).min() > 0.3


def test_the_trained_mlp_learns_the_exact_score_of_a_mixture():
    trained = train_toy(ToyConfig(data="ring"))                       # the command's defaults
    ring = GaussianMixture.ring()
    untrained = train_toy(ToyConfig(data="ring", steps=1, batch_size=8))
    for t, bound in ((50, 0.2), (200, 0.05), (500, 0.01)):          # error grows as the noise shrinks
        learned, baseline = eps_error(trained.model, ring, trained.schedule, t), eps_error(untrained.model, ring,
                                                                                          trained.schedule, t)
        assert learned < bound and learned < baseline / 5, (t, learned, baseline)


def test_guidance_on_the_exact_conditional_denoiser_keeps_to_the_class_and_sharpens_with_w():
    ring, schedule = GaussianMixture.ring(), NoiseSchedule.create("linear", 1000)
    network, classes = ring.denoiser(schedule, classes=ring.halves), ring.halves
    labels = torch.zeros(4000, dtype=torch.long)
    upper = {}
    for w in (0.0, 1.0, 4.0):
        out = sample(guided(network, labels, w, 2), schedule, (4000, 2), "ddpm",
                     generator=torch.Generator().manual_seed(1), clip=False)
        mode = torch.cdist(out.double(), ring.means).argmin(1)
        upper[w] = (classes[mode] == 0).float().mean().item()
        share = torch.bincount(mode, minlength=8)[:4].double() / len(out)
        if w == 1.0:      # plain conditional sampling: the class's four modes, equally often
            assert (share - 0.25).abs().max() < 0.03, share
        if w == 4.0:      # w > 1 drives samples away from class 1: the modes next to it thin out
            assert share[1] + share[2] > share[0] + share[3] + 0.1, share
    assert abs(upper[0.0] - 0.5) < 0.03 and upper[1.0] > 0.99 and upper[4.0] > 0.99


def test_toy_config_errors_name_the_field():
    with pytest.raises(ConfigError, match="data.*ring"):
        ToyConfig(data="square")


def test_toy_command_writes_its_figures(tmp_path):
    out = tmp_path / "toy"
    done = subprocess.run([sys.executable, "-m", "sdlab.cli.toy", "--data", "ring", "--steps", "50", "--nfe", "4",
                           "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    for name in ("forward_process.png", "sampler_paths.png", "score_fields.png", "sampler_paths_exact.png",
                 "guidance.png"):
        assert (out / name).stat().st_size > 0, name
    assert "relative error of the trained eps" in done.stdout
    bad = subprocess.run([sys.executable, "-m", "sdlab.cli.toy", "--data", "square"], capture_output=True, text=True)
    assert bad.returncode == 2 and "invalid choice" in bad.stderr and "Traceback" not in bad.stderr
