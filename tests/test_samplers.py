"""Samplers against closed forms.

With data x_0 ~ N(mu, s^2) (each dimension) the optimal denoiser is known exactly,

    E[x_0 | x_t] = mu + sqrt(ᾱ) s^2 / (ᾱ s^2 + 1 - ᾱ) (x_t - sqrt(ᾱ) mu),

and so is the probability-flow ODE's solution in x̃ = x_t / sqrt(ᾱ) = x_0 + σ eps:

    x̃(σ) - mu = sqrt(s^2 + σ^2) / sqrt(s^2 + σ_start^2) (x̃_start - mu).

So every deterministic sampler's output can be compared with the exact end point of the same
start, and its error must fall at the solver's order as the steps double.
"""

import pytest
import torch

from sdlab.config import ConfigError
from sdlab.diffusion import SAMPLERS, NoiseSchedule, SamplerConfig, sample, sampling_timesteps
from sdlab.diffusion.sampling import karras_sigmas
from sdlab.diffusion.solvers import DDIM, DPMSolverPP2M, ScheduleDenoiser
from sdlab.figures import sampler_paths_2d
from sdlab.toy import GaussianMixture

MU, S = 0.3, 0.5
SCHEDULE = NoiseSchedule.create("linear", 1000)
GAUSSIAN = GaussianMixture(torch.full((1, 4), MU, dtype=torch.float64), torch.tensor([S], dtype=torch.float64),
                           torch.ones(1, dtype=torch.float64))        # one component: N(MU, S^2 I) in 4-D


def gaussian_denoiser(schedule, prediction="eps"):
    """The optimal network output for data N(MU, S^2 I), as eps, x0 or v."""
    return GAUSSIAN.denoiser(schedule, prediction)


def exact_end(schedule, x_T):
    """The ODE solved exactly from t = T-1 to t = 0, then the last step every sampler takes
    (x_0 = D(x̃, σ_0)), so the comparison isolates the solver's error."""
    ab = schedule.alpha_bar.double()
    sigma = ((1 - ab) / ab).sqrt()
    x_tilde = x_T / ab[-1].sqrt()
    at_0 = MU + (S**2 + sigma[0] ** 2).sqrt() / (S**2 + sigma[-1] ** 2).sqrt() * (x_tilde - MU)
    return MU + S**2 / (S**2 + sigma[0] ** 2) * (at_0 - MU)


def start(n=256, seed=0):
    return torch.randn(n, 4, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def ode_error(name, steps, spacing="karras"):
    x_T = start()
    out = sample(gaussian_denoiser(SCHEDULE), SCHEDULE, x_T.shape, name, sample_steps=steps, spacing=spacing,
                 x_T=x_T.clone(), clip=False)
    return (out - exact_end(SCHEDULE, x_T)).abs().max().item()


@pytest.mark.parametrize("name", ["euler", "ddim", "heun", "dpmpp_2m"])
def test_deterministic_samplers_converge_at_their_order(name):
    order = SAMPLERS[name].order
    errors = [ode_error(name, n) for n in (20, 40, 80)]
    assert errors[0] > errors[1] > errors[2]
    ratio = errors[1] / errors[2]                   # halving the step size divides the error by 2^order
    assert 2**order * 0.85 < ratio < 2**order * 1.2, (errors, ratio)
    assert errors[2] < (0.08 if order == 1 else 0.006)


def test_solver_order_is_a_property_of_the_method_not_the_grid():
    for spacing in ("uniform", "quadratic"):
        first = [ode_error("euler", n, spacing) for n in (40, 80)]
        second = [ode_error("heun", n, spacing) for n in (40, 80)]
        assert 1.7 < first[0] / first[1] < 2.3 and 3.4 < second[0] / second[1] < 4.8, spacing


@pytest.mark.parametrize("name, steps", [("euler", (15, 240)), ("heun", (8, 60)), ("dpmpp_2m", (8, 60))])
def test_deterministic_samples_approach_the_data_mean_and_variance_as_steps_grow(name, steps):
    x_T = start(5_000, seed=1)
    gaps = []
    for n in steps:
        out = sample(gaussian_denoiser(SCHEDULE), SCHEDULE, x_T.shape, name, sample_steps=n, x_T=x_T.clone(),
                     clip=False)
        assert out.mean().item() == pytest.approx(MU, abs=0.01)
        gaps.append(abs(out.std().item() - S))
    assert gaps[-1] < min(gaps[:-1]) and gaps[-1] < 0.02 * S, gaps


@pytest.mark.parametrize("config", [dict(sampler="ddpm"), dict(sampler="ddpm", variance="beta_tilde")])
def test_ddpm_ancestral_samples_have_the_data_mean_and_variance(config):
    g = torch.Generator().manual_seed(2)
    out = sample(gaussian_denoiser(SCHEDULE), SCHEDULE, (5_000, 4), generator=g, clip=False, **config)
    assert out.mean().item() == pytest.approx(MU, abs=4 * S / 20_000**0.5)
    assert out.std().item() == pytest.approx(S, rel=0.02)


@pytest.mark.parametrize("config", [dict(sampler="euler_a"), dict(sampler="ddim", eta=1.0)])
def test_few_step_ancestral_samplers_approach_the_data_variance_as_steps_grow(config):
    stds = []
    for steps in (25, 100, 400):
        g = torch.Generator().manual_seed(3)
        out = sample(gaussian_denoiser(SCHEDULE), SCHEDULE, (5_000, 4), generator=g, clip=False,
                     sample_steps=steps, **config)
        assert out.mean().item() == pytest.approx(MU, abs=4 * S / 20_000**0.5)
        stds.append(out.std().item())
    gaps = [abs(std - S) for std in stds]
    assert gaps[0] > gaps[1] > gaps[2] and gaps[2] < 0.02, stds


@pytest.mark.parametrize("spacing", ["uniform", "karras"])
def test_euler_is_ddim_with_eta_zero_and_euler_ancestral_is_ddim_with_eta_one(spacing):
    x_T, net = start(), gaussian_denoiser(SCHEDULE)

    def run(name, **options):
        return sample(net, SCHEDULE, x_T.shape, name, sample_steps=12, spacing=spacing, x_T=x_T.clone(),
                      generator=torch.Generator().manual_seed(5), clip=False, **options)

    # equal up to the float32 rounding of the network-output conversions (`model_outputs`)
    assert torch.allclose(run("euler"), run("ddim"), rtol=0, atol=1e-5)
    assert torch.allclose(run("euler_a"), run("ddim", eta=1.0), rtol=0, atol=1e-5)


def test_ddpm_is_ddim_with_eta_one_on_every_timestep():
    s = NoiseSchedule.create("linear", 100)
    net, x_T = gaussian_denoiser(s), start()
    ddpm = sample(net, s, x_T.shape, "ddpm", variance="beta_tilde", x_T=x_T.clone(),
                  generator=torch.Generator().manual_seed(6), clip=False)
    ddim = sample(net, s, x_T.shape, "ddim", eta=1.0, sample_steps=100, x_T=x_T.clone(),
                  generator=torch.Generator().manual_seed(6), clip=False)
    assert torch.allclose(ddpm, ddim, rtol=0, atol=1e-5)


def test_the_first_dpm_solver_step_is_a_ddim_step_and_the_second_uses_the_history():
    net = ScheduleDenoiser(gaussian_denoiser(SCHEDULE), SCHEDULE, "eps", clip=False)
    x = start() / SCHEDULE.alpha_bar[-1].double().sqrt() * SCHEDULE.alpha_bar[999].double().sqrt()
    solver = DPMSolverPP2M()
    first, _ = solver.step(net, x, 999, 600, None)
    assert torch.allclose(first, DDIM().step(net, x, 999, 600, None)[0], rtol=0, atol=1e-6)
    second, _ = solver.step(net, first, 600, 300, None)
    assert not torch.allclose(second, DDIM().step(net, first, 600, 300, None)[0], atol=1e-6)


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_every_prediction_type_gives_the_same_samples(name):
    x_T = start(16)
    outs = [sample(gaussian_denoiser(SCHEDULE, p), SCHEDULE, x_T.shape, name, sample_steps=8, prediction=p,
                   x_T=x_T.clone(), generator=torch.Generator().manual_seed(7), clip=False)
            for p in ("eps", "x0", "v")]
    assert torch.allclose(outs[0], outs[1], atol=1e-8) and torch.allclose(outs[0], outs[2], atol=1e-8)


def test_karras_grid_follows_eq5_on_the_trained_timesteps():
    steps = sampling_timesteps(SCHEDULE, 10, "karras")
    assert steps[0] == 999 and steps[-1] == 0 and steps == sorted(set(steps), reverse=True)
    ab = SCHEDULE.alpha_bar.double()
    log_sigma = 0.5 * torch.log((1 - ab) / ab)
    wanted = karras_sigmas(log_sigma[0].exp().item(), log_sigma[-1].exp().item(), 10).log()
    got = log_sigma[steps]
    spacing = (log_sigma[1:] - log_sigma[:-1])                  # log σ between neighbouring timesteps
    for g, w, t in zip(got, wanted, steps):
        assert abs(g - w) <= spacing[max(t - 1, 0):t + 1].max()   # the nearest trained timestep
    # on this schedule ρ = 7 crowds both ends: two of ten steps at t <= 20 and two above 900,
    # where the uniform grid has one of each
    uniform = sampling_timesteps(SCHEDULE, 10, "uniform")
    assert sum(t <= 20 for t in steps) == 2 and sum(t <= 20 for t in uniform) == 1
    assert sum(t > 900 for t in steps) == 2 and sum(t > 900 for t in uniform) == 1


@pytest.mark.parametrize("name, steps, expected", [("euler", 10, 10), ("heun", 10, 19), ("dpmpp_2m", 10, 10),
                                                    ("ddim", 10, 10), ("ddpm", 10, 1000)])
def test_network_evaluations_match_the_config(name, steps, expected):
    calls = []
    net = gaussian_denoiser(SCHEDULE)
    counted = lambda xt, t, labels: calls.append(1) or net(xt, t, labels)
    cfg = SamplerConfig(sampler=name, sample_steps=steps, clip=False)
    sample(counted, SCHEDULE, (2, 4), cfg, generator=torch.Generator().manual_seed(0))
    assert len(calls) == cfg.evaluations(SCHEDULE) == expected
    assert f"({expected} NFE)" in cfg.describe(SCHEDULE)


def test_eta_outside_ddim_is_an_error_naming_the_field():
    with pytest.raises(ConfigError, match="eta.*ddim"):
        SamplerConfig(sampler="euler", eta=0.5)
    with pytest.raises(ConfigError, match="sampler.*dpmpp_2m"):
        SamplerConfig(sampler="dpm")


def test_the_mixture_posterior_mean_is_orthogonal_to_every_function_of_the_noisy_point():
    # E[x_0 | x̃] is the projection of x_0 onto functions of x̃: the residual x_0 - D(x̃) has mean
    # zero and is uncorrelated with x̃ itself (checked by Monte Carlo, no formula shared).
    ring = GaussianMixture.ring()
    g = torch.Generator().manual_seed(8)
    x0 = ring.sample(200_000, g)
    for sigma in (0.3, 1.0, 3.0):
        x_tilde = x0 + sigma * torch.randn(x0.shape, generator=g, dtype=torch.float64)
        residual = x0 - ring.posterior_mean(x_tilde, torch.full((len(x0),), sigma, dtype=torch.float64))
        assert residual.mean(0).abs().max() < 0.01, sigma
        assert (residual[:, :, None] * x_tilde[:, None]).mean(0).abs().max() < 0.02, sigma
        # and it removes noise: closer to x_0 than x̃ is
        assert residual.pow(2).mean() < (x0 - x_tilde).pow(2).mean()


@pytest.mark.parametrize("name", ["ddpm", "euler_a", "heun", "dpmpp_2m"])
def test_samplers_with_the_exact_denoiser_cover_every_mode_of_a_ring(name):
    ring = GaussianMixture.ring()
    cfg = SamplerConfig(sampler=name, sample_steps=SAMPLERS[name].steps_for(30), clip=False)
    out = sample(ring.denoiser(SCHEDULE), SCHEDULE, (4000, 2), cfg, generator=torch.Generator().manual_seed(9))
    assert ring.near_modes(out, within=4) > 0.95
    mode = torch.cdist(out.double(), ring.means).argmin(1)
    share = torch.bincount(mode, minlength=8).double() / len(out)
    assert (share - 1 / 8).abs().max() < 0.03, share


def test_the_2d_sampler_figure_is_drawn(tmp_path):
    configs = {name: SamplerConfig(sampler=name, sample_steps=4, clip=False) for name in ("ddim", "dpmpp_2m")}
    ring, schedule = GaussianMixture.ring(), NoiseSchedule.create("linear", 50)
    path = tmp_path / "paths.png"
    samples = sampler_paths_2d(ring.denoiser(schedule), schedule, ring.sample(50), configs, path,
                               num_points=50, num_paths=3)
    assert path.stat().st_size > 0
    assert set(samples) == set(configs) and samples["ddim"].shape == (50, 2)
